package snp.it;

/** Holds a nested interface, so a mapping's interface name contains '$' (Outer$Inner). */
public final class Outer {
    private Outer() {}

    /** Nested service: Dubbo writes its dataId as snp.it.Outer___Inner. */
    public interface Inner {
        String ping();
    }
}
