//! The registration request with its string fields kept as bytes.
//!
//! prost rejects a `string` field holding invalid UTF-8 with the same error as a body that
//! is not protobuf at all. Decoding the strings as bytes first lets validation tell
//! "not protobuf" from "invalid UTF-8 in field X", so callers get a precise error.

use prost::Message;

/// `ServiceMappingRequest` of either flavour, strings undecoded.
#[derive(Clone, PartialEq, Message)]
pub struct RawServiceMappingRequest {
    /// Field 1 `namespace`.
    #[prost(bytes = "vec", tag = "1")]
    pub namespace: Vec<u8>,
    /// Field 2 `applicationName`.
    #[prost(bytes = "vec", tag = "2")]
    pub application_name: Vec<u8>,
    /// Field 3 `interfaceNames`.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub interface_names: Vec<Vec<u8>>,
}

impl RawServiceMappingRequest {
    /// Decodes an unframed protobuf message.
    pub fn decode_bytes(buf: &[u8]) -> Result<Self, prost::DecodeError> {
        Self::decode(buf)
    }
}
