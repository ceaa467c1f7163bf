//! What both doors (the proxy-wasm filter and the shim) decide about a registration call: which headers are
//! acceptable, and how a buffered body becomes a validated [`Registration`] or a
//! [`Rejection`] with its own gRPC status and message.

use crate::validate::ValidationError;
use crate::{Limits, Registration};
use snp_proto::frame::{self, FrameError, Header, HEADER_LEN};
use snp_proto::RawServiceMappingRequest;

/// The gRPC status codes the filter answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 3
    InvalidArgument,
    /// 7
    PermissionDenied,
    /// 8
    ResourceExhausted,
    /// 9
    FailedPrecondition,
    /// 12
    Unimplemented,
    /// 14
    Unavailable,
}

impl Code {
    /// The numeric gRPC status.
    pub fn as_u32(self) -> u32 {
        match self {
            Self::InvalidArgument => 3,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted => 8,
            Self::FailedPrecondition => 9,
            Self::Unimplemented => 12,
            Self::Unavailable => 14,
        }
    }
}

/// Why a call was refused: one variant per class of bad input or policy outcome. The
/// metric of each is `snp.invalid.<name>` (or `snp.rejected.<name>` for non-input causes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Fewer bytes than the frame announces (or than a frame header).
    TruncatedFrame,
    /// Frame flag byte neither 0 nor 1.
    InvalidFrameFlag,
    /// Compressed frame or `grpc-encoding` other than identity.
    Compressed,
    /// A content subtype other than protobuf (`application/grpc+json`, ...).
    UnsupportedContentType,
    /// The body is larger than `max_body_bytes`.
    TooLarge,
    /// Bytes after the one message of the call.
    TrailingBytes,
    /// The message is not a `ServiceMappingRequest` protobuf.
    NotProtobuf,
    /// A string field holds invalid UTF-8.
    InvalidUtf8,
    /// `applicationName` is empty.
    EmptyApplication,
    /// `applicationName` is too long or has whitespace/control characters.
    InvalidApplication,
    /// `namespace` is not an RFC 1123 label.
    InvalidNamespace,
    /// No interface, too many, or an invalid interface name.
    InvalidInterface,
    /// Not a gRPC request (HTTP 415).
    NotGrpc,
    /// A registration over HTTP/1.x (gRPC needs HTTP/2).
    NotHttp2,
    /// The namespace is not the caller's (policy `reject`).
    NamespaceMismatch,
    /// The policy needs the caller's namespace and it is unknown.
    CallerUnknown,
    /// The debouncer's bounds are reached.
    PendingFull,
    /// Durable mode: the shim did not acknowledge in time.
    NotAcknowledged,
    /// A spelling of a registration path other than the exact one (`snp_proto::path`).
    NonCanonicalPath,
    /// The shim refused the mapping for good (its store refuses the key, or its limits).
    StoreRejected,
}

impl Reason {
    /// Every reason, for metric definitions.
    pub const ALL: [Reason; 20] = [
        Reason::TruncatedFrame,
        Reason::InvalidFrameFlag,
        Reason::Compressed,
        Reason::UnsupportedContentType,
        Reason::TooLarge,
        Reason::TrailingBytes,
        Reason::NotProtobuf,
        Reason::InvalidUtf8,
        Reason::EmptyApplication,
        Reason::InvalidApplication,
        Reason::InvalidNamespace,
        Reason::InvalidInterface,
        Reason::NotGrpc,
        Reason::NotHttp2,
        Reason::NamespaceMismatch,
        Reason::CallerUnknown,
        Reason::PendingFull,
        Reason::NotAcknowledged,
        Reason::NonCanonicalPath,
        Reason::StoreRejected,
    ];

    /// Stable snake_case name, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TruncatedFrame => "truncated_frame",
            Self::InvalidFrameFlag => "invalid_frame_flag",
            Self::Compressed => "compressed",
            Self::UnsupportedContentType => "unsupported_content_type",
            Self::TooLarge => "too_large",
            Self::TrailingBytes => "trailing_bytes",
            Self::NotProtobuf => "not_protobuf",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::EmptyApplication => "empty_application",
            Self::InvalidApplication => "invalid_application",
            Self::InvalidNamespace => "invalid_namespace",
            Self::InvalidInterface => "invalid_interface",
            Self::NotGrpc => "not_grpc",
            Self::NotHttp2 => "not_http2",
            Self::NamespaceMismatch => "namespace_mismatch",
            Self::CallerUnknown => "caller_unknown",
            Self::PendingFull => "pending_full",
            Self::NotAcknowledged => "not_acknowledged",
            Self::NonCanonicalPath => "non_canonical_path",
            Self::StoreRejected => "store_rejected",
        }
    }

    /// Whether the reason is bad input (counted under `snp.invalid.*`), as opposed to a
    /// policy or capacity outcome.
    pub fn is_bad_input(self) -> bool {
        !matches!(
            self,
            Self::NamespaceMismatch
                | Self::CallerUnknown
                | Self::PendingFull
                | Self::NotAcknowledged
                | Self::StoreRejected
        )
    }
}

/// A refused call: the status, the reason, and a message for `grpc-message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// gRPC status.
    pub code: Code,
    /// Class, for metrics.
    pub reason: Reason,
    /// Human-readable message (printable ASCII: user input is escaped).
    pub message: String,
}

impl Rejection {
    /// A rejection; non-printable or non-ASCII characters of `message` are escaped so it
    /// is always a valid header value.
    pub fn new(code: Code, reason: Reason, message: impl AsRef<str>) -> Self {
        Self {
            code,
            reason,
            message: ascii_message(message.as_ref()),
        }
    }
}

/// `s` with everything outside printable ASCII escaped (`\u{...}`), cut to 256 bytes.
pub fn ascii_message(s: &str) -> String {
    ascii_message_within(s, 256)
}

/// [`ascii_message`] cut to `max` bytes instead: for a message passed on from the shim,
/// which the shim itself sends whole.
pub fn ascii_message_within(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        if out.len() >= max {
            out.push_str("...");
            break;
        }
        if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    out
}

/// The request headers the filter looks at, read once in `on_http_request_headers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHeaders {
    /// `:method`.
    pub method: Option<Vec<u8>>,
    /// `content-type`.
    pub content_type: Option<Vec<u8>>,
    /// `grpc-encoding`.
    pub grpc_encoding: Option<Vec<u8>>,
    /// `content-length`, if present.
    pub content_length: Option<Vec<u8>>,
    /// The HTTP protocol (`HTTP/1.1`, `HTTP/2`, ...), if the host knows it.
    pub protocol: Option<Vec<u8>>,
}

/// Checks the headers of a call to an intercepted path. `Ok` means: buffer the body.
pub fn check_headers(h: &RequestHeaders, max_body_bytes: usize) -> Result<(), Rejection> {
    let ct = h.content_type.as_deref().unwrap_or_default();
    let is_grpc = ct == b"application/grpc"
        || ct.starts_with(b"application/grpc+")
        || ct.starts_with(b"application/grpc;");
    if h.method.as_deref() != Some(b"POST") || !is_grpc {
        return Err(Rejection::new(
            Code::Unimplemented,
            Reason::NotGrpc,
            "registration paths accept gRPC calls only (POST, content-type application/grpc)",
        ));
    }
    if h.protocol
        .as_deref()
        .is_some_and(|p| p.starts_with(b"HTTP/1"))
    {
        // gRPC needs HTTP/2: over HTTP/1.1 the answer's trailers (grpc-status) are lost,
        // and a client would read "200, no status" as success.
        // A gRPC status (in the headers of a trailers-only answer), not an HTTP 415: Envoy
        // turns a local reply to an application/grpc request into one anyway.
        return Err(Rejection::new(
            Code::Unimplemented,
            Reason::NotHttp2,
            "registration paths accept gRPC calls only, over HTTP/2; this call is HTTP/1.x",
        ));
    }
    if ct.starts_with(b"application/grpc+") && !ct.starts_with(b"application/grpc+proto") {
        return Err(Rejection::new(
            Code::Unimplemented,
            Reason::UnsupportedContentType,
            format!(
                "content-type {} is not supported; use application/grpc (protobuf)",
                String::from_utf8_lossy(ct)
            ),
        ));
    }
    if let Some(enc) = h.grpc_encoding.as_deref() {
        if enc != b"identity" {
            return Err(Rejection::new(
                Code::Unimplemented,
                Reason::Compressed,
                format!(
                    "grpc-encoding {} is not supported; send uncompressed messages (identity)",
                    String::from_utf8_lossy(enc)
                ),
            ));
        }
    }
    if let Some(len) = h.content_length.as_deref() {
        let parsed = core::str::from_utf8(len)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let Some(n) = parsed {
            if n > max_body_bytes as u64 {
                return Err(too_large(n, max_body_bytes));
            }
        }
    }
    Ok(())
}

fn too_large(len: u64, max: usize) -> Rejection {
    Rejection::new(
        Code::ResourceExhausted,
        Reason::TooLarge,
        format!("request body of {len} bytes exceeds the limit of {max} bytes"),
    )
}

/// Checks the first bytes of a body while it is still arriving, so that an oversized or
/// compressed call is refused before it is all buffered. `buffered` is the total size so far.
pub fn check_prefix(
    prefix: &[u8],
    buffered: usize,
    max_body_bytes: usize,
) -> Result<(), Rejection> {
    if buffered > max_body_bytes {
        return Err(too_large(buffered as u64, max_body_bytes));
    }
    match Header::parse(prefix) {
        Ok(Some(h)) if h.len > max_body_bytes.saturating_sub(HEADER_LEN) => Err(too_large(
            (h.len as u64).saturating_add(HEADER_LEN as u64),
            max_body_bytes,
        )),
        Ok(Some(h)) if h.compressed => Err(frame_rejection(FrameError::Compressed)),
        Ok(_) => Ok(()),
        Err(e) => Err(frame_rejection(e)),
    }
}

fn frame_rejection(e: FrameError) -> Rejection {
    let (code, reason) = match &e {
        FrameError::Truncated { .. } => (Code::InvalidArgument, Reason::TruncatedFrame),
        FrameError::Compressed => (Code::Unimplemented, Reason::Compressed),
        FrameError::InvalidFlag(_) => (Code::InvalidArgument, Reason::InvalidFrameFlag),
        FrameError::TooLarge { .. } => (Code::ResourceExhausted, Reason::TooLarge),
        FrameError::TrailingBytes { .. } => (Code::InvalidArgument, Reason::TrailingBytes),
    };
    Rejection::new(code, reason, e.to_string())
}

fn validation_rejection(e: &ValidationError) -> Rejection {
    let reason = match e {
        ValidationError::InvalidUtf8(_) => Reason::InvalidUtf8,
        ValidationError::InvalidNamespace(_) => Reason::InvalidNamespace,
        ValidationError::EmptyApplication => Reason::EmptyApplication,
        ValidationError::ApplicationTooLong { .. } | ValidationError::InvalidApplication(_) => {
            Reason::InvalidApplication
        }
        ValidationError::NoInterfaces
        | ValidationError::TooManyInterfaces { .. }
        | ValidationError::InvalidInterface { .. } => Reason::InvalidInterface,
    };
    Rejection::new(Code::InvalidArgument, reason, e.to_string())
}

/// Decodes and validates a complete request body: exactly one uncompressed gRPC frame
/// holding a `ServiceMappingRequest`.
pub fn decode_body(
    body: &[u8],
    max_body_bytes: usize,
    limits: &Limits,
) -> Result<Registration, Rejection> {
    if body.len() > max_body_bytes {
        return Err(too_large(body.len() as u64, max_body_bytes));
    }
    let msg =
        frame::decode(body, max_body_bytes.saturating_sub(HEADER_LEN)).map_err(frame_rejection)?;
    let raw = RawServiceMappingRequest::decode_bytes(msg).map_err(|e| {
        Rejection::new(
            Code::InvalidArgument,
            Reason::NotProtobuf,
            format!("request is not a ServiceMappingRequest protobuf message: {e}"),
        )
    })?;
    Registration::from_raw(
        raw.namespace,
        raw.application_name,
        raw.interface_names,
        limits,
    )
    .map_err(|e| validation_rejection(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;
    use snp_proto::dubbo::ServiceMappingRequest;

    const MAX: usize = 64 * 1024;

    fn request(ns: &str, app: &str, ifaces: &[&str]) -> Vec<u8> {
        ServiceMappingRequest {
            namespace: ns.into(),
            application_name: app.into(),
            interface_names: ifaces.iter().map(|s| s.to_string()).collect(),
        }
        .encode_to_vec()
    }

    fn body(ns: &str, app: &str, ifaces: &[&str]) -> Vec<u8> {
        frame::encode(&request(ns, app, ifaces))
    }

    fn reject(b: &[u8]) -> Rejection {
        decode_body(b, MAX, &Limits::default()).unwrap_err()
    }

    #[test]
    fn the_design_example_decodes() {
        let b = body(
            "default",
            "demo-provider",
            &["org.apache.dubbo.demo.DemoService"],
        );
        assert_eq!(&b[..5], &[0, 0, 0, 0, 0x3b]);
        let r = decode_body(&b, MAX, &Limits::default()).unwrap();
        assert_eq!(r.namespace, "default");
        assert_eq!(r.application, "demo-provider");
        assert_eq!(r.interfaces, vec!["org.apache.dubbo.demo.DemoService"]);
    }

    #[test]
    fn each_bad_input_class_has_its_own_status_and_reason() {
        let good = body("default", "app", &["a.B"]);
        let cases: Vec<(Vec<u8>, Code, Reason)> = vec![
            (
                good[..good.len() - 3].to_vec(),
                Code::InvalidArgument,
                Reason::TruncatedFrame,
            ),
            (vec![0, 0], Code::InvalidArgument, Reason::TruncatedFrame),
            (vec![], Code::InvalidArgument, Reason::TruncatedFrame),
            (
                {
                    let mut b = good.clone();
                    b.extend_from_slice(b"xx");
                    b
                },
                Code::InvalidArgument,
                Reason::TrailingBytes,
            ),
            (
                frame::encode(&[0xff, 0xff, 0xff]),
                Code::InvalidArgument,
                Reason::NotProtobuf,
            ),
            (
                {
                    let mut b = good.clone();
                    b[0] = 1;
                    b
                },
                Code::Unimplemented,
                Reason::Compressed,
            ),
            (
                {
                    let mut b = good.clone();
                    b[0] = 7;
                    b
                },
                Code::InvalidArgument,
                Reason::InvalidFrameFlag,
            ),
            (
                body("default", "", &["a.B"]),
                Code::InvalidArgument,
                Reason::EmptyApplication,
            ),
            (
                body("Not_A_Label", "app", &["a.B"]),
                Code::InvalidArgument,
                Reason::InvalidNamespace,
            ),
            (
                body("", "app", &["a.B"]),
                Code::InvalidArgument,
                Reason::InvalidNamespace,
            ),
            (
                body("default", "app", &[]),
                Code::InvalidArgument,
                Reason::InvalidInterface,
            ),
            (
                body("default", "a pp", &["a.B"]),
                Code::InvalidArgument,
                Reason::InvalidApplication,
            ),
            (
                vec![0, 0, 1, 0, 0],
                Code::ResourceExhausted,
                Reason::TooLarge,
            ),
            (
                vec![0u8; MAX + 1],
                Code::ResourceExhausted,
                Reason::TooLarge,
            ),
        ];
        for (b, code, reason) in cases {
            let r = reject(&b);
            assert_eq!((r.code, r.reason), (code, reason), "{b:?}: {}", r.message);
            assert!(!r.message.is_empty());
        }
    }

    #[test]
    fn invalid_utf8_is_reported_as_such() {
        let mut raw = RawServiceMappingRequest {
            namespace: b"default".to_vec(),
            application_name: vec![0xc3, 0x28],
            interface_names: vec![b"a.B".to_vec()],
        };
        let r = reject(&frame::encode(&raw.encode_to_vec()));
        assert_eq!(
            (r.code, r.reason),
            (Code::InvalidArgument, Reason::InvalidUtf8)
        );
        assert!(r.message.contains("applicationName"), "{}", r.message);
        raw.application_name = b"app".to_vec();
        raw.interface_names.push(vec![0xff]);
        let r = reject(&frame::encode(&raw.encode_to_vec()));
        assert_eq!(r.reason, Reason::InvalidUtf8);
    }

    #[test]
    fn messages_are_printable_ascii_even_when_quoting_input() {
        let r = reject(&body("ns\u{7}é", "app", &["a.B"]));
        assert_eq!(r.reason, Reason::InvalidNamespace);
        assert!(
            r.message.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{}",
            r.message
        );
        assert!(ascii_message(&"x".repeat(1000)).len() < 300);
        assert_eq!(ascii_message_within(&"x".repeat(1000), 4096).len(), 1000);
        assert_eq!(ascii_message_within("x\u{7}", 4096), "x\\u{7}");
    }

    fn with_protocol(h: &RequestHeaders, p: &[u8]) -> Result<(), (Code, Reason)> {
        let mut h = h.clone();
        h.protocol = Some(p.to_vec());
        check_headers(&h, MAX).map_err(|r| (r.code, r.reason))
    }

    #[test]
    fn headers_are_checked_before_buffering() {
        let ok = RequestHeaders {
            method: Some(b"POST".to_vec()),
            content_type: Some(b"application/grpc".to_vec()),
            grpc_encoding: None,
            content_length: None,
            protocol: Some(b"HTTP/2".to_vec()),
        };
        assert_eq!(check_headers(&ok, MAX), Ok(()));
        for p in [&b"HTTP/1.1"[..], b"HTTP/1.0"] {
            assert_eq!(
                with_protocol(&ok, p),
                Err((Code::Unimplemented, Reason::NotHttp2))
            );
        }
        let with = |f: &dyn Fn(&mut RequestHeaders)| {
            let mut h = ok.clone();
            f(&mut h);
            check_headers(&h, MAX).map_err(|r| (r.code, r.reason))
        };
        assert_eq!(
            with(&|h| h.content_type = Some(b"application/grpc+proto".to_vec())),
            Ok(())
        );
        assert_eq!(
            with(&|h| h.grpc_encoding = Some(b"identity".to_vec())),
            Ok(())
        );
        assert_eq!(
            with(&|h| h.grpc_encoding = Some(b"gzip".to_vec())),
            Err((Code::Unimplemented, Reason::Compressed))
        );
        assert_eq!(
            with(&|h| h.content_type = Some(b"application/grpc+json".to_vec())),
            Err((Code::Unimplemented, Reason::UnsupportedContentType))
        );
        assert_eq!(
            with(&|h| h.content_type = Some(b"application/json".to_vec())),
            Err((Code::Unimplemented, Reason::NotGrpc))
        );
        assert_eq!(
            with(&|h| h.method = Some(b"GET".to_vec())),
            Err((Code::Unimplemented, Reason::NotGrpc))
        );
        assert_eq!(
            with(&|h| h.content_length = Some(b"70000".to_vec())),
            Err((Code::ResourceExhausted, Reason::TooLarge))
        );
    }

    #[test]
    fn prefixes_reject_early() {
        assert_eq!(check_prefix(&[0, 0], 2, MAX), Ok(()));
        assert_eq!(check_prefix(&[0, 0, 0, 0, 9], 7, MAX), Ok(()));
        assert_eq!(
            check_prefix(&[1, 0, 0, 0, 9], 7, MAX).unwrap_err().reason,
            Reason::Compressed
        );
        assert_eq!(
            check_prefix(&[0, 0, 1, 0, 0], 7, MAX).unwrap_err().reason,
            Reason::TooLarge
        );
        assert_eq!(
            check_prefix(&[0, 0, 0, 0, 9], MAX + 1, MAX)
                .unwrap_err()
                .reason,
            Reason::TooLarge
        );
        assert_eq!(
            check_prefix(&[5, 0, 0, 0, 9], 7, MAX).unwrap_err().reason,
            Reason::InvalidFrameFlag
        );
    }

    fn arb_valid() -> impl Strategy<Value = Vec<u8>> {
        (
            "[a-z][a-z0-9-]{0,20}[a-z0-9]",
            "[A-Za-z][A-Za-z0-9_.-]{0,30}",
            proptest::collection::vec("[a-z]{1,8}(\\.[A-Z][A-Za-z0-9_$]{0,10}){1,3}", 1..5),
        )
            .prop_map(|(ns, app, ifaces)| {
                let refs: Vec<&str> = ifaces.iter().map(String::as_str).collect();
                body(&ns, &app, &refs)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Fuzz: arbitrary bytes never panic, and every rejection is a well-formed answer.
        #[test]
        fn random_bodies_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            match decode_body(&b, MAX, &Limits::default()) {
                Ok(r) => prop_assert!(!r.application.is_empty()),
                Err(r) => prop_assert!(!r.message.is_empty() && r.message.is_ascii()),
            }
        }

        /// Fuzz: a valid frame header in front of arbitrary bytes (the part prost sees).
        #[test]
        fn random_messages_never_panic(m in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_body(&frame::encode(&m), MAX, &Limits::default());
        }

        /// Fuzz: valid requests with one byte flipped, cut or appended.
        #[test]
        fn mutated_valid_bodies_never_panic(b in arb_valid(), at in any::<usize>(), byte in any::<u8>(), op in 0u8..3) {
            let mut b = b;
            let i = at % b.len();
            match op {
                0 => b[i] = byte,
                1 => b.truncate(i),
                _ => b.insert(i, byte),
            }
            let _ = decode_body(&b, MAX, &Limits::default());
            let _ = check_prefix(&b, b.len(), MAX);
        }

        #[test]
        fn valid_bodies_are_accepted(b in arb_valid()) {
            prop_assert!(decode_body(&b, MAX, &Limits::default()).is_ok());
        }
    }
}
