//! yezzey's custom WAL resource manager: the switch of segments between
//! local and remote is WAL-logged, so crash recovery and streaming standbys
//! reach the same map (and punch the same holes) as the primary. Records are
//! small JSON documents, which also makes `pg_waldump` output readable.
//!
//! Redo is idempotent: it sets the map to the record's content and punches
//! holes that may already be punched; it never moves a map back to an
//! older offload (see `apply`).
use crate::apply;
use pgrx::pg_sys;
use serde::{Deserialize, Serialize};
use yezzey_storage::key::{Lsn, RelFork};
use yezzey_storage::state::map::ForkMap;

/// Custom resource manager id (128-255 are for extensions; see
/// https://wiki.postgresql.org/wiki/CustomWALResourceManagers). Not yet
/// registered there: change it here if it collides with another extension.
pub const RMGR_ID: u8 = 160;
const XLOG_YEZZEY_OFFLOAD: u8 = 0x10;
const XLOG_YEZZEY_FORGET: u8 = 0x20;
/// Low bits of xl_info belong to the WAL machinery.
const XLR_INFO_MASK: u8 = 0x0F;

/// A fork is local again: the offload made at `lsn` is undone (records
/// written before this field existed undo whatever offload is there).
#[derive(Debug, Serialize, Deserialize)]
struct Forget {
    #[serde(flatten)]
    key: RelFork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lsn: Option<Lsn>,
}

static mut RMGR: pg_sys::RmgrData = pg_sys::RmgrData {
    rm_name: c"yezzey".as_ptr(),
    rm_redo: Some(redo),
    rm_desc: Some(desc),
    rm_identify: Some(identify),
    rm_startup: None,
    rm_cleanup: None,
    rm_mask: None,
    rm_decode: None,
};

/// Registers the resource manager (only while shared_preload_libraries load).
pub fn register() {
    // SAFETY: called once from _PG_init in the postmaster; PostgreSQL keeps
    // the pointer, and the static lives for the process.
    unsafe { pg_sys::RegisterCustomRmgr(RMGR_ID, std::ptr::addr_of!(RMGR)) };
}

fn insert(info: u8, payload: &[u8]) -> Lsn {
    // SAFETY: the standard XLogInsert protocol, from a backend's main thread.
    unsafe {
        pg_sys::XLogBeginInsert();
        pg_sys::XLogRegisterData(payload.as_ptr() as *mut _, payload.len() as u32);
        let lsn = pg_sys::XLogInsert(RMGR_ID, info);
        pg_sys::XLogFlush(lsn);
        Lsn(lsn)
    }
}

/// Logs (and flushes) an offload; returns its LSN.
pub fn log_offload(m: &ForkMap) -> Lsn {
    insert(
        XLOG_YEZZEY_OFFLOAD,
        &serde_json::to_vec(m).expect("serialising a map"),
    )
}

/// Logs (and flushes) that the offload of `m` is undone: its fork is local again.
pub fn log_forget(m: &ForkMap) -> Lsn {
    insert(
        XLOG_YEZZEY_FORGET,
        &serde_json::to_vec(&Forget {
            key: m.key,
            lsn: Some(m.lsn),
        })
        .expect("serialising a record"),
    )
}

unsafe fn record_parts<'a>(record: *mut pg_sys::XLogReaderState) -> (u8, &'a [u8]) {
    let r = (*record).record;
    let info = (*r).header.xl_info & !XLR_INFO_MASK;
    let data = if (*r).main_data_len == 0 {
        &[][..]
    } else {
        std::slice::from_raw_parts((*r).main_data as *const u8, (*r).main_data_len as usize)
    };
    (info, data)
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn redo(record: *mut pg_sys::XLogReaderState) {
    let (info, data) = record_parts(record);
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
        crate::errors::error(
            pgrx::PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("yezzey redo failed: {e}"),
            "Check the data directory's pg_yezzey folder and free space; the record is replayed again at the next start.",
        );
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn desc(buf: pg_sys::StringInfo, record: *mut pg_sys::XLogReaderState) {
    let (_, data) = record_parts(record);
    let text =
        std::ffi::CString::new(String::from_utf8_lossy(data).replace('\0', "")).unwrap_or_default();
    pg_sys::appendStringInfoString(buf, text.as_ptr());
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn identify(info: u8) -> *const std::ffi::c_char {
    match info & !XLR_INFO_MASK {
        XLOG_YEZZEY_OFFLOAD => c"OFFLOAD".as_ptr(),
        XLOG_YEZZEY_FORGET => c"FORGET".as_ptr(),
        _ => std::ptr::null(),
    }
}
