//! Unary gRPC calls with pre-encoded message bytes (tonic does the framing and HTTP/2),
//! so the load generator spends its CPU on sending, not on encoding.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// gRPC path of `snp.v1.MappingService/GetMappings` (the "other traffic" of figure 2).
pub const PATH_GET_MAPPINGS: &str = "/snp.v1.MappingService/GetMappings";

/// Passes message bytes through in both directions.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One HTTP/2 connection to `addr` (`host:port`), established now.
pub async fn connect(addr: &str) -> Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("bad address {addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connect to {addr}"))
}

/// One unary call of `path` with `body` as the message; the response message bytes.
pub async fn unary(ch: &Channel, path: &'static str, body: Bytes) -> Result<Bytes, Status> {
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    g.unary(
        Request::new(body),
        PathAndQuery::from_static(path),
        BytesCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}
