//! Validation of registrations, shared by the filter and the shim so that both answer the
//! same input with the same error.
//!
//! Every field arrives as untrusted bytes (one Go client even sends `namespace="mapping"`).
//! Errors are typed for metrics and carry a message fit for a gRPC `grpc-message`: short,
//! and quoting user input only in escaped, truncated form.

use core::fmt;

/// Bounds on a registration. The defaults are generous for real Dubbo apps and small
/// enough that one request can't balloon memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest application name, in bytes (default 253, a DNS subdomain's length).
    pub max_application_len: usize,
    /// Longest interface name, in bytes (default 1,024).
    pub max_interface_len: usize,
    /// Most interfaces in one request (default 1,000).
    pub max_interfaces: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_application_len: 253,
            max_interface_len: 1024,
            max_interfaces: 1000,
        }
    }
}

/// Which field of the request an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `namespace`.
    Namespace,
    /// `applicationName`.
    ApplicationName,
    /// `interfaceNames[index]`.
    InterfaceName(usize),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Namespace => f.write_str("namespace"),
            Field::ApplicationName => f.write_str("applicationName"),
            Field::InterfaceName(i) => write!(f, "interfaceNames[{i}]"),
        }
    }
}

/// User input quoted in an error: escaped and cut to 64 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted(String);

impl Quoted {
    fn new(s: &str) -> Self {
        let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
        if s.chars().nth(64).is_some() {
            out.push_str("...");
        }
        Self(out)
    }
}

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

/// Why a registration is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A field is not valid UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(Field),
    /// The namespace is not an RFC 1123 label.
    #[error("namespace {0} is not a valid RFC 1123 label (lower case alphanumerics and '-', at most 63)")]
    InvalidNamespace(Quoted),
    /// No application name.
    #[error("applicationName is empty")]
    EmptyApplication,
    /// The application name is too long.
    #[error("applicationName is {len} bytes, more than the limit of {max}")]
    ApplicationTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The application name has control or whitespace characters.
    #[error("applicationName {0} contains whitespace or control characters")]
    InvalidApplication(Quoted),
    /// No interface names.
    #[error("interfaceNames is empty")]
    NoInterfaces,
    /// Too many interface names.
    #[error("{count} interfaceNames, more than the limit of {max}")]
    TooManyInterfaces {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An interface name is empty, too long or has characters a Java name can't have.
    #[error("{field} {name} is not a valid interface name: {reason}")]
    InvalidInterface {
        /// Which one.
        field: Field,
        /// The name.
        name: Quoted,
        /// What is wrong.
        reason: &'static str,
    },
}

impl ValidationError {
    /// A stable short name, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidUtf8(_) => "invalid_utf8",
            Self::InvalidNamespace(_) => "invalid_namespace",
            Self::EmptyApplication => "empty_application",
            Self::ApplicationTooLong { .. } | Self::InvalidApplication(_) => "invalid_application",
            Self::NoInterfaces | Self::TooManyInterfaces { .. } | Self::InvalidInterface { .. } => {
                "invalid_interface"
            }
        }
    }
}

/// A validated registration: one application providing some interfaces in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// An RFC 1123 label.
    pub namespace: String,
    /// Non-empty, bounded, no whitespace or control characters.
    pub application: String,
    /// Valid interface names, de-duplicated, in request order.
    pub interfaces: Vec<String>,
}

fn utf8(bytes: Vec<u8>, field: Field) -> Result<String, ValidationError> {
    String::from_utf8(bytes).map_err(|_| ValidationError::InvalidUtf8(field))
}

impl Registration {
    /// Decodes and validates the raw fields of a registration request. UTF-8 is checked
    /// first for every field, so a request with invalid bytes is always reported as such.
    pub fn from_raw(
        namespace: Vec<u8>,
        application: Vec<u8>,
        interfaces: Vec<Vec<u8>>,
        limits: &Limits,
    ) -> Result<Self, ValidationError> {
        let namespace = utf8(namespace, Field::Namespace)?;
        let application = utf8(application, Field::ApplicationName)?;
        if interfaces.len() > limits.max_interfaces {
            return Err(ValidationError::TooManyInterfaces {
                count: interfaces.len(),
                max: limits.max_interfaces,
            });
        }
        let interfaces = interfaces
            .into_iter()
            .enumerate()
            .map(|(i, b)| utf8(b, Field::InterfaceName(i)))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(namespace, application, interfaces, limits)
    }

    /// Validates a registration whose fields are already strings.
    pub fn new(
        namespace: String,
        application: String,
        interfaces: Vec<String>,
        limits: &Limits,
    ) -> Result<Self, ValidationError> {
        validate_namespace(&namespace)?;
        validate_application(&application, limits)?;
        if interfaces.is_empty() {
            return Err(ValidationError::NoInterfaces);
        }
        if interfaces.len() > limits.max_interfaces {
            return Err(ValidationError::TooManyInterfaces {
                count: interfaces.len(),
                max: limits.max_interfaces,
            });
        }
        let mut unique: Vec<String> = Vec::with_capacity(interfaces.len());
        for (i, name) in interfaces.into_iter().enumerate() {
            validate_interface(&name, Field::InterfaceName(i), limits)?;
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        Ok(Self {
            namespace,
            application,
            interfaces: unique,
        })
    }
}

/// Whether `s` is an RFC 1123 label: 1 to 63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_rfc1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Checks that `namespace` can name a Kubernetes namespace.
pub fn validate_namespace(namespace: &str) -> Result<(), ValidationError> {
    if is_rfc1123_label(namespace) {
        Ok(())
    } else {
        Err(ValidationError::InvalidNamespace(Quoted::new(namespace)))
    }
}

/// The namespace segment of a SPIFFE ID `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`
/// (Istio's layout), if it has one that is a valid namespace. The filter (peer
/// certificate of the downstream connection) and the shim (client certificate) read
/// callers with this one function, so they agree on who is calling.
pub fn spiffe_namespace(uri: &[u8]) -> Option<&str> {
    spiffe_workload(uri).map(|(ns, _)| ns)
}

/// The namespace and, if the ID names a valid one, the service account of a SPIFFE ID
/// (see [`spiffe_namespace`]).
pub fn spiffe_workload(uri: &[u8]) -> Option<(&str, Option<&str>)> {
    let uri = core::str::from_utf8(uri).ok()?;
    let rest = uri.strip_prefix("spiffe://")?;
    let (_trust_domain, path) = rest.split_once('/')?;
    let mut segments = path.split('/');
    while let Some(seg) = segments.next() {
        if seg == "ns" {
            let ns = segments.next().filter(|ns| is_rfc1123_label(ns))?;
            let sa = match (segments.next(), segments.next()) {
                (Some("sa"), Some(sa)) if is_service_account_name(sa) => Some(sa),
                _ => None,
            };
            return Some((ns, sa));
        }
    }
    None
}

/// A service account name: an RFC 1123 subdomain (labels joined by dots, at most 253).
fn is_service_account_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_rfc1123_label)
}

/// Checks an application name.
pub fn validate_application(app: &str, limits: &Limits) -> Result<(), ValidationError> {
    if app.is_empty() {
        return Err(ValidationError::EmptyApplication);
    }
    if app.len() > limits.max_application_len {
        return Err(ValidationError::ApplicationTooLong {
            len: app.len(),
            max: limits.max_application_len,
        });
    }
    if app.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ValidationError::InvalidApplication(Quoted::new(app)));
    }
    Ok(())
}

/// Checks an interface name. Java names allow letters and digits of any script, `_` and
/// `$` (nested classes: `Outer$Inner`); Dubbo service keys add `-` and `:`. Dots separate
/// non-empty segments.
pub fn validate_interface(
    name: &str,
    field: Field,
    limits: &Limits,
) -> Result<(), ValidationError> {
    let invalid = |reason| {
        Err(ValidationError::InvalidInterface {
            field,
            name: Quoted::new(name),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > limits.max_interface_len {
        return invalid("too long");
    }
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '$' | '.' | '-' | ':'))
    {
        return invalid("only letters, digits, '_', '$', '.', '-' and ':' are allowed");
    }
    if name.split('.').any(str::is_empty) {
        return invalid("empty segment between dots");
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn spiffe_ids() {
        assert_eq!(
            spiffe_namespace(b"spiffe://cluster.local/ns/shop/sa/default"),
            Some("shop")
        );
        assert_eq!(
            spiffe_workload(b"spiffe://cluster.local/ns/shop/sa/cart.v1"),
            Some(("shop", Some("cart.v1")))
        );
        assert_eq!(
            spiffe_workload(b"spiffe://td/ns/a-1/sa/x/extra"),
            Some(("a-1", Some("x")))
        );
        assert_eq!(spiffe_workload(b"spiffe://td/ns/a-1"), Some(("a-1", None)));
        assert_eq!(
            spiffe_workload(b"spiffe://td/ns/a-1/sa/Bad_SA"),
            Some(("a-1", None))
        );
        assert_eq!(spiffe_namespace(b"spiffe://td/sa/x"), None);
        assert_eq!(spiffe_namespace(b"spiffe://td/ns/"), None);
        assert_eq!(spiffe_namespace(b"spiffe://td/ns/Bad_NS/sa/x"), None);
        assert_eq!(spiffe_namespace(b"https://td/ns/shop/sa/x"), None);
        assert_eq!(spiffe_namespace(b"spiffe://td"), None);
        assert_eq!(spiffe_namespace(&[0xff, 0xfe]), None);
    }

    use super::*;
    use proptest::prelude::*;

    fn raw(ns: &[u8], app: &[u8], ifaces: &[&[u8]]) -> Result<Registration, ValidationError> {
        Registration::from_raw(
            ns.to_vec(),
            app.to_vec(),
            ifaces.iter().map(|i| i.to_vec()).collect(),
            &Limits::default(),
        )
    }

    #[test]
    fn accepts_real_dubbo_registrations() {
        let r = raw(
            b"default",
            b"demo-provider",
            &[
                b"org.apache.dubbo.demo.DemoService",
                b"com.acme.Outer$Inner_2",
                b"org.apache.dubbo.demo.DemoService",
            ],
        )
        .unwrap();
        assert_eq!(r.namespace, "default");
        assert_eq!(
            r.interfaces,
            vec![
                "org.apache.dubbo.demo.DemoService",
                "com.acme.Outer$Inner_2"
            ]
        );
        assert!(raw(
            b"ns-1",
            b"app",
            &["com.\u{00e9}t\u{00e9}.Caf\u{00e9}".as_bytes()]
        )
        .is_ok());
    }

    #[test]
    fn each_defect_is_named() {
        assert_eq!(
            raw(&[0xff], b"a", &[b"I"]),
            Err(ValidationError::InvalidUtf8(Field::Namespace))
        );
        assert_eq!(
            raw(b"d", &[0xc3], &[b"I"]),
            Err(ValidationError::InvalidUtf8(Field::ApplicationName))
        );
        assert_eq!(
            raw(b"d", b"a", &[b"I", &[0xe2, 0x28]]),
            Err(ValidationError::InvalidUtf8(Field::InterfaceName(1)))
        );
        assert!(matches!(
            raw(b"", b"a", &[b"I"]),
            Err(ValidationError::InvalidNamespace(_))
        ));
        assert!(matches!(
            raw(b"Default", b"a", &[b"I"]),
            Err(ValidationError::InvalidNamespace(_))
        ));
        assert!(matches!(
            raw(b"-x", b"a", &[b"I"]),
            Err(ValidationError::InvalidNamespace(_))
        ));
        assert!(matches!(
            raw(&[b'a'; 64], b"a", &[b"I"]),
            Err(ValidationError::InvalidNamespace(_))
        ));
        assert_eq!(
            raw(b"d", b"", &[b"I"]),
            Err(ValidationError::EmptyApplication)
        );
        assert!(matches!(
            raw(b"d", &[b'a'; 254], &[b"I"]),
            Err(ValidationError::ApplicationTooLong { len: 254, .. })
        ));
        assert!(matches!(
            raw(b"d", b"a b", &[b"I"]),
            Err(ValidationError::InvalidApplication(_))
        ));
        assert_eq!(raw(b"d", b"a", &[]), Err(ValidationError::NoInterfaces));
        assert!(matches!(
            raw(b"d", b"a", &[b"a..b"]),
            Err(ValidationError::InvalidInterface { .. })
        ));
        assert!(matches!(
            raw(b"d", b"a", &[b"a/b"]),
            Err(ValidationError::InvalidInterface { .. })
        ));
        assert!(matches!(
            raw(b"d", b"a", &[b""]),
            Err(ValidationError::InvalidInterface { .. })
        ));
        assert!(matches!(
            raw(b"d", b"a", &[&[b'a'; 1025]]),
            Err(ValidationError::InvalidInterface { .. })
        ));
        let many: Vec<&[u8]> = vec![b"I"; 1001];
        assert!(matches!(
            raw(b"d", b"a", &many),
            Err(ValidationError::TooManyInterfaces { count: 1001, .. })
        ));
    }

    #[test]
    fn messages_are_readable_and_quote_safely() {
        let e = raw(b"mapping\n\x07", b"a", &[b"I"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(r#""mapping\n\u{7}""#), "{msg}");
        let long = "x".repeat(500);
        let e = raw(long.as_bytes(), b"a", &[b"I"]).unwrap_err().to_string();
        assert!(e.len() < 200 && e.contains("..."), "{e}");
        assert_eq!(
            ValidationError::EmptyApplication.reason(),
            "empty_application"
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(
            ns in proptest::collection::vec(any::<u8>(), 0..80),
            app in proptest::collection::vec(any::<u8>(), 0..300),
            ifaces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5),
        ) {
            if let Ok(r) = Registration::from_raw(ns, app, ifaces, &Limits::default()) {
                prop_assert!(is_rfc1123_label(&r.namespace));
                prop_assert!(!r.application.is_empty() && !r.interfaces.is_empty());
            }
        }
    }
}
