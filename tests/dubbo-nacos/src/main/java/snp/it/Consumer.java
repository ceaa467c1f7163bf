package snp.it;

import org.apache.dubbo.config.ApplicationConfig;
import org.apache.dubbo.config.MetadataReportConfig;
import org.apache.dubbo.config.ReferenceConfig;
import org.apache.dubbo.config.RegistryConfig;
import org.apache.dubbo.config.bootstrap.DubboBootstrap;

/**
 * An unmodified Dubbo 3 consumer with application-level discovery only: it can find the
 * provider only through the interface -> application mapping it reads from the shim.
 * Args: zkPort nacosAddress. Calls Greeting every 300 ms and prints "CALL <answer>" or
 * "FAIL <error>".
 */
public final class Consumer {
    private Consumer() {}

    public static void main(String[] args) throws Exception {
        System.setProperty("dubbo.application.service-discovery.migration", "FORCE_APPLICATION");
        String zk = args[0];
        String nacos = args[1];
        ApplicationConfig application = new ApplicationConfig("snp-it-consumer");
        application.setQosEnable(false);
        ReferenceConfig<Greeting> reference = new ReferenceConfig<>();
        reference.setInterface(Greeting.class);
        reference.setCheck(false);
        reference.setTimeout(3000);
        DubboBootstrap.getInstance()
                .application(application)
                .registry(new RegistryConfig("zookeeper://127.0.0.1:" + zk))
                .metadataReport(new MetadataReportConfig("nacos://" + nacos))
                .reference(reference)
                .start();
        System.out.println("STARTED consumer");
        System.out.flush();
        Greeting greeting = reference.get();
        while (true) {
            try {
                System.out.println("CALL " + greeting.greet("snp"));
            } catch (RuntimeException e) {
                System.out.println("FAIL " + e.getClass().getSimpleName() + ": "
                        + String.valueOf(e.getMessage()).replace('\n', ' '));
            }
            System.out.flush();
            Thread.sleep(300);
        }
    }
}
