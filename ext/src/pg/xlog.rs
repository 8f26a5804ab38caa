//! The custom WAL resource manager's plumbing: registration, inserting a
//! record, and a record's parts in redo. What records mean is `wal.rs`.
use pgrx::pg_sys;
use yezzey_storage::key::Lsn;

/// Low bits of xl_info belong to the WAL machinery.
const XLR_INFO_MASK: u8 = 0x0F;

pub type Redo = unsafe extern "C-unwind" fn(*mut pg_sys::XLogReaderState);
pub type Desc = unsafe extern "C-unwind" fn(pg_sys::StringInfo, *mut pg_sys::XLogReaderState);
pub type Identify = unsafe extern "C-unwind" fn(u8) -> *const std::ffi::c_char;

/// Registers a resource manager (only while shared_preload_libraries load).
pub fn register(id: u8, name: &'static std::ffi::CStr, redo: Redo, desc: Desc, identify: Identify) {
    // PostgreSQL keeps the pointer for the life of the process.
    let rmgr: &'static pg_sys::RmgrData = Box::leak(Box::new(pg_sys::RmgrData {
        rm_name: name.as_ptr(),
        rm_redo: Some(redo),
        rm_desc: Some(desc),
        rm_identify: Some(identify),
        rm_startup: None,
        rm_cleanup: None,
        rm_mask: None,
        rm_decode: None,
    }));
    // SAFETY: called once from _PG_init in the postmaster.
    unsafe { pg_sys::RegisterCustomRmgr(id, rmgr) };
}

/// Inserts a record of resource manager `id` and flushes WAL up to it.
pub fn insert_flushed(id: u8, info: u8, payload: &[u8]) -> Lsn {
    // SAFETY: the standard XLogInsert protocol, from a backend's main thread.
    unsafe {
        pg_sys::XLogBeginInsert();
        pg_sys::XLogRegisterData(payload.as_ptr() as *mut _, payload.len() as u32);
        let lsn = pg_sys::XLogInsert(id, info);
        pg_sys::XLogFlush(lsn);
        Lsn(lsn)
    }
}

/// A record's type bits and main data.
///
/// # Safety
/// `record` is the reader state PostgreSQL passes to a redo or desc callback.
pub unsafe fn parts<'a>(record: *mut pg_sys::XLogReaderState) -> (u8, &'a [u8]) {
    let r = (*record).record;
    let info = (*r).header.xl_info & !XLR_INFO_MASK;
    let data = if (*r).main_data_len == 0 {
        &[][..]
    } else {
        std::slice::from_raw_parts((*r).main_data as *const u8, (*r).main_data_len as usize)
    };
    (info, data)
}

/// The type bits of an `xl_info`.
pub fn info_type(info: u8) -> u8 {
    info & !XLR_INFO_MASK
}

/// Appends text to a `pg_waldump`/redo description buffer.
///
/// # Safety
/// `buf` is the StringInfo PostgreSQL passes to a desc callback.
pub unsafe fn append(buf: pg_sys::StringInfo, text: &str) {
    let c = std::ffi::CString::new(text.replace('\0', "")).unwrap_or_default();
    pg_sys::appendStringInfoString(buf, c.as_ptr());
}
