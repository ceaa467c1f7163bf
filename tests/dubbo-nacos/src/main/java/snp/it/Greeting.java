package snp.it;

/** The service the test provider exports; answers with the provider's application name. */
public interface Greeting {
    String greet(String name);
}
