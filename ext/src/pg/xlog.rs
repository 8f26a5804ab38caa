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

/// Inserts a record of resource manager `id` and flushes WAL up to it,
/// then applies its change with `apply` (given the record's position),
/// before any checkpoint can complete past the record. Flushed first, so
/// nothing that reads the applied change (a map file written from it)
/// can outlive a crash that loses the record.
///
/// `critical`: the record and `apply` run in a critical section, so an
/// error in `apply` is a PANIC and crash recovery redoes the record (for
/// changes that must follow their record: `apply` must then allocate
/// nothing). Otherwise an error in `apply` leaves the record written and
/// the change not made (for changes whose absence is safe).
pub fn log_and_apply(
    id: u8,
    info: u8,
    payload: &[u8],
    critical: bool,
    apply: impl FnOnce(Lsn),
) -> Lsn {
    log_apply_settle(id, info, payload, critical, apply, |_| {})
}

/// [`log_and_apply`], then `settle` outside the critical section but
/// still before any checkpoint can complete past the record: for a change
/// in two parts whose second (which may take locks and free memory, but
/// raises no ERROR) must be redone with the first if a crash loses it.
pub fn log_apply_settle(
    id: u8,
    info: u8,
    payload: &[u8],
    critical: bool,
    apply: impl FnOnce(Lsn),
    settle: impl FnOnce(Lsn),
) -> Lsn {
    let _delay = DelayCheckpoint::start();
    // SAFETY: the standard XLogInsert protocol, from a backend's main
    // thread; the critical section is left on every path but a PANIC.
    let lsn = unsafe {
        if critical {
            pg_sys::CritSectionCount += 1;
        }
        pg_sys::XLogBeginInsert();
        pg_sys::XLogRegisterData(payload.as_ptr() as *mut _, payload.len() as u32);
        let lsn = Lsn(pg_sys::XLogInsert(id, info));
        pg_sys::XLogFlush(lsn.0);
        apply(lsn);
        if critical {
            pg_sys::CritSectionCount -= 1;
        }
        lsn
    };
    settle(lsn);
    drop(_delay);
    lsn
}

/// Holds checkpoints off from choosing a redo point past a record whose
/// change is not applied yet (`DELAY_CHKPT_START`, as PostgreSQL's own
/// "log, then apply" paths do); lets go when dropped, on errors too.
struct DelayCheckpoint;

impl DelayCheckpoint {
    fn start() -> DelayCheckpoint {
        // SAFETY: this backend's own PGPROC, which only it changes.
        unsafe { (*pg_sys::MyProc).delayChkptFlags |= pg_sys::DELAY_CHKPT_START as i32 };
        DelayCheckpoint
    }
}

impl Drop for DelayCheckpoint {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { (*pg_sys::MyProc).delayChkptFlags &= !(pg_sys::DELAY_CHKPT_START as i32) };
    }
}

/// A record's type bits, main data and position: its end, as the
/// primary's XLogInsert returns it, so that a retirement replayed from it
/// is at the same position as on the primary (a standby whose replay
/// stopped at the record's start has not replayed it).
///
/// # Safety
/// `record` is the reader state PostgreSQL passes to a redo or desc callback.
pub unsafe fn parts<'a>(record: *mut pg_sys::XLogReaderState) -> (u8, &'a [u8], Lsn) {
    let r = (*record).record;
    let info = (*r).header.xl_info & !XLR_INFO_MASK;
    let data = if (*r).main_data_len == 0 {
        &[][..]
    } else {
        std::slice::from_raw_parts((*r).main_data as *const u8, (*r).main_data_len as usize)
    };
    (info, data, Lsn((*record).EndRecPtr))
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
