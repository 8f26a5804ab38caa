//! yezzey's storage core: everything that talks to object storage, with no
//! PostgreSQL dependency, so it is unit-tested and benchmarked on its own and
//! shared by the extension and `yezzey-tool`.
//!
//! * [`format`]: the versioned segment object format (frames, index, trailer).
//! * [`crypto`], [`keys`]: AES-256-GCM and the key ring.
//! * [`layers`]: which object (base or layer) serves a block of a segment.
//! * [`key`]: typed keys (relation fork, LSN, lineage member, object id).
//! * [`names`]: object names (Greenplum-ready).
//! * [`store`]: the object-store trait, S3 and local-directory backends.
//! * [`cache`]: the on-disk frame cache shared by many processes.
//! * [`reader`]: block reads of remote segments through cache and readahead.
//! * [`upload`]: streaming, parallel encoding and (multipart) upload of a file.
//! * [`runtime`]: the lazily created, fork-aware I/O runtime.
//! * [`state`]: the durable per-server state (maps, intents, retired
//!   objects, lineage identity and records) and the garbage-collection
//!   decision.
//!
//! Process model: PostgreSQL backends are processes forked from the
//! postmaster, so nothing here starts a thread before it is first used, and
//! the runtime notices when it finds itself in a forked child (see
//! [`runtime`]).
pub mod cache;
pub mod crypto;
pub mod error;
pub mod format;
pub mod key;
pub mod keys;
pub mod layers;
pub mod names;
pub mod reader;
pub mod runtime;
pub mod state;
pub mod store;
pub mod upload;

pub use error::{Error, Result};
