package snp.it;

import com.alibaba.nacos.api.NacosFactory;
import com.alibaba.nacos.api.PropertyKeyConst;
import com.alibaba.nacos.api.config.ConfigService;
import java.util.Properties;

/**
 * A nacos-client with a username, as an app that sets one: it logs in over HTTP on the
 * configured port and retries every 5 s until it gets a token. Args: host:port seconds.
 * Reads a mapping, then stays up for the given seconds. Prints "read <value>", "done true".
 */
public final class Login {
    private Login() {}

    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        p.put(PropertyKeyConst.SERVER_ADDR, args[0]);
        p.put(PropertyKeyConst.USERNAME, "dubbo");
        p.put(PropertyKeyConst.PASSWORD, "secret");
        ConfigService c = NacosFactory.createConfigService(p);
        System.out.println("read " + c.getConfig("snp.it.Login", "mapping", 3000));
        Thread.sleep(Long.parseLong(args[1]) * 1000);
        System.out.println("done true");
        System.out.flush();
        c.shutDown();
        System.exit(0);
    }
}
