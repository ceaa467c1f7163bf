package snp.it;

import org.apache.curator.test.TestingServer;

/** An embedded ZooKeeper (Curator's test server) as the instance registry; prints "ZK <port>" and runs until killed. */
public final class Zk {
    private Zk() {}

    public static void main(String[] args) throws Exception {
        TestingServer server = new TestingServer(-1, true);
        System.out.println("ZK " + server.getPort());
        System.out.flush();
        Thread.currentThread().join();
    }
}
