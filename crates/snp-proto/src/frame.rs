//! gRPC length-prefixed message framing, sans-io.
//!
//! A gRPC message on the wire is a 1-byte compressed flag, a 4-byte big-endian length and
//! the message. A unary request body holds exactly one such frame. Each way a body can be
//! wrong has its own error, so a caller can answer with a precise status.

use thiserror::Error;

/// Length of the frame header: flag byte plus 4-byte length.
pub const HEADER_LEN: usize = 5;

/// Why a body is not exactly one acceptable uncompressed frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Fewer bytes than the header announces (or than a header).
    #[error("truncated gRPC frame: expected {expected} bytes, got {actual}")]
    Truncated {
        /// Bytes the header promised, header included.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The compressed flag is set; this endpoint accepts identity encoding only.
    #[error("compressed gRPC messages are not supported")]
    Compressed,
    /// The flag byte is neither 0 nor 1.
    #[error("invalid gRPC frame flag {0:#04x}")]
    InvalidFlag(u8),
    /// The announced message length exceeds the limit.
    #[error("gRPC message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// Bytes follow the single message of a unary call.
    #[error("{extra} unexpected bytes after the gRPC message")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The compressed flag.
    pub compressed: bool,
    /// The message length.
    pub len: usize,
}

impl Header {
    /// Parses the header at the start of `buf`, if all 5 bytes are there. Lets a caller
    /// that buffers a body reject an oversized or compressed message before it has it all.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, FrameError> {
        let Some(h) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let compressed = match h[0] {
            0 => false,
            1 => true,
            other => return Err(FrameError::InvalidFlag(other)),
        };
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        Ok(Some(Self { compressed, len }))
    }
}

/// Returns the message of a body that must be exactly one uncompressed frame whose
/// message is at most `max_len` bytes.
pub fn decode(buf: &[u8], max_len: usize) -> Result<&[u8], FrameError> {
    let header = Header::parse(buf)?.ok_or(FrameError::Truncated {
        expected: HEADER_LEN,
        actual: buf.len(),
    })?;
    if header.compressed {
        return Err(FrameError::Compressed);
    }
    if header.len > max_len {
        return Err(FrameError::TooLarge {
            len: header.len,
            max: max_len,
        });
    }
    let end = HEADER_LEN + header.len;
    match buf.len() {
        n if n < end => Err(FrameError::Truncated {
            expected: end,
            actual: n,
        }),
        n if n > end => Err(FrameError::TrailingBytes { extra: n - end }),
        _ => Ok(&buf[HEADER_LEN..end]),
    }
}

/// Frames `msg` as one uncompressed gRPC message.
pub fn encode(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + msg.len());
    out.push(0);
    // A message over 4 GiB cannot be framed; callers never build one (their inputs are
    // bounded far below that), so saturating keeps this total without a panic path.
    out.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_defect_has_its_own_error() {
        assert_eq!(
            decode(&[0, 0, 0], 10),
            Err(FrameError::Truncated {
                expected: 5,
                actual: 3
            })
        );
        assert_eq!(decode(&[1, 0, 0, 0, 1, 7], 10), Err(FrameError::Compressed));
        assert_eq!(
            decode(&[9, 0, 0, 0, 0], 10),
            Err(FrameError::InvalidFlag(9))
        );
        assert_eq!(
            decode(&[0, 0, 0, 0, 20], 10),
            Err(FrameError::TooLarge { len: 20, max: 10 })
        );
        assert_eq!(
            decode(&[0, 0, 0, 0, 2, 1], 10),
            Err(FrameError::Truncated {
                expected: 7,
                actual: 6
            })
        );
        assert_eq!(
            decode(&[0, 0, 0, 0, 1, 1, 2, 3], 10),
            Err(FrameError::TrailingBytes { extra: 2 })
        );
        assert_eq!(decode(&[0, 0, 0, 0, 0], 10), Ok(&[][..]));
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(msg in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let framed = encode(&msg);
            prop_assert_eq!(decode(&framed, msg.len()), Ok(&msg[..]));
        }

        #[test]
        fn decode_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..64) {
            let _ = decode(&buf, max);
        }
    }
}
