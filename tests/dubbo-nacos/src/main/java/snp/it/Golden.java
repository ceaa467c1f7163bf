package snp.it;

import com.alibaba.nacos.api.config.remote.request.ConfigBatchListenRequest;
import com.alibaba.nacos.api.config.remote.request.ConfigChangeNotifyRequest;
import com.alibaba.nacos.api.config.remote.request.ConfigPublishRequest;
import com.alibaba.nacos.api.config.remote.request.ConfigQueryRequest;
import com.alibaba.nacos.api.config.remote.request.ConfigRemoveRequest;
import com.alibaba.nacos.api.config.remote.response.ConfigChangeBatchListenResponse;
import com.alibaba.nacos.api.config.remote.response.ConfigChangeNotifyResponse;
import com.alibaba.nacos.api.config.remote.response.ConfigPublishResponse;
import com.alibaba.nacos.api.config.remote.response.ConfigQueryResponse;
import com.alibaba.nacos.api.config.remote.response.ConfigRemoveResponse;
import com.alibaba.nacos.api.grpc.auto.Payload;
import com.alibaba.nacos.api.remote.request.ConnectionSetupRequest;
import com.alibaba.nacos.api.remote.request.HealthCheckRequest;
import com.alibaba.nacos.api.remote.request.Request;
import com.alibaba.nacos.api.remote.request.ServerCheckRequest;
import com.alibaba.nacos.api.remote.response.ErrorResponse;
import com.alibaba.nacos.api.remote.response.HealthCheckResponse;
import com.alibaba.nacos.api.remote.response.Response;
import com.alibaba.nacos.api.remote.response.ServerCheckResponse;
import com.alibaba.nacos.common.remote.client.grpc.GrpcUtils;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.File;
import java.util.HashMap;
import java.util.Map;

/**
 * Writes the golden wire form of every Nacos message the shim handles, produced by the
 * real nacos-client 2.5.1 classes through GrpcUtils.convert (the client's own encoder):
 * {"requests": {Type: {"type", "headers", "body"}}, "responses": {...}}. Responses are the
 * ones a Nacos server builds with the same classes. Arg: output file.
 * Regenerate with tests/dubbo-nacos/build.sh golden.
 */
public final class Golden {
    private Golden() {}

    private static final ObjectMapper MAPPER =
            new ObjectMapper().enable(SerializationFeature.ORDER_MAP_ENTRIES_BY_KEYS);

    private static ObjectNode entry(Payload p) throws Exception {
        ObjectNode n = MAPPER.createObjectNode();
        n.put("type", p.getMetadata().getType());
        ObjectNode headers = n.putObject("headers");
        new java.util.TreeMap<>(p.getMetadata().getHeadersMap()).forEach(headers::put);
        n.put("body", p.getBody().getValue().toStringUtf8());
        return n;
    }

    private static <T extends Request> T withId(T r, String id) {
        r.setRequestId(id);
        return r;
    }

    public static void main(String[] args) throws Exception {
        ObjectNode root = MAPPER.createObjectNode();
        ObjectNode requests = root.putObject("requests");
        ObjectNode responses = root.putObject("responses");

        requests.set("ServerCheckRequest", entry(GrpcUtils.convert(withId(new ServerCheckRequest(), "1"))));
        ConnectionSetupRequest setup = new ConnectionSetupRequest();
        setup.setClientVersion("Nacos-Java-Client:v2.5.1");
        setup.setTenant("");
        Map<String, String> labels = new HashMap<>();
        labels.put("source", "sdk");
        labels.put("module", "config");
        setup.setLabels(labels);
        requests.set("ConnectionSetupRequest", entry(GrpcUtils.convert(setup)));
        requests.set("HealthCheckRequest", entry(GrpcUtils.convert(withId(new HealthCheckRequest(), "2"))));

        ConfigQueryRequest query = ConfigQueryRequest.build("snp.it.Outer___Inner", "mapping", "");
        query.putHeader("notify", "false");
        requests.set("ConfigQueryRequest", entry(GrpcUtils.convert(withId(query, "3"))));

        ConfigPublishRequest publish = new ConfigPublishRequest("snp.it.Greeting", "mapping", "public", "app-a,app-b");
        publish.setCasMd5("0123456789abcdef0123456789abcdef");
        publish.putAdditionalParam("betaIps", null);
        requests.set("ConfigPublishRequest", entry(GrpcUtils.convert(withId(publish, "4"))));

        ConfigRemoveRequest remove = new ConfigRemoveRequest("snp.it.Greeting", "mapping", "", null);
        requests.set("ConfigRemoveRequest", entry(GrpcUtils.convert(withId(remove, "5"))));

        ConfigBatchListenRequest listen = new ConfigBatchListenRequest();
        listen.setListen(true);
        listen.addConfigListenContext("mapping", "snp.it.Greeting", "", "");
        listen.addConfigListenContext("mapping", "snp.it.Outer___Inner", "public", "5d41402abc4b2a76b9719d911017c592");
        requests.set("ConfigBatchListenRequest", entry(GrpcUtils.convert(withId(listen, "6"))));

        // Server to client, and the client's ack.
        requests.set("ConfigChangeNotifyRequest", entry(GrpcUtils.convert(
                withId(ConfigChangeNotifyRequest.build("snp.it.Greeting", "mapping", "public"), "7"))));
        ConfigChangeNotifyResponse ack = new ConfigChangeNotifyResponse();
        ack.setRequestId("7");
        responses.set("ConfigChangeNotifyResponse", entry(GrpcUtils.convert(ack)));

        responses.set("ServerCheckResponse", entry(GrpcUtils.convert(new ServerCheckResponse("conn-1", false))));
        responses.set("HealthCheckResponse", entry(GrpcUtils.convert(new HealthCheckResponse())));
        ConfigQueryResponse found = ConfigQueryResponse.buildSuccessResponse("app-a,app-b");
        found.setMd5("c3b8e8b1b1d2b8a0c2b1e5f7b9b0a3c1");
        found.setLastModified(1700000000000L);
        responses.set("ConfigQueryResponse", entry(GrpcUtils.convert(found)));
        responses.set("ConfigQueryResponse.notFound", entry(GrpcUtils.convert(
                ConfigQueryResponse.buildFailResponse(ConfigQueryResponse.CONFIG_NOT_FOUND, "config data not exist"))));
        responses.set("ConfigPublishResponse", entry(GrpcUtils.convert(ConfigPublishResponse.buildSuccessResponse())));
        responses.set("ConfigPublishResponse.fail", entry(GrpcUtils.convert(
                ConfigPublishResponse.buildFailResponse(400, "refused"))));
        responses.set("ConfigRemoveResponse.fail", entry(GrpcUtils.convert(
                ConfigRemoveResponse.buildFailResponse("refused"))));
        ConfigChangeBatchListenResponse changed = new ConfigChangeBatchListenResponse();
        changed.addChangeConfig("snp.it.Greeting", "mapping", "");
        responses.set("ConfigChangeBatchListenResponse", entry(GrpcUtils.convert(changed)));
        Response error = ErrorResponse.build(302, "unknown request type");
        responses.set("ErrorResponse", entry(GrpcUtils.convert(error)));

        MAPPER.writerWithDefaultPrettyPrinter().writeValue(new File(args[0]), root);
    }
}
