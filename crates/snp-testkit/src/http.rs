//! An HTTP/1.1 client for tests and benchmarks on loopback: hyper's, one connection per
//! request, a deadline on the whole exchange.

use std::fmt::Display;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::prom::Metrics;

/// Longest a request may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// `GET http://{authority}{path}`: the status and the body as text.
pub async fn get(authority: impl Display, path: &str) -> Result<(u16, String)> {
    let uri: hyper::Uri = format!("http://{authority}{path}")
        .parse()
        .with_context(|| format!("bad URI http://{authority}{path}"))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let exchange = async {
        let resp = client.get(uri.clone()).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .with_context(|| format!("GET {uri} timed out after {TIMEOUT:?}"))?
        .with_context(|| format!("GET {uri}"))
}

/// [`get`], but only a 200's body; any other status is an error.
pub async fn get_ok(authority: impl Display, path: &str) -> Result<String> {
    let (status, body) = get(&authority, path).await?;
    if status != 200 {
        bail!("GET {authority}{path}: HTTP {status}: {}", body.trim());
    }
    Ok(body)
}

/// `GET /metrics` of `authority`, parsed.
pub async fn metrics(authority: impl Display) -> Result<Metrics> {
    let text = get_ok(authority, "/metrics").await?;
    Ok(Metrics::parse(&text)?)
}
