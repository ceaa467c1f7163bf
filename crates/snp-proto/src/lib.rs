//! Wire types of the service-name-mapping APIs and sans-io gRPC message framing.
//!
//! * [`dubbo`]: flavour A, the seed server's `dubbo.networking.v1alpha1` API.
//! * [`admin`]: flavour B, dubbo-admin's `v1alpha1` API (same request, richer response).
//! * [`api`]: the project's own `snp.v1.MappingService` (batches, lookups, watches).
//! * [`frame`]: the 5-byte gRPC length-prefixed framing, for code that sees raw bodies
//!   (the proxy-wasm filter) rather than a gRPC library.
//!
//! This crate builds for `wasm32-wasip1` without tonic; the `tonic` feature adds the
//! generated clients and servers for native code.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod frame;
pub mod path;
mod raw;

pub use raw::RawServiceMappingRequest;

/// Flavour A: `dubbo.networking.v1alpha1`, as registered by grpc-java Dubbo clients.
pub mod dubbo {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/dubbo.networking.v1alpha1.rs"));
}

/// Flavour B: dubbo-admin's `v1alpha1`.
pub mod admin {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/v1alpha1.rs"));
}

/// The project's own API: `snp.v1.MappingService`.
pub mod api {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/snp.v1.rs"));
}

/// gRPC path of flavour A's registration method.
pub const PATH_FLAVOUR_A: &str =
    "/dubbo.networking.v1alpha1.ServiceNameMappingService/registerServiceAppMapping";
/// gRPC path of flavour B's registration method.
pub const PATH_FLAVOUR_B: &str = "/v1alpha1.ServiceNameMappingService/registerServiceAppMapping";
/// gRPC path of the shim's batch method, used by the filter's callouts.
pub const PATH_PUSH_MAPPINGS: &str = "/snp.v1.MappingService/PushMappings";

/// Which registration API a call speaks. The request bytes are identical; only the
/// response differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// `dubbo.networking.v1alpha1`: empty response message.
    Dubbo,
    /// dubbo-admin `v1alpha1`: `{success: true, message: "success"}`.
    Admin,
}

impl Flavour {
    /// The flavour served at a gRPC `:path`, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            PATH_FLAVOUR_A => Some(Self::Dubbo),
            PATH_FLAVOUR_B => Some(Self::Admin),
            _ => None,
        }
    }

    /// The gRPC `:path` of this flavour's registration method.
    pub fn path(self) -> &'static str {
        match self {
            Self::Dubbo => PATH_FLAVOUR_A,
            Self::Admin => PATH_FLAVOUR_B,
        }
    }

    /// The protobuf bytes (unframed) of a successful response.
    pub fn ok_response(self) -> Vec<u8> {
        use prost::Message;
        match self {
            Self::Dubbo => dubbo::ServiceMappingResponse {}.encode_to_vec(),
            Self::Admin => admin::ServiceMappingResponse {
                success: true,
                message: "success".to_owned(),
            }
            .encode_to_vec(),
        }
    }

    /// A successful response as a complete gRPC message frame.
    pub fn ok_response_frame(self) -> Vec<u8> {
        frame::encode(&self.ok_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavours_round_trip_their_paths() {
        for f in [Flavour::Dubbo, Flavour::Admin] {
            assert_eq!(Flavour::from_path(f.path()), Some(f));
        }
        assert_eq!(Flavour::from_path("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn ok_responses_match_the_known_bytes() {
        assert_eq!(Flavour::Dubbo.ok_response_frame(), vec![0, 0, 0, 0, 0]);
        // field 1 varint 1; field 2 len 7 "success"
        let mut b = vec![0, 0, 0, 0, 11, 0x08, 0x01, 0x12, 0x07];
        b.extend_from_slice(b"success");
        assert_eq!(Flavour::Admin.ok_response_frame(), b);
    }
}
