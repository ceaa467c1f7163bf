package dev.snp.grpcjava;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.ForwardingClientCall;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

/**
 * The end-to-end tests' grpc-java client: what a Dubbo application does at startup, one unary
 * call per registration with a generated blocking stub, for either flavour of the API.
 *
 * <pre>
 *   java -jar snp-grpc-java.jar storm --target HOST:PORT --flavour a|b --calls N --concurrency C ...
 *   java -jar snp-grpc-java.jar cases --target HOST:PORT [--file CASES.json]   (else stdin)
 * </pre>
 *
 * Both print one JSON document on stdout. A call counts as OK only when grpc-java itself
 * accepted the answer: a status OK without a response message is a failure in grpc-java
 * (INTERNAL, "No value received for unary call"), and it is reported as such. For flavour B an
 * OK must also carry success=true and message "success", or it is counted as a bad response.
 */
public final class Main {
  private static final Gson GSON = new GsonBuilder().disableHtmlEscaping().create();

  private Main() {}

  public static void main(String[] argv) throws Exception {
    if (argv.length == 0) {
      usage("no command");
    }
    Map<String, String> opts = parse(argv);
    JsonElement out;
    switch (argv[0]) {
      case "storm":
        out = storm(opts);
        break;
      case "cases":
        out = cases(opts);
        break;
      default:
        usage("unknown command " + argv[0]);
        return;
    }
    System.out.println(GSON.toJson(out));
    System.out.flush();
    // grpc-java's netty threads are daemons, but do not wait for them either way.
    System.exit(0);
  }

  private static void usage(String why) {
    System.err.println("snp-grpc-java: " + why);
    System.err.println("usage: storm --target H:P --flavour a|b --calls N --concurrency C"
        + " [--channels M] [--namespace NS] [--apps A] [--app-prefix P] [--interfaces K]"
        + " [--per-call I] [--interface-prefix P] [--deadline-ms MS] [TLS]\n"
        + "       cases --target H:P [--file F] [TLS]    (F or stdin: [{flavour, namespace, app,"
        + " interfaces}])\n"
        + "TLS:   [--tls-ca F [--tls-cert F --tls-key F]] [--authority NAME] [--token-file F]");
    System.exit(2);
  }

  /** `--key value` pairs after the command. */
  private static Map<String, String> parse(String[] argv) {
    Map<String, String> opts = new HashMap<>();
    for (int i = 1; i < argv.length; i += 2) {
      if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
        usage("expected --option value at " + argv[i]);
      }
      opts.put(argv[i].substring(2), argv[i + 1]);
    }
    return opts;
  }

  private static String req(Map<String, String> opts, String key) {
    String v = opts.get(key);
    if (v == null) {
      usage("--" + key + " is required");
    }
    return v;
  }

  private static int intOpt(Map<String, String> opts, String key, int dflt) {
    String v = opts.get(key);
    return v == null ? dflt : Integer.parseInt(v);
  }

  // --- channels ------------------------------------------------------------------------------

  /** A channel as an application would open it: plaintext, TLS, or mutual TLS. */
  static ManagedChannel channel(Map<String, String> opts) throws IOException {
    String target = req(opts, "target");
    ChannelCredentials creds;
    if (opts.containsKey("tls-ca")) {
      TlsChannelCredentials.Builder tls =
          TlsChannelCredentials.newBuilder().trustManager(new File(opts.get("tls-ca")));
      if (opts.containsKey("tls-cert")) {
        tls.keyManager(new File(req(opts, "tls-cert")), new File(req(opts, "tls-key")));
      }
      creds = tls.build();
    } else {
      creds = InsecureChannelCredentials.create();
    }
    ManagedChannelBuilder<?> b = Grpc.newChannelBuilder(target, creds);
    if (opts.containsKey("authority")) {
      b.overrideAuthority(opts.get("authority"));
    }
    return b.build();
  }

  /** Adds `authorization: Bearer <token>` when --token-file is given. */
  static Channel withToken(Channel ch, Map<String, String> opts) throws IOException {
    String file = opts.get("token-file");
    if (file == null) {
      return ch;
    }
    String token = Files.readString(Path.of(file), StandardCharsets.UTF_8).trim();
    Metadata.Key<String> auth = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    ClientInterceptor bearer =
        new ClientInterceptor() {
          @Override
          public <Q, R> ClientCall<Q, R> interceptCall(
              MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
            return new ForwardingClientCall.SimpleForwardingClientCall<Q, R>(
                next.newCall(method, options)) {
              @Override
              public void start(Listener<R> listener, Metadata headers) {
                headers.put(auth, "Bearer " + token);
                super.start(listener, headers);
              }
            };
          }
        };
    return ClientInterceptors.intercept(ch, bearer);
  }

  // --- one registration ----------------------------------------------------------------------

  /** The outcome of one call, as grpc-java reports it. */
  static final class Outcome {
    String code;
    String description;
    /** Flavour B only: the response fields, when the call was OK. */
    Boolean success;
    String message;

    /** OK, and for flavour B the answer the API promises. */
    boolean good(String flavour) {
      if (!"OK".equals(code)) {
        return false;
      }
      return !"b".equals(flavour) || (Boolean.TRUE.equals(success) && "success".equals(message));
    }

    JsonObject json() {
      JsonObject o = new JsonObject();
      o.addProperty("code", code);
      if (description != null) {
        o.addProperty("description", description);
      }
      if (success != null) {
        o.addProperty("success", success);
        o.addProperty("message", message);
      }
      return o;
    }
  }

  /** One blocking unary call, exactly as generated code makes it. */
  static Outcome register(
      Channel ch, String flavour, String ns, String app, List<String> ifaces, long deadlineMs) {
    Outcome r = new Outcome();
    try {
      if ("a".equals(flavour)) {
        dubbo.networking.v1alpha1.ServiceNameMappingServiceGrpc.ServiceNameMappingServiceBlockingStub
            stub =
                dubbo.networking.v1alpha1.ServiceNameMappingServiceGrpc.newBlockingStub(ch)
                    .withDeadlineAfter(deadlineMs, TimeUnit.MILLISECONDS);
        // The response is the empty ServiceMappingResponse: grpc-java has decoded one
        // message, or it would have thrown.
        stub.registerServiceAppMapping(
            dubbo.networking.v1alpha1.Snp.ServiceMappingRequest.newBuilder()
                .setNamespace(ns)
                .setApplicationName(app)
                .addAllInterfaceNames(ifaces)
                .build());
      } else if ("b".equals(flavour)) {
        v1alpha1.ServiceNameMappingServiceGrpc.ServiceNameMappingServiceBlockingStub stub =
            v1alpha1.ServiceNameMappingServiceGrpc.newBlockingStub(ch)
                .withDeadlineAfter(deadlineMs, TimeUnit.MILLISECONDS);
        v1alpha1.Snp.ServiceMappingResponse resp =
            stub.registerServiceAppMapping(
                v1alpha1.Snp.ServiceMappingRequest.newBuilder()
                    .setNamespace(ns)
                    .setApplicationName(app)
                    .addAllInterfaceNames(ifaces)
                    .build());
        r.success = resp.getSuccess();
        r.message = resp.getMessage();
      } else {
        usage("--flavour must be a or b, not " + flavour);
      }
      r.code = "OK";
    } catch (StatusRuntimeException e) {
      r.code = e.getStatus().getCode().name();
      r.description = e.getStatus().getDescription();
    }
    return r;
  }

  // --- storm ---------------------------------------------------------------------------------

  /**
   * N calls from C threads over M channels (M applications' connections). Call i registers
   * application {app-prefix}-{i % A} for --per-call interfaces {interface-prefix}{(i*I + j) % K}.
   */
  static JsonObject storm(Map<String, String> opts) throws Exception {
    String flavour = req(opts, "flavour");
    int calls = intOpt(opts, "calls", 100);
    int concurrency = intOpt(opts, "concurrency", 8);
    int nChannels = intOpt(opts, "channels", Math.min(concurrency, 8));
    String ns = opts.getOrDefault("namespace", "default");
    int apps = intOpt(opts, "apps", 10);
    String appPrefix = opts.getOrDefault("app-prefix", "java-app");
    int ifaces = intOpt(opts, "interfaces", 50);
    int perCall = intOpt(opts, "per-call", 1);
    String ifacePrefix = opts.getOrDefault("interface-prefix", "org.apache.dubbo.storm.Service");
    long deadlineMs = intOpt(opts, "deadline-ms", 10_000);

    List<ManagedChannel> managed = new ArrayList<>();
    List<Channel> channels = new ArrayList<>();
    for (int c = 0; c < nChannels; c++) {
      ManagedChannel m = channel(opts);
      managed.add(m);
      channels.add(withToken(m, opts));
    }
    ExecutorService pool = Executors.newFixedThreadPool(concurrency);
    long start = System.nanoTime();
    List<Future<Outcome>> futures = new ArrayList<>(calls);
    for (int i = 0; i < calls; i++) {
      final int n = i;
      futures.add(
          pool.submit(
              () -> {
                List<String> names = new ArrayList<>(perCall);
                for (int j = 0; j < perCall; j++) {
                  names.add(ifacePrefix + ((n * perCall + j) % ifaces));
                }
                String app = appPrefix + "-" + (n % apps);
                return register(channels.get(n % nChannels), flavour, ns, app, names, deadlineMs);
              }));
    }
    Map<String, Integer> codes = new TreeMap<>();
    Map<String, TreeSet<String>> sent = new TreeMap<>();
    JsonArray errors = new JsonArray();
    int good = 0;
    int badResponses = 0;
    for (int i = 0; i < calls; i++) {
      Outcome r = futures.get(i).get();
      codes.merge(r.code, 1, Integer::sum);
      if (r.good(flavour)) {
        good++;
        String app = appPrefix + "-" + (i % apps);
        for (int j = 0; j < perCall; j++) {
          sent.computeIfAbsent(ifacePrefix + ((i * perCall + j) % ifaces), k -> new TreeSet<>())
              .add(app);
        }
      } else {
        if ("OK".equals(r.code)) {
          badResponses++;
        }
        if (errors.size() < 10) {
          JsonObject e = r.json();
          e.addProperty("call", i);
          errors.add(e);
        }
      }
    }
    long elapsedNs = System.nanoTime() - start;
    pool.shutdown();
    for (ManagedChannel m : managed) {
      m.shutdown();
    }
    for (ManagedChannel m : managed) {
      m.awaitTermination(5, TimeUnit.SECONDS);
    }

    JsonObject out = new JsonObject();
    out.addProperty("flavour", flavour);
    out.addProperty("calls", calls);
    out.addProperty("ok", good);
    out.add("codes", GSON.toJsonTree(codes));
    out.addProperty("bad_responses", badResponses);
    out.add("errors", errors);
    out.addProperty("elapsed_ms", elapsedNs / 1_000_000);
    out.addProperty("calls_per_s", calls * 1e9 / Math.max(elapsedNs, 1));
    out.addProperty("namespace", ns);
    out.add("sent", GSON.toJsonTree(sent));
    return out;
  }

  // --- cases ---------------------------------------------------------------------------------

  /** One call per case, in order, on one channel; the outcome of each. */
  static JsonArray cases(Map<String, String> opts) throws Exception {
    JsonArray in;
    try (Reader r =
        opts.containsKey("file")
            ? Files.newBufferedReader(Path.of(opts.get("file")), StandardCharsets.UTF_8)
            : new InputStreamReader(System.in, StandardCharsets.UTF_8)) {
      in = JsonParser.parseReader(r).getAsJsonArray();
    }
    long deadlineMs = intOpt(opts, "deadline-ms", 10_000);
    ManagedChannel m = channel(opts);
    Channel ch = withToken(m, opts);
    JsonArray out = new JsonArray();
    try {
      for (JsonElement e : in) {
        JsonObject c = e.getAsJsonObject();
        List<String> ifaces = new ArrayList<>();
        for (JsonElement i : c.getAsJsonArray("interfaces")) {
          ifaces.add(i.getAsString());
        }
        String flavour = c.get("flavour").getAsString();
        Outcome r =
            register(
                ch,
                flavour,
                c.get("namespace").getAsString(),
                c.get("app").getAsString(),
                ifaces,
                deadlineMs);
        JsonObject o = r.json();
        o.addProperty("good", r.good(flavour));
        out.add(o);
      }
    } finally {
      m.shutdown();
      m.awaitTermination(5, TimeUnit.SECONDS);
    }
    return out;
  }
}
