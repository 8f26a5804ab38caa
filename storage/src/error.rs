//! The storage core's one error type. Variants are grouped by what an
//! operator does about them, which is what the extension maps to SQLSTATEs.
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object's bytes are not a valid yezzey object, or fail their
    /// checksum or authentication tag: never turned into data.
    #[error("corrupt object {name}: {detail}")]
    Corrupt { name: String, detail: String },

    /// The object was written with a key that is not configured.
    #[error("object {name} was encrypted with key id {key_id:08x}, which is not in the configured key ring")]
    UnknownKey { name: String, key_id: u32 },

    /// The object needs a key but none is configured.
    #[error("object {name} is encrypted but no encryption key is configured")]
    KeyRequired { name: String },

    /// A key file or key string is malformed.
    #[error("invalid encryption key: {0}")]
    BadKey(String),

    /// The object (or bucket) does not exist.
    #[error("object not found: {0}")]
    NotFound(String),

    /// The store refused our credentials or permissions.
    #[error("access denied by object store: {0}")]
    AccessDenied(String),

    /// The store did not answer in time (after retries).
    #[error("object store timed out: {0}")]
    Timeout(String),

    /// Any other failure talking to the store (network, 5xx after retries).
    #[error("object store error: {0}")]
    Store(String),

    /// Bad configuration (URL, options).
    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn corrupt(name: &str, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            name: name.to_string(),
            detail: detail.into(),
        }
    }

    pub fn io(path: impl AsRef<std::path::Path>, source: io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// True for failures that a retry may cure (used by the store clients).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Timeout(_) | Error::Store(_))
    }
}
