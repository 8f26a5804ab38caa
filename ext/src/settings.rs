//! The `yezzey.*` GUCs and the per-process storage handle built from them.
//!
//! Storage settings are SIGHUP-level: every process that may read offloaded
//! blocks (backends, the startup process replaying WAL on a standby, the
//! checkpointer) must see the same values, so they belong in
//! postgresql.conf rather than in one session.
use crate::{errors, fds, pg};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use yezzey_storage::cache::{CacheOptions, FrameCache};
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
pub static MIN_FREE_MB: GucSetting<i32> = GucSetting::<i32>::new(1024);
pub static MAX_CONNECTIONS: GucSetting<i32> =
    GucSetting::<i32>::new(yezzey_storage::store::DEFAULT_MAX_CONNECTIONS as i32);
pub static READAHEAD_KB: GucSetting<i32> = GucSetting::<i32>::new(8192);
pub static TIMEOUT_S: GucSetting<i32> = GucSetting::<i32>::new(30);
pub static FRAME_KB: GucSetting<i32> = GucSetting::<i32>::new(1024);
pub static ZSTD_LEVEL: GucSetting<i32> = GucSetting::<i32>::new(1);
pub static MAX_LAYERS: GucSetting<i32> =
    GucSetting::<i32>::new(yezzey_smgr_shim::MAX_LAYERS as i32);
pub static CONTENT_ID: GucSetting<i32> = GucSetting::<i32>::new(-1);
pub static GC_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);
pub static BACKUP_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);
pub static REGISTER_BACKUPS: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static BARMAN_REPOSITORY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static FAULT_INJECTION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Registers every `yezzey.*` setting, by what it governs (from `_PG_init`).
pub fn define() {
    define_store();
    define_cache();
    define_reads();
    define_new_objects();
    define_retention();
}

/// Where the objects are and how to reach them.
fn define_store() {
    pg::guc::string_sighup(
        c"yezzey.storage_url",
        c"Where offloaded objects go: s3://bucket/prefix, or an absolute directory.",
        c"Empty disables offloading. Every server sharing objects (standbys, restored backups) must use the same URL.",
        &STORAGE_URL,
        GucFlags::default(),
    );
    pg::guc::string_sighup(
        c"yezzey.s3_endpoint",
        c"S3 endpoint URL, e.g. http://127.0.0.1:3900; empty means AWS.",
        c"",
        &S3_ENDPOINT,
        GucFlags::default(),
    );
    pg::guc::string_sighup(
        c"yezzey.s3_region",
        c"S3 region.",
        c"",
        &S3_REGION,
        GucFlags::default(),
    );
    pg::guc::string_sighup(
        c"yezzey.s3_access_key_id",
        c"S3 access key id; empty reads AWS_ACCESS_KEY_ID or the AWS profile.",
        c"",
        &S3_ACCESS_KEY_ID,
        GucFlags::SUPERUSER_ONLY,
    );
    pg::guc::string_sighup(
        c"yezzey.s3_secret_access_key",
        c"S3 secret access key; empty reads AWS_SECRET_ACCESS_KEY or the AWS profile.",
        c"",
        &S3_SECRET_ACCESS_KEY,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    pg::guc::string_sighup(
        c"yezzey.key_file",
        c"File of 256-bit encryption keys (hex, one per line, first is current); empty stores objects unencrypted.",
        c"",
        &KEY_FILE,
        GucFlags::SUPERUSER_ONLY,
    );
}

/// The local frame cache and the disk it may use.
fn define_cache() {
    pg::guc::string_sighup(
        c"yezzey.cache_dir",
        c"Directory of the local cache of decoded frames; default $PGDATA/pg_yezzey/pgsql_tmp_cache.",
        c"",
        &CACHE_DIR,
        GucFlags::default(),
    );
    pg::guc::int_sighup(
        c"yezzey.cache_size",
        c"Size limit of the local frame cache; 0 disables it.",
        c"",
        &CACHE_SIZE_MB,
        0,
        i32::MAX,
        GucFlags::UNIT_MB,
    );
    pg::guc::int_sighup(
        c"yezzey.min_free_space",
        c"Free space yezzey leaves on the file systems it writes to.",
        c"The frame cache evicts (or stops caching) before free space on its file system drops below this; yezzey_load_relation refuses to start unless the relation and its WAL fit with this much to spare.",
        &MIN_FREE_MB,
        0,
        i32::MAX,
        GucFlags::UNIT_MB,
    );
}

/// How hard each process may press the store.
fn define_reads() {
    pg::guc::int_sighup(
        c"yezzey.max_connections",
        c"Requests to the object store each process runs at once (and idle connections it keeps).",
        c"Bounds the sockets a process holds; they are reported to PostgreSQL's file descriptor accounting.",
        &MAX_CONNECTIONS,
        1,
        64,
        GucFlags::default(),
    );
    pg::guc::int_sighup(
        c"yezzey.readahead",
        c"How much of a sequentially read object is fetched ahead; 0 disables readahead.",
        c"",
        &READAHEAD_KB,
        0,
        1 << 20,
        GucFlags::UNIT_KB,
    );
    pg::guc::int_sighup(
        c"yezzey.timeout",
        c"Timeout of one request to the object store (requests are tried up to 3 times).",
        c"",
        &TIMEOUT_S,
        1,
        3600,
        GucFlags::UNIT_S,
    );
}

/// How new objects are cut and named.
fn define_new_objects() {
    pg::guc::int_sighup(
        c"yezzey.frame_size",
        c"Raw size of the independently readable frames of new objects.",
        c"Must be a multiple of 8kB.",
        &FRAME_KB,
        8,
        65536,
        GucFlags::UNIT_KB,
    );
    pg::guc::int_sighup(
        c"yezzey.zstd_level",
        c"zstd level of new objects; 0 stores frames uncompressed.",
        c"",
        &ZSTD_LEVEL,
        0,
        22,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"yezzey.max_layers",
        c"How many layers of changed blocks a re-offload may put over a segment's object before it rewrites the segment whole.",
        c"A re-offload uploads only a segment's changed and appended blocks, as a layer over its object, until the segment has this many layers or its layers hold more than half its blocks; then it merges them into one new object. 0 always rewrites changed segments whole.",
        &MAX_LAYERS,
        0,
        yezzey_smgr_shim::MAX_LAYERS as i32,
        GucContext::Userset,
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
}

/// What garbage collection keeps, for whom, and for how long; testing hooks.
fn define_retention() {
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
    GucRegistry::define_int_guc(
        c"yezzey.backup_retention",
        c"How long a registered base backup that no catalogue lists keeps the objects it may need.",
        c"Backups Barman took are kept as long as yezzey.barman_repository lists them; others (pg_basebackup) for this long after they started, or until yezzey_backup_expire().",
        &BACKUP_RETENTION_S,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"yezzey.register_backups",
        c"Registers every base backup in the object store when it starts; a backup that cannot be registered does not start.",
        c"Off takes backups unregistered: the objects they need are then kept only for yezzey.gc_retention.",
        &REGISTER_BACKUPS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"yezzey.barman_repository",
        c"The Barman server whose catalogue says which of this cluster's backups still exist: the repository URL and server name given to barman-cloud-backup, as URL/SERVER.",
        c"For example s3://backups/barman/main for barman-cloud-backup s3://backups/barman main.",
        &BARMAN_REPOSITORY,
        GucContext::Sighup,
        GucFlags::default(),
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
    min_free_mb: i32,
    max_connections: i32,
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
            min_free_mb: MIN_FREE_MB.get(),
            max_connections: MAX_CONNECTIONS.get(),
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
    /// How this handle reaches S3 (for other buckets of the same service).
    pub s3: S3Settings,
    /// The descriptors the store and the cache may hold, reported to
    /// PostgreSQL for as long as this handle lives.
    _fds: fds::Reserved,
}

/// The handle, the settings it was built from, and the epoch they were read at.
static STORAGE: Mutex<Option<(u64, Config, Arc<Storage>)>> = Mutex::new(None);

/// This process's storage handle, rebuilt when the settings change
/// (after a SIGHUP). Reports a clear ERROR when nothing is configured.
pub fn storage() -> Arc<Storage> {
    try_storage().unwrap_or_else(|e| errors::report(e, "cannot use the configured object storage"))
}

/// [`storage`], returning the failure instead of raising it.
pub fn try_storage() -> yezzey_storage::Result<Arc<Storage>> {
    let epoch = pg::guc::epoch();
    let mut slot = STORAGE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((e, _, s)) = slot.as_ref() {
        if *e == epoch {
            return Ok(s.clone());
        }
    }
    // Something was assigned (a reload): rebuild only if it changed.
    let cfg = Config::current();
    if let Some((e, c, s)) = slot.as_mut() {
        if *c == cfg {
            *e = epoch;
            return Ok(s.clone());
        }
    }
    let t0 = std::time::Instant::now();
    // The old handle's descriptors go back before the new one takes its own.
    *slot = None;
    let s = Arc::new(build(&cfg)?);
    pgrx::debug1!(
        "yezzey: storage client for {} ready in {:.1} ms",
        s.describe,
        t0.elapsed().as_secs_f64() * 1000.0
    );
    *slot = Some((epoch, cfg, s.clone()));
    Ok(s)
}

/// Builds a handle within the descriptors PostgreSQL can spare: the
/// configured connections and cache files if it can, a small budget if
/// not (with a warning), an ERROR if not even that.
fn build(cfg: &Config) -> yezzey_storage::Result<Storage> {
    fds::reserve_runtime();
    let small = Config {
        max_connections: cfg.max_connections.min(2),
        ..cfg.clone()
    };
    for (i, c) in [cfg, &small].into_iter().enumerate() {
        // Opening the cache holds its lock, its state file and a directory.
        let files = if i == 0 { DEFAULT_OPEN_FILES } else { 4 };
        let (store, cache) = fds::transient(3, || open_parts(c, files))?;
        let need = store.max_fds() + cache.as_ref().map_or(0, |c| c.max_fds());
        if let Some(reserved) = fds::Reserved::acquire(need) {
            if i > 0 {
                warn_small_budget();
            }
            return assemble(c, store, cache, reserved);
        }
    }
    Err(yezzey_storage::Error::io(
        "object storage",
        std::io::Error::from_raw_os_error(libc::EMFILE),
    ))
}

use yezzey_storage::cache::DEFAULT_OPEN_FILES;

fn warn_small_budget() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        pgrx::warning!(
            "yezzey: too few file descriptors for yezzey.max_connections; this process uses 2 connections to the object store"
        );
    }
}

/// The store and the cache of a configuration.
fn open_parts(
    cfg: &Config,
    cache_files: usize,
) -> yezzey_storage::Result<(Arc<AnyStore>, Option<FrameCache>)> {
    let url = cfg
        .url
        .as_deref()
        .ok_or_else(|| yezzey_storage::Error::Config("yezzey.storage_url is not set".into()))?;
    let location = Location::parse(url)?;
    let store = Arc::new(AnyStore::open(&location, &s3_settings(cfg))?);
    let cache = if cfg.cache_mb > 0 {
        let dir = cfg
            .cache_dir
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| pg::data_dir().join("pg_yezzey/pgsql_tmp_cache"));
        Some(FrameCache::open_with(
            &dir,
            CacheOptions {
                limit: cfg.cache_mb as u64 * 1024 * 1024,
                min_free: min_free_bytes_of(cfg),
                open_files: cache_files,
            },
        )?)
    } else {
        None
    };
    Ok((store, cache))
}

/// How a configuration reaches S3.
fn s3_settings(cfg: &Config) -> S3Settings {
    let timeout = Duration::from_secs(cfg.timeout_s as u64);
    S3Settings {
        endpoint: cfg.endpoint.clone(),
        region: cfg.region.clone(),
        access_key_id: cfg.access_key_id.clone(),
        secret_access_key: cfg.secret_access_key.clone(),
        connect_timeout: timeout.min(Duration::from_secs(5)),
        request_timeout: timeout,
        max_connections: cfg.max_connections as usize,
        ..Default::default()
    }
}

fn min_free_bytes_of(cfg: &Config) -> u64 {
    cfg.min_free_mb as u64 * 1024 * 1024
}

fn assemble(
    cfg: &Config,
    store: Arc<AnyStore>,
    cache: Option<FrameCache>,
    reserved: fds::Reserved,
) -> yezzey_storage::Result<Storage> {
    let timeout = Duration::from_secs(cfg.timeout_s as u64);
    let keys = match &cfg.key_file {
        Some(p) => KeyRing::from_file(&PathBuf::from(p))?,
        None => KeyRing::none(),
    };
    let readahead = ReadaheadConfig {
        window_bytes: cfg.readahead_kb as u64 * 1024,
        // A peer's fetch is bounded by the store's timeouts (3 attempts).
        peer_wait: timeout * 3 + Duration::from_secs(5),
        // What the README promises: a read fails within 3x the timeout.
        deadline: timeout * 3,
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
        s3: s3_settings(cfg),
        _fds: reserved,
    })
}

/// The Greenplum content id of this server (-1 for PostgreSQL).
/// Layers a re-offload may put over a segment (`yezzey.max_layers`).
pub fn max_layers() -> usize {
    MAX_LAYERS
        .get()
        .clamp(0, yezzey_smgr_shim::MAX_LAYERS as i32) as usize
}

pub fn content_id() -> i32 {
    CONTENT_ID.get()
}

/// Free bytes yezzey leaves on the file systems it writes to.
pub fn min_free_bytes() -> u64 {
    MIN_FREE_MB.get() as u64 * 1024 * 1024
}

/// Whether object storage is configured at all.
pub fn storage_configured() -> bool {
    string(&STORAGE_URL).is_some()
}

/// Seconds `yezzey_gc()` keeps a retired object.
pub fn gc_retention() -> i64 {
    GC_RETENTION_S.get() as i64
}

/// Seconds a registered backup that no catalogue lists is kept.
pub fn backup_retention() -> i64 {
    BACKUP_RETENTION_S.get() as i64
}

/// Whether base backups are registered.
pub fn register_backups() -> bool {
    REGISTER_BACKUPS.get()
}

/// Barman's cloud repository URL, if set.
pub fn barman_repository() -> Option<String> {
    string(&BARMAN_REPOSITORY)
}

/// The fault-injection point that is armed, if any.
pub fn fault_point() -> Option<String> {
    string(&FAULT_INJECTION)
}
