package snp.it;

import com.alibaba.nacos.api.config.ConfigService;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * N new applications register on one interface at once, each with its own nacos-client
 * connection, running Dubbo's mapping loop (MetadataServiceNameMapping.map): read the
 * config, stop if the app is listed, else publishConfigCas(old + "," + app, md5(old)), up
 * to 11 tries with a random pause under 100 ms. Args: host:port interface n.
 * Prints "first <n>", "tries <n>", "failed <n>".
 */
public final class Storm {
    private Storm() {}

    static String md5(String s) throws Exception {
        if (s == null || s.isEmpty()) {
            return "";
        }
        byte[] d = MessageDigest.getInstance("MD5").digest(s.getBytes(StandardCharsets.UTF_8));
        return String.format("%032x", new BigInteger(1, d));
    }

    public static void main(String[] args) throws Exception {
        String addr = args[0];
        String iface = args[1];
        int n = Integer.parseInt(args[2]);
        List<ConfigService> clients = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            clients.add(Probe.client(addr, null));
        }
        CountDownLatch start = new CountDownLatch(1);
        CountDownLatch done = new CountDownLatch(n);
        AtomicInteger first = new AtomicInteger();
        AtomicInteger tries = new AtomicInteger();
        AtomicInteger failed = new AtomicInteger();
        for (int i = 0; i < n; i++) {
            ConfigService c = clients.get(i);
            String app = String.format("storm-app-%03d", i);
            new Thread(() -> {
                try {
                    start.await();
                    boolean ok = false;
                    for (int attempt = 0; attempt < 11 && !ok; attempt++) {
                        tries.incrementAndGet();
                        String old = c.getConfig(iface, "mapping", 3000);
                        if (old != null && !old.isEmpty()) {
                            for (String a : old.split(",")) {
                                if (a.trim().equals(app)) {
                                    ok = true;
                                }
                            }
                            if (ok) {
                                break;
                            }
                        }
                        String next = (old == null || old.isEmpty()) ? app : old + "," + app;
                        ok = c.publishConfigCas(iface, "mapping", next, md5(old));
                        if (ok && attempt == 0) {
                            first.incrementAndGet();
                        }
                        if (!ok) {
                            Thread.sleep(ThreadLocalRandom.current().nextInt(100));
                        }
                    }
                    if (!ok) {
                        failed.incrementAndGet();
                    }
                } catch (Exception e) {
                    failed.incrementAndGet();
                    e.printStackTrace();
                } finally {
                    done.countDown();
                }
            }).start();
        }
        start.countDown();
        done.await();
        System.out.println("first " + first.get());
        System.out.println("tries " + tries.get());
        System.out.println("failed " + failed.get());
        System.out.flush();
        System.exit(0);
    }
}
