//! Defining settings whose every assignment bumps an epoch: the storage
//! handle compares its settings again only after the epoch moved, not on
//! every remote read.
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_guard;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bumped by every assignment of a storage setting, so that `storage()`
/// compares the settings only after something may have changed rather than
/// on every remote read.
static SETTINGS_EPOCH: AtomicU64 = AtomicU64::new(1);

#[pg_guard]
unsafe extern "C-unwind" fn string_assigned(_new: *const c_char, _extra: *mut c_void) {
    SETTINGS_EPOCH.fetch_add(1, Ordering::Relaxed);
}

#[pg_guard]
unsafe extern "C-unwind" fn int_assigned(_new: i32, _extra: *mut c_void) {
    SETTINGS_EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// A SIGHUP string setting that decides how this process reaches the store.
pub fn string_sighup(
    name: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    setting: &'static GucSetting<Option<CString>>,
    flags: GucFlags,
) {
    // SAFETY: the hook only bumps an atomic counter.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            name,
            short,
            long,
            setting,
            GucContext::Sighup,
            flags,
            None,
            Some(string_assigned),
            None,
        )
    }
}

/// A SIGHUP integer setting that decides how this process reaches the store.
pub fn int_sighup(
    name: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    setting: &'static GucSetting<i32>,
    min: i32,
    max: i32,
    flags: GucFlags,
) {
    // SAFETY: the hook only bumps an atomic counter.
    unsafe {
        GucRegistry::define_int_guc_with_hooks(
            name,
            short,
            long,
            setting,
            min,
            max,
            GucContext::Sighup,
            flags,
            None,
            Some(int_assigned),
            None,
        )
    }
}

/// Moves whenever a setting defined here is assigned (a reload).
pub fn epoch() -> u64 {
    SETTINGS_EPOCH.load(Ordering::Relaxed)
}
