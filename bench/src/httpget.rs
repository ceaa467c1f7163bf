//! A minimal HTTP/1.1 GET over plain TCP, for `/metrics`, `/stats` and `/ready` on
//! loopback (no TLS, no redirects). Handles `Content-Length`, chunked and read-to-close
//! bodies.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET http://{authority}{path}`: the status and the body as text.
pub async fn get(authority: &str, path: &str) -> Result<(u16, String)> {
    let fut = async {
        let mut s = TcpStream::connect(authority)
            .await
            .with_context(|| format!("connect {authority}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        parse_response(&buf)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .with_context(|| format!("GET {authority}{path} timed out"))?
}

/// `get`, but only a 200's body; anything else is an error.
pub async fn get_ok(authority: &str, path: &str) -> Result<String> {
    let (status, body) = get(authority, path).await?;
    if status != 200 {
        bail!("GET {authority}{path}: HTTP {status}: {}", body.trim());
    }
    Ok(body)
}

/// Parses a complete HTTP/1.1 response.
pub fn parse_response(buf: &[u8]) -> Result<(u16, String)> {
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = std::str::from_utf8(&buf[..head_end]).context("headers are not UTF-8")?;
    let body = &buf[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("no status line")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .context("no status code")?
        .parse()
        .context("bad status code")?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = v.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        body.get(..n)
            .context("body shorter than Content-Length")?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = std::str::from_utf8(&b[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).context("truncated chunk")?);
        b = b.get(size + 2..).context("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_close_delimited_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!(r, (200, "hello".to_owned()));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r, (200, "hello, world".to_owned()));
        let r =
            parse_response(b"HTTP/1.0 503 Service Unavailable\r\n\r\nPRE_INITIALIZING").unwrap();
        assert_eq!(r, (503, "PRE_INITIALIZING".to_owned()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
