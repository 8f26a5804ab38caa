//! yezzey's custom WAL resource manager: the switch of segments between
//! local and remote is WAL-logged, so crash recovery and streaming standbys
//! reach the same map (and punch the same holes) as the primary. Records are
//! small JSON documents, which also makes `pg_waldump` output readable.
//!
//! Redo is idempotent: it sets the map to the record's content and punches
//! holes that may already be punched; it never moves a map back to an
//! older offload (see `apply`). The callbacks PostgreSQL calls are in
//! `ffi.rs`; they land in [`redo`], [`describe`] and [`identify`].
use crate::{apply, errors, pg};
use serde::{Deserialize, Serialize};
use yezzey_storage::key::{Lsn, RelFork};
use yezzey_storage::state::map::ForkMap;

/// Custom resource manager id (128-255 are for extensions; see
/// https://wiki.postgresql.org/wiki/CustomWALResourceManagers). Not yet
/// registered there: change it here if it collides with another extension.
pub const RMGR_ID: u8 = 160;
const XLOG_YEZZEY_OFFLOAD: u8 = 0x10;
const XLOG_YEZZEY_FORGET: u8 = 0x20;

/// A fork is local again: the offload made at `lsn` is undone (records
/// written before this field existed undo whatever offload is there).
#[derive(Debug, Serialize, Deserialize)]
struct Forget {
    #[serde(flatten)]
    key: RelFork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lsn: Option<Lsn>,
}

/// Logs (and flushes) an offload; returns its LSN.
pub fn log_offload(m: &ForkMap) -> Lsn {
    let payload = serde_json::to_vec(m).expect("serialising a map");
    pg::xlog::insert_flushed(RMGR_ID, XLOG_YEZZEY_OFFLOAD, &payload)
}

/// Logs (and flushes) that the offload of `m` is undone: its fork is local again.
pub fn log_forget(m: &ForkMap) -> Lsn {
    let f = Forget {
        key: m.key,
        lsn: Some(m.lsn),
    };
    let payload = serde_json::to_vec(&f).expect("serialising a record");
    pg::xlog::insert_flushed(RMGR_ID, XLOG_YEZZEY_FORGET, &payload)
}

/// Replays a record.
pub fn redo(info: u8, data: &[u8]) {
    let result = match info {
        XLOG_YEZZEY_OFFLOAD => serde_json::from_slice::<ForkMap>(data)
            .map_err(|e| e.to_string())
            .and_then(|m| apply::offload(&m).map_err(|e| e.to_string())),
        XLOG_YEZZEY_FORGET => serde_json::from_slice::<Forget>(data)
            .map_err(|e| e.to_string())
            .and_then(|f| apply::forget(f.key, f.lsn).map_err(|e| e.to_string())),
        other => Err(format!("unknown record type {other:#x}")),
    };
    if let Err(e) = result {
        errors::error(
            pgrx::PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("yezzey redo failed: {e}"),
            "Check the data directory's pg_yezzey folder and free space; the record is replayed again at the next start.",
        );
    }
}

/// A record as `pg_waldump` shows it: its JSON.
pub fn describe(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// A record type's name.
pub fn identify(info: u8) -> Option<&'static std::ffi::CStr> {
    match pg::xlog::info_type(info) {
        XLOG_YEZZEY_OFFLOAD => Some(c"OFFLOAD"),
        XLOG_YEZZEY_FORGET => Some(c"FORGET"),
        _ => None,
    }
}
