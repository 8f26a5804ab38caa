//! Object stores: one async trait, an S3 backend (AWS S3, MinIO, Ceph,
//! Garage) and a local-directory backend (the embedded default for a single
//! machine, and the reference for tests of the format).
//!
//! Keys passed to a store are *relative* names; the store adds its prefix.
//!
//! **Bounded per process.** [`AnyStore`] lets at most `max_connections`
//! requests run at once (a semaphore around every operation), and the S3
//! client keeps at most that many idle connections. So a process never holds
//! more than a fixed number of sockets (or, for the directory backend, open
//! files) however many reads are queued: readahead and PostgreSQL's
//! prefetching (recovery prefetch issues one per WAL block reference) wait
//! for a slot instead of opening a connection each. [`AnyStore::max_fds`]
//! says how many descriptors that is, for the caller's accounting.
use crate::error::{Error, Result};
use bytes::Bytes;
use std::future::Future;
use std::ops::Range;
use std::time::Duration;
use tokio::sync::Semaphore;

pub mod local;
pub mod s3;

pub use local::LocalStore;
pub use s3::S3Store;

/// What a listing or HEAD returns about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Relative name (without the store's prefix).
    pub name: String,
    pub size: u64,
}

/// An in-progress multipart upload.
#[derive(Debug, Clone)]
pub struct Multipart {
    pub name: String,
    pub upload_id: String,
}

/// A finished part of a multipart upload.
#[derive(Debug, Clone)]
pub struct Part {
    pub number: i32,
    pub etag: String,
}

/// The operations yezzey needs from an object store. Every method is
/// bounded in time (timeouts and a bounded number of retries).
pub trait ObjectStore: Send + Sync {
    fn put(&self, name: &str, body: Bytes) -> impl Future<Output = Result<()>> + Send;
    fn get_range(
        &self,
        name: &str,
        range: Range<u64>,
    ) -> impl Future<Output = Result<Bytes>> + Send;
    /// The last `n` bytes (all of them if the object is shorter) and the object's length.
    fn get_suffix(&self, name: &str, n: u64) -> impl Future<Output = Result<(Bytes, u64)>> + Send;
    fn head(&self, name: &str) -> impl Future<Output = Result<ObjectMeta>> + Send;
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<ObjectMeta>>> + Send;
    /// Deleting a missing object succeeds.
    fn delete(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    fn create_multipart(&self, name: &str) -> impl Future<Output = Result<Multipart>> + Send;
    fn upload_part(
        &self,
        mp: &Multipart,
        number: i32,
        body: Bytes,
    ) -> impl Future<Output = Result<Part>> + Send;
    fn complete_multipart(
        &self,
        mp: &Multipart,
        parts: Vec<Part>,
    ) -> impl Future<Output = Result<()>> + Send;
    fn abort_multipart(&self, mp: &Multipart) -> impl Future<Output = Result<()>> + Send;
}

/// Where objects go, parsed from a storage URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `s3://bucket/prefix`
    S3 { bucket: String, prefix: String },
    /// `file:///dir` or an absolute path.
    Local { root: std::path::PathBuf },
}

impl Location {
    pub fn parse(url: &str) -> Result<Location> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Config(format!(
                    "{url:?}: missing bucket name (s3://bucket/prefix)"
                )));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if path.starts_with('/') {
            return Ok(Location::Local { root: path.into() });
        }
        Err(Error::Config(format!(
            "{url:?} is not a storage URL (use s3://bucket/prefix or an absolute directory path)"
        )))
    }
}

/// Connection settings for S3-compatible stores.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// e.g. `http://127.0.0.1:3900`; `None` means AWS's regional endpoint.
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    /// Explicit credentials; `None` reads the standard AWS environment
    /// variables, then the shared profile files (never instance metadata).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub connect_timeout: Duration,
    /// Per attempt; the whole operation gets `max_attempts` times this.
    pub request_timeout: Duration,
    pub max_attempts: u32,
    /// Requests in flight at once, and idle connections kept (per process;
    /// for the directory backend, files open at once).
    pub max_connections: usize,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: None,
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: None,
            secret_access_key: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_attempts: 3,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Requests a process runs at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;

/// Either backend, chosen at run time from a [`Location`], behind the
/// per-process request limit.
pub struct AnyStore {
    backend: Backend,
    slots: Semaphore,
    max_connections: usize,
}

enum Backend {
    S3(S3Store),
    Local(LocalStore),
}

impl AnyStore {
    pub fn open(location: &Location, s3: &S3Settings) -> Result<AnyStore> {
        let max = s3.max_connections.max(1);
        let backend = match location {
            Location::S3 { bucket, prefix } => Backend::S3(S3Store::new(bucket, prefix, s3)?),
            Location::Local { root } => Backend::Local(LocalStore::new(root)?),
        };
        Ok(AnyStore {
            backend,
            slots: Semaphore::new(max),
            max_connections: max,
        })
    }

    /// A directory store (tests and tools), with the default request limit.
    pub fn local(root: &std::path::Path) -> Result<AnyStore> {
        Self::open(
            &Location::Local { root: root.into() },
            &S3Settings::default(),
        )
    }

    /// A human-readable description for messages.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::S3(s) => s.describe(),
            Backend::Local(l) => l.describe(),
        }
    }

    /// Requests this store runs at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The most file descriptors this store holds at once: each request in
    /// flight holds one (a socket or a file); the S3 client keeps up to as
    /// many idle connections; and a request that found an idle connection
    /// may leave a connection attempt of its own to finish in the background.
    pub fn max_fds(&self) -> usize {
        match &self.backend {
            Backend::S3(_) => 3 * self.max_connections,
            // A request opens a file or two (publishing fsyncs the directory).
            Backend::Local(_) => 2 * self.max_connections,
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {{
        // Never fails: the semaphore is not closed.
        let _slot = $self
            .slots
            .acquire()
            .await
            .expect("store slots are never closed");
        match &$self.backend {
            Backend::S3($s) => $e.await,
            Backend::Local($s) => $e.await,
        }
    }};
}

impl ObjectStore for AnyStore {
    async fn put(&self, name: &str, body: Bytes) -> Result<()> {
        dispatch!(self, s => s.put(name, body))
    }
    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        dispatch!(self, s => s.get_range(name, range))
    }
    async fn get_suffix(&self, name: &str, n: u64) -> Result<(Bytes, u64)> {
        dispatch!(self, s => s.get_suffix(name, n))
    }
    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        dispatch!(self, s => s.head(name))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        dispatch!(self, s => s.list(prefix))
    }
    async fn delete(&self, name: &str) -> Result<()> {
        dispatch!(self, s => s.delete(name))
    }
    async fn create_multipart(&self, name: &str) -> Result<Multipart> {
        dispatch!(self, s => s.create_multipart(name))
    }
    async fn upload_part(&self, mp: &Multipart, number: i32, body: Bytes) -> Result<Part> {
        dispatch!(self, s => s.upload_part(mp, number, body))
    }
    async fn complete_multipart(&self, mp: &Multipart, parts: Vec<Part>) -> Result<()> {
        dispatch!(self, s => s.complete_multipart(mp, parts))
    }
    async fn abort_multipart(&self, mp: &Multipart) -> Result<()> {
        dispatch!(self, s => s.abort_multipart(mp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_locations() {
        assert_eq!(
            Location::parse("s3://b/p/q/").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        assert_eq!(
            Location::parse("s3://b").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Location::parse("file:///x/y").unwrap(),
            Location::Local {
                root: "/x/y".into()
            }
        );
        assert!(Location::parse("s3:///p").is_err());
        assert!(Location::parse("relative/dir").is_err());
    }
}
