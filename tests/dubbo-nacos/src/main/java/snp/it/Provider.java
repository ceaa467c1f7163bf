package snp.it;

import org.apache.dubbo.config.ApplicationConfig;
import org.apache.dubbo.config.MetadataReportConfig;
import org.apache.dubbo.config.ProtocolConfig;
import org.apache.dubbo.config.RegistryConfig;
import org.apache.dubbo.config.ServiceConfig;
import org.apache.dubbo.config.bootstrap.DubboBootstrap;

/**
 * An unmodified Dubbo 3 provider: ZooKeeper for instances, the shim as its Nacos metadata
 * report. Args: zkPort nacosAddress(host:port, the HTTP port; the client dials +1000) app.
 * Exports snp.it.Greeting and snp.it.Outer$Inner, prints "STARTED", then "ALIVE" every
 * second while running (the test checks the app keeps running).
 */
public final class Provider {
    private Provider() {}

    public static void main(String[] args) throws Exception {
        String zk = args[0];
        String nacos = args[1];
        String app = args[2];
        ApplicationConfig application = new ApplicationConfig(app);
        application.setQosEnable(false);
        ProtocolConfig protocol = new ProtocolConfig("dubbo", -1);
        ServiceConfig<Greeting> greeting = new ServiceConfig<>();
        greeting.setInterface(Greeting.class);
        greeting.setRef(name -> app + ": hello " + name);
        ServiceConfig<Outer.Inner> inner = new ServiceConfig<>();
        inner.setInterface(Outer.Inner.class);
        inner.setRef(() -> app);
        DubboBootstrap.getInstance()
                .application(application)
                .registry(new RegistryConfig("zookeeper://127.0.0.1:" + zk))
                .metadataReport(new MetadataReportConfig("nacos://" + nacos))
                .protocol(protocol)
                .service(greeting)
                .service(inner)
                .start();
        System.out.println("STARTED " + app);
        System.out.flush();
        while (true) {
            Thread.sleep(1000);
            System.out.println("ALIVE " + app);
            System.out.flush();
        }
    }
}
