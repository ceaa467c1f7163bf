package snp.it;

import com.alibaba.nacos.api.PropertyKeyConst;
import com.alibaba.nacos.api.config.ConfigService;
import com.alibaba.nacos.api.config.listener.AbstractListener;
import com.alibaba.nacos.api.exception.NacosException;
import com.alibaba.nacos.api.grpc.auto.Metadata;
import com.alibaba.nacos.api.grpc.auto.Payload;
import com.alibaba.nacos.api.grpc.auto.RequestGrpc;
import com.alibaba.nacos.api.remote.response.Response;
import com.alibaba.nacos.common.remote.client.grpc.GrpcUtils;
import com.alibaba.nacos.shaded.com.google.protobuf.Any;
import com.alibaba.nacos.shaded.com.google.protobuf.ByteString;
import com.alibaba.nacos.shaded.io.grpc.ManagedChannel;
import com.alibaba.nacos.shaded.io.grpc.ManagedChannelBuilder;
import java.util.Properties;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * Drives the shim's Nacos endpoint with the real nacos-client 2.5.1 the way Dubbo does, and
 * prints one "name value" line per check for the Rust test to assert. Arg: host:port (the
 * configured port; the client dials +1000).
 */
public final class Probe {
    private Probe() {}

    static ConfigService client(String addr, String tenant) throws NacosException {
        Properties p = new Properties();
        p.put(PropertyKeyConst.SERVER_ADDR, addr);
        if (tenant != null) {
            p.put(PropertyKeyConst.NAMESPACE, tenant);
        }
        return com.alibaba.nacos.api.NacosFactory.createConfigService(p);
    }

    static void out(String name, Object value) {
        System.out.println(name + " " + value);
        System.out.flush();
    }

    interface Call {
        Object run() throws Exception;
    }

    /** The call's result, or "error <code>" for a NacosException. */
    static Object attempt(Call call) {
        try {
            return call.run();
        } catch (NacosException e) {
            return "error " + e.getErrCode();
        } catch (Exception e) {
            return "exception " + e;
        }
    }

    public static void main(String[] args) throws Exception {
        String addr = args[0];
        ConfigService a = client(addr, null);
        out("status", a.getServerStatus());
        // Dubbo's startup probe (nacos.check=true): must read as "not found", not fail.
        out("probe", attempt(() -> a.getConfig("Dubbo-Nacos-Test", "dubbo", 3000)));
        // Service definitions: accepted and discarded.
        out("dubbo-publish", attempt(() -> a.publishConfig("snp.it.Greeting:::provider:app", "dubbo", "{}")));
        out("dubbo-read", attempt(() -> a.getConfig("snp.it.Greeting:::provider:app", "dubbo", 3000)));
        out("other-publish", attempt(() -> a.publishConfig("x", "DEFAULT_GROUP", "y")));
        out("mapping-remove", attempt(() -> a.removeConfig("snp.it.Probe", "mapping")));
        out("other-remove", attempt(() -> a.removeConfig("x", "DEFAULT_GROUP")));

        // A request type the endpoint does not know, through the client's own gRPC stub.
        String host = addr.substring(0, addr.lastIndexOf(':'));
        int port = Integer.parseInt(addr.substring(addr.lastIndexOf(':') + 1)) + 1000;
        ManagedChannel channel = ManagedChannelBuilder.forAddress(host, port).usePlaintext().build();
        Payload unknown = Payload.newBuilder()
                .setMetadata(Metadata.newBuilder().setType("SnpUnknownRequest").setClientIp("203.0.113.9"))
                .setBody(Any.newBuilder().setValue(ByteString.copyFromUtf8("{\"requestId\":\"42\"}")))
                .build();
        Payload answer = RequestGrpc.newBlockingStub(channel).request(unknown);
        Object parsed = GrpcUtils.parse(answer);
        out("unknown", parsed.getClass().getSimpleName() + " " + ((Response) parsed).getResultCode()
                + " " + ((Response) parsed).getErrorCode());
        channel.shutdownNow();

        // Mappings: query, CAS publish (with a stale MD5), read-your-writes, push.
        out("mapping-missing", attempt(() -> a.getConfig("snp.it.Probe", "mapping", 3000)));
        out("mapping-publish", attempt(() -> a.publishConfigCas("snp.it.Probe", "mapping", "app-x", "")));
        out("mapping-read", attempt(() -> a.getConfig("snp.it.Probe", "mapping", 3000)));
        LinkedBlockingQueue<String> pushed = new LinkedBlockingQueue<>();
        a.addListener("snp.it.Probe", "mapping", new AbstractListener() {
            @Override
            public void receiveConfigInfo(String content) {
                pushed.add(content);
            }
        });
        ConfigService b = client(addr, "public");
        out("mapping-publish-stale", attempt(() -> b.publishConfigCas(
                "snp.it.Probe", "mapping", "app-x,app-y", "00000000000000000000000000000000")));
        String got = pushed.poll(20, TimeUnit.SECONDS);
        out("push", got);
        // Inner interfaces: Dubbo's encoding of '$'.
        out("inner-publish", attempt(() -> b.publishConfigCas("snp.it.Outer___Inner", "mapping", "app-x", "")));
        // Another namespace, by tenant (trust policy).
        ConfigService shop = client(addr, "shop");
        out("shop-publish", attempt(() -> shop.publishConfigCas("snp.it.Probe", "mapping", "shop-app", "")));
        out("shop-read", attempt(() -> shop.getConfig("snp.it.Probe", "mapping", 3000)));
        out("default-read", attempt(() -> b.getConfig("snp.it.Probe", "mapping", 3000)));
        // Still connected after all that (health checks pass).
        Thread.sleep(6000);
        out("status-after", a.getServerStatus());
        a.shutDown();
        b.shutDown();
        shop.shutDown();
        out("done", "true");
        System.exit(0);
    }
}
