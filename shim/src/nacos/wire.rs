//! Payload envelopes: JSON bodies in, JSON bodies out.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::proto::{Metadata, Payload};

/// The type name of a payload ("" without metadata).
pub fn kind(payload: &Payload) -> &str {
    payload.metadata.as_ref().map_or("", |m| m.r#type.as_str())
}

/// The JSON body of a payload.
pub fn body(payload: &Payload) -> &[u8] {
    payload
        .body
        .as_ref()
        .map_or(&[][..], |b| b.value.as_slice())
}

/// Decodes the body of `payload` as `T`.
pub fn decode<T: DeserializeOwned>(payload: &Payload) -> Result<T, serde_json::Error> {
    let body = body(payload);
    if body.is_empty() {
        return serde_json::from_slice(b"{}");
    }
    serde_json::from_slice(body)
}

/// A payload of type `kind` carrying `body` as JSON (empty `type_url`, as Nacos sends).
pub fn payload<T: Serialize>(kind: &str, body: &T) -> Payload {
    // Serialising these plain structs cannot fail; an empty object is the fallback anyway.
    let value = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    Payload {
        metadata: Some(Metadata {
            r#type: kind.to_owned(),
            headers: Default::default(),
            client_ip: String::new(),
        }),
        body: Some(prost_types::Any {
            type_url: String::new(),
            value,
        }),
    }
}
