//! The map of offloaded forks on this server: the shared map (what the I/O
//! path reads, and while the server runs the authority), the map files
//! that are its durable image, and the local files an offload frees.
//!
//! * [`shared`]: the shared map with yezzey's typed maps and keys;
//! * [`persist`]: bringing `pg_yezzey` in step with it: eagerly, best
//!   effort, after every change; strictly at every checkpoint, which fails
//!   while it cannot be done (and before garbage collection, best effort);
//! * [`load`]: the map files into the shared map, once per start, with
//!   damaged or missing files marked broken;
//! * [`evict`]: freeing the local copies of offloaded segments;
//! * [`repair`]: rebuilding a broken map from the objects in the store;
//! * [`holds`]: what of other members' objects this cluster still needs.
//!
//! What changes the map (the switches offload and forget, and their redo)
//! is in `wal.rs`; the storage manager's own changes (a first local write,
//! truncation, unlink) are made by the C shim and persisted here.
pub mod evict;
pub mod holds;
pub mod load;
pub mod persist;
pub mod repair;
pub mod shared;
