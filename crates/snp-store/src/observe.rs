//! What a store reports about its own requests, for the host's metrics.
//!
//! The store crate does not pick a metrics library: the shim implements [`Observer`] on
//! its Prometheus metrics, tests and tools pass `()`.

/// Store request verb.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Verb {
    /// Read of one object.
    Get,
    /// List (cache sync, probe).
    List,
    /// New object.
    Create,
    /// Replace with resourceVersion (union update).
    Update,
}

impl Verb {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Create => "create",
            Self::Update => "update",
        }
    }
}

#[cfg(feature = "prometheus")]
impl prometheus_client::encoding::EncodeLabelValue for Verb {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// How one store request ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RequestResult {
    /// Done.
    Ok,
    /// Refused by the backend for good (4xx other than 409 and 429).
    Rejected,
    /// Failed in a way a retry may fix (no answer, 5xx, 429, local I/O).
    Failed,
}

/// Receives counts from a store. Every method defaults to doing nothing.
pub trait Observer: Send + Sync + 'static {
    /// One request to the backend ended.
    fn request(&self, verb: Verb, result: RequestResult) {
        let _ = (verb, result);
    }
    /// One 409 Conflict (or AlreadyExists) was met and resolved by re-reading.
    fn conflict(&self) {}
    /// `n` keys needed no write because the store already held them.
    fn noop_skips(&self, n: u64) {
        let _ = n;
    }
}

/// Observes nothing.
impl Observer for () {}
