//! The `yezzey.*` GUCs and the per-process storage handle built from them.
//!
//! Storage settings are SIGHUP-level: every process that may read offloaded
//! blocks (backends, the startup process replaying WAL on a standby, the
//! checkpointer) must see the same values, so they belong in
//! postgresql.conf rather than in one session.
use crate::errors;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_guard;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use yezzey_storage::cache::FrameCache;
use yezzey_storage::crypto::CipherImpl;
use yezzey_storage::format::FormatOptions;
use yezzey_storage::keys::KeyRing;
use yezzey_storage::reader::{ReadaheadConfig, RemoteReader};
use yezzey_storage::store::{AnyStore, Location, S3Settings};
use yezzey_storage::upload::UploadOptions;

pub static STORAGE_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static S3_ENDPOINT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static S3_REGION: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"us-east-1"));
pub static S3_ACCESS_KEY_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static S3_SECRET_ACCESS_KEY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static CACHE_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static CACHE_SIZE_MB: GucSetting<i32> = GucSetting::<i32>::new(1024);
pub static READAHEAD_KB: GucSetting<i32> = GucSetting::<i32>::new(8192);
pub static TIMEOUT_S: GucSetting<i32> = GucSetting::<i32>::new(30);
pub static FRAME_KB: GucSetting<i32> = GucSetting::<i32>::new(1024);
pub static ZSTD_LEVEL: GucSetting<i32> = GucSetting::<i32>::new(1);
pub static CONTENT_ID: GucSetting<i32> = GucSetting::<i32>::new(-1);
pub static GC_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);
pub static FAULT_INJECTION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

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
fn string_guc(
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
fn int_guc(
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

pub fn define() {
    string_guc(
        c"yezzey.storage_url",
        c"Where offloaded objects go: s3://bucket/prefix, or an absolute directory.",
        c"Empty disables offloading. Every server sharing objects (standbys, restored backups) must use the same URL.",
        &STORAGE_URL,
        GucFlags::default(),
    );
    string_guc(
        c"yezzey.s3_endpoint",
        c"S3 endpoint URL, e.g. http://127.0.0.1:3900; empty means AWS.",
        c"",
        &S3_ENDPOINT,
        GucFlags::default(),
    );
    string_guc(
        c"yezzey.s3_region",
        c"S3 region.",
        c"",
        &S3_REGION,
        GucFlags::default(),
    );
    string_guc(
        c"yezzey.s3_access_key_id",
        c"S3 access key id; empty reads AWS_ACCESS_KEY_ID or the AWS profile.",
        c"",
        &S3_ACCESS_KEY_ID,
        GucFlags::SUPERUSER_ONLY,
    );
    string_guc(
        c"yezzey.s3_secret_access_key",
        c"S3 secret access key; empty reads AWS_SECRET_ACCESS_KEY or the AWS profile.",
        c"",
        &S3_SECRET_ACCESS_KEY,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    string_guc(
        c"yezzey.key_file",
        c"File of 256-bit encryption keys (hex, one per line, first is current); empty stores objects unencrypted.",
        c"",
        &KEY_FILE,
        GucFlags::SUPERUSER_ONLY,
    );
    string_guc(
        c"yezzey.cache_dir",
        c"Directory of the local cache of decoded frames; default $PGDATA/pg_yezzey/pgsql_tmp_cache.",
        c"",
        &CACHE_DIR,
        GucFlags::default(),
    );
    int_guc(
        c"yezzey.cache_size",
        c"Size limit of the local frame cache; 0 disables it.",
        c"",
        &CACHE_SIZE_MB,
        0,
        i32::MAX,
        GucFlags::UNIT_MB,
    );
    int_guc(
        c"yezzey.readahead",
        c"How much of a sequentially read object is fetched ahead; 0 disables readahead.",
        c"",
        &READAHEAD_KB,
        0,
        1 << 20,
        GucFlags::UNIT_KB,
    );
    int_guc(
        c"yezzey.timeout",
        c"Timeout of one request to the object store (requests are tried up to 3 times).",
        c"",
        &TIMEOUT_S,
        1,
        3600,
        GucFlags::UNIT_S,
    );
    int_guc(
        c"yezzey.frame_size",
        c"Raw size of the independently readable frames of new objects.",
        c"Must be a multiple of 8kB.",
        &FRAME_KB,
        8,
        65536,
        GucFlags::UNIT_KB,
    );
    int_guc(
        c"yezzey.zstd_level",
        c"zstd level of new objects; 0 stores frames uncompressed.",
        c"",
        &ZSTD_LEVEL,
        0,
        22,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"yezzey.content_id",
        c"Greenplum segment content id used in object names; -1 for PostgreSQL.",
        c"",
        &CONTENT_ID,
        -1,
        65535,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"yezzey.gc_retention",
        c"How long yezzey_gc() keeps an object after the last reference to it was dropped.",
        c"Covers base backups and point-in-time recovery targets from before the drop; set it to your backup retention.",
        &GC_RETENTION_S,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"yezzey.fault_injection",
        c"Testing only: the name of an offload/load step at which to crash the server.",
        c"",
        &FAULT_INJECTION,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL,
    );
}

fn string(s: &GucSetting<Option<CString>>) -> Option<String> {
    s.get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

/// Everything that decides how this process talks to the store.
#[derive(Debug, Clone, PartialEq)]
struct Config {
    url: Option<String>,
    endpoint: Option<String>,
    region: String,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    key_file: Option<String>,
    cache_dir: Option<String>,
    cache_mb: i32,
    readahead_kb: i32,
    timeout_s: i32,
    frame_kb: i32,
    zstd_level: i32,
}

impl Config {
    fn current() -> Config {
        Config {
            url: string(&STORAGE_URL),
            endpoint: string(&S3_ENDPOINT),
            region: string(&S3_REGION).unwrap_or_else(|| "us-east-1".into()),
            access_key_id: string(&S3_ACCESS_KEY_ID),
            secret_access_key: string(&S3_SECRET_ACCESS_KEY),
            key_file: string(&KEY_FILE),
            cache_dir: string(&CACHE_DIR),
            cache_mb: CACHE_SIZE_MB.get(),
            readahead_kb: READAHEAD_KB.get(),
            timeout_s: TIMEOUT_S.get(),
            frame_kb: FRAME_KB.get(),
            zstd_level: ZSTD_LEVEL.get(),
        }
    }
}

/// What a process needs to read and write objects.
pub struct Storage {
    pub store: Arc<AnyStore>,
    pub keys: KeyRing,
    pub reader: RemoteReader,
    pub upload: UploadOptions,
    pub describe: String,
}

/// The handle, the settings it was built from, and the epoch they were read at.
static STORAGE: Mutex<Option<(u64, Config, Arc<Storage>)>> = Mutex::new(None);

pub fn data_dir() -> PathBuf {
    // SAFETY: DataDir is set before any extension code runs and never changes.
    unsafe {
        PathBuf::from(
            std::ffi::CStr::from_ptr(pgrx::pg_sys::DataDir)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// This process's storage handle, rebuilt when the settings change
/// (after a SIGHUP). Reports a clear ERROR when nothing is configured.
pub fn storage() -> Arc<Storage> {
    let epoch = SETTINGS_EPOCH.load(Ordering::Relaxed);
    let mut slot = STORAGE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((e, _, s)) = slot.as_ref() {
        if *e == epoch {
            return s.clone();
        }
    }
    // Something was assigned (a reload): rebuild only if it changed.
    let cfg = Config::current();
    if let Some((e, c, s)) = slot.as_mut() {
        if *c == cfg {
            *e = epoch;
            return s.clone();
        }
    }
    let t0 = std::time::Instant::now();
    let s = Arc::new(
        build(&cfg)
            .unwrap_or_else(|e| errors::report(e, "cannot use the configured object storage")),
    );
    pgrx::debug1!(
        "yezzey: storage client for {} ready in {:.1} ms",
        s.describe,
        t0.elapsed().as_secs_f64() * 1000.0
    );
    *slot = Some((epoch, cfg, s.clone()));
    s
}

fn build(cfg: &Config) -> yezzey_storage::Result<Storage> {
    let url = cfg
        .url
        .as_deref()
        .ok_or_else(|| yezzey_storage::Error::Config("yezzey.storage_url is not set".into()))?;
    let location = Location::parse(url)?;
    let timeout = Duration::from_secs(cfg.timeout_s as u64);
    let s3 = S3Settings {
        endpoint: cfg.endpoint.clone(),
        region: cfg.region.clone(),
        access_key_id: cfg.access_key_id.clone(),
        secret_access_key: cfg.secret_access_key.clone(),
        connect_timeout: timeout.min(Duration::from_secs(5)),
        request_timeout: timeout,
        ..Default::default()
    };
    let store = Arc::new(AnyStore::open(&location, &s3)?);
    let keys = match &cfg.key_file {
        Some(p) => KeyRing::from_file(&PathBuf::from(p))?,
        None => KeyRing::none(),
    };
    let cache = if cfg.cache_mb > 0 {
        let dir = cfg
            .cache_dir
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir().join("pg_yezzey/pgsql_tmp_cache"));
        Some(FrameCache::open(&dir, cfg.cache_mb as u64 * 1024 * 1024)?)
    } else {
        None
    };
    let readahead = ReadaheadConfig {
        window_bytes: cfg.readahead_kb as u64 * 1024,
        // A peer's fetch is bounded by the store's timeouts (3 attempts).
        peer_wait: timeout * 3 + Duration::from_secs(5),
        ..Default::default()
    };
    let format = FormatOptions {
        frame_size: cfg.frame_kb as u32 * 1024,
        zstd_level: cfg.zstd_level,
        cipher: CipherImpl::default(),
    };
    format.validate()?;
    let describe = store.describe();
    Ok(Storage {
        reader: RemoteReader::new(
            store.clone(),
            keys.clone(),
            CipherImpl::default(),
            cache,
            readahead,
        ),
        store,
        keys,
        upload: UploadOptions {
            format,
            ..Default::default()
        },
        describe,
    })
}

/// The Greenplum content id of this server (-1 for PostgreSQL).
pub fn content_id() -> i32 {
    CONTENT_ID.get()
}

/// Seconds `yezzey_gc()` keeps a retired object.
pub fn gc_retention() -> i64 {
    GC_RETENTION_S.get() as i64
}

/// The fault-injection point that is armed, if any.
pub fn fault_point() -> Option<String> {
    string(&FAULT_INJECTION)
}
