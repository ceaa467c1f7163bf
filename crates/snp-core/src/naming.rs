//! Kubernetes object names and labels for an interface.
//!
//! The seed names an object `lower(interface).replace('.', '-')`. That name is invalid for
//! interfaces with `_` or `$`, too long for some, and the same for `com.Foo` and `com.foo`.
//! Here every interface gets an ordered list of candidate names:
//!
//! 1. the seed's name, when it is a valid object name, so objects the seed created are
//!    found and reused;
//! 2. a fallback that is always valid and unique per exact interface name: a readable,
//!    sanitised prefix and a hash of the exact name.
//!
//! The writer uses the first candidate that is free or already holds the same
//! `spec.interfaceName`, so two interfaces never share an object.
//!
//! The hash is the first 80 bits of SHA-256, as 20 hex digits: a collision among `n`
//! interfaces of one namespace has probability about `n^2 / 2^81` (below 10^-12 for a
//! million interfaces).

use sha2::{Digest, Sha256};

/// The seed's label: `interface=<interface name>`, set only when the name is a valid label
/// value (the seed could not create objects for other names at all).
pub const LABEL_INTERFACE: &str = "interface";
/// A label every object gets: the interface hash, valid for any interface name. Lets
/// `kubectl get snp -l` find an object by interface without the name rules.
pub const LABEL_INTERFACE_HASH: &str = "snp.dubbo.apache.org/interface-hash";
/// Hex digits of the hash.
pub const HASH_HEX_LEN: usize = 20;
/// Longest object name (DNS-1123 subdomain).
pub const MAX_NAME_LEN: usize = 253;
/// Longest readable prefix of a fallback name.
const MAX_PREFIX_LEN: usize = 200;

/// The seed's object name for `interface` (may be invalid).
pub fn seed_name(interface: &str) -> String {
    interface.replace('.', "-").to_lowercase()
}

/// The stable hash of the exact interface name: 20 lower-case hex digits.
pub fn interface_hash(interface: &str) -> String {
    let digest = Sha256::digest(interface.as_bytes());
    digest
        .iter()
        .take(HASH_HEX_LEN / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fallback object name: always a valid DNS-1123 subdomain, distinct per exact name.
pub fn hashed_name(interface: &str) -> String {
    let mut prefix = String::with_capacity(interface.len().min(MAX_PREFIX_LEN));
    for c in interface.chars().flat_map(char::to_lowercase) {
        if prefix.len() >= MAX_PREFIX_LEN {
            break;
        }
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            prefix.push(c);
        } else if !prefix.is_empty() && !prefix.ends_with('-') {
            prefix.push('-');
        }
    }
    let prefix = prefix.trim_end_matches('-');
    let hash = interface_hash(interface);
    if prefix.is_empty() {
        format!("snp-{hash}")
    } else {
        format!("{prefix}-{hash}")
    }
}

/// Candidate object names for `interface`, in order of preference.
pub fn candidate_names(interface: &str) -> Vec<String> {
    let seed = seed_name(interface);
    let fallback = hashed_name(interface);
    if is_valid_object_name(&seed) {
        vec![seed, fallback]
    } else {
        vec![fallback]
    }
}

/// Labels an object for `interface` carries.
pub fn labels(interface: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(2);
    if is_valid_label_value(interface) {
        out.push((LABEL_INTERFACE, interface.to_owned()));
    }
    out.push((LABEL_INTERFACE_HASH, interface_hash(interface)));
    out
}

/// Whether `name` is a DNS-1123 subdomain, as Kubernetes requires of object names.
pub fn is_valid_object_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// Whether `value` is a valid label value: at most 63 of `[A-Za-z0-9._-]`, alphanumeric
/// at both ends (or empty).
pub fn is_valid_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn seed_names_come_first_when_valid() {
        let c = candidate_names("org.apache.dubbo.demo.DemoService");
        assert_eq!(c[0], "org-apache-dubbo-demo-demoservice");
        assert_eq!(c.len(), 2);
        assert!(c[1].starts_with("org-apache-dubbo-demo-demoservice-"));
        assert_eq!(
            c[1].len(),
            "org-apache-dubbo-demo-demoservice-".len() + HASH_HEX_LEN
        );
    }

    #[test]
    fn names_the_seed_cannot_build_get_only_the_fallback() {
        for iface in ["com.acme.Outer$Inner", "com.acme.snake_case", "_Hidden"] {
            let c = candidate_names(iface);
            assert_eq!(c.len(), 1, "{iface}");
            assert!(is_valid_object_name(&c[0]));
        }
        let long = format!("com.{}", "a".repeat(300));
        let c = candidate_names(&long);
        assert_eq!(c.len(), 1);
        assert!(c[0].len() <= MAX_NAME_LEN);
    }

    #[test]
    fn case_twins_share_the_seed_name_but_not_the_fallback() {
        let (a, b) = (candidate_names("com.Foo"), candidate_names("com.foo"));
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
    }

    #[test]
    fn hash_is_stable() {
        // Pinned: objects in clusters are named with it, so it must never change (the first
        // 80 bits of SHA-256, as `sha256sum` prints them).
        assert_eq!(
            interface_hash("org.apache.dubbo.demo.DemoService"),
            "afad91464809ea399e3d"
        );
        assert_eq!(
            hashed_name("org.apache.dubbo.demo.DemoService"),
            "org-apache-dubbo-demo-demoservice-afad91464809ea399e3d"
        );
        assert_eq!(interface_hash(""), "e3b0c44298fc1c149afb");
    }

    #[test]
    fn labels_work_for_any_interface() {
        let l = labels("org.apache.dubbo.demo.DemoService");
        assert_eq!(
            l[0],
            (
                LABEL_INTERFACE,
                "org.apache.dubbo.demo.DemoService".to_owned()
            )
        );
        let l = labels("com.acme.Outer$Inner");
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].0, LABEL_INTERFACE_HASH);
        assert!(is_valid_label_value(&l[0].1));
    }

    proptest! {
        #[test]
        fn every_candidate_is_a_valid_name(iface in "\\PC{0,400}") {
            for name in candidate_names(&iface) {
                prop_assert!(is_valid_object_name(&name), "{name:?}");
            }
            for (_, value) in labels(&iface) {
                prop_assert!(is_valid_label_value(&value));
            }
        }

        #[test]
        fn fallback_is_injective_on_distinct_names(
            names in proptest::collection::hash_set("[a-zA-Z$_.]{1,12}", 1..300)
        ) {
            let fallbacks: HashSet<String> = names.iter().map(|n| hashed_name(n)).collect();
            prop_assert_eq!(fallbacks.len(), names.len());
        }
    }
}
