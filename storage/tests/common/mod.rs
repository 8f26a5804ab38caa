//! Shared set-up for the integration tests: a real Garage S3 server started
//! by scripts/test.sh (scripts/garage.sh), reached through the environment it
//! exports (without it those tests fail loudly rather than skip), and the
//! helpers every reader test uses, whatever the store.
#![allow(dead_code)]
use std::sync::Arc;
use std::time::Duration;
use yezzey_storage::cache::FrameCache;
use yezzey_storage::crypto::CipherImpl;
use yezzey_storage::format::{new_object_id, FormatOptions, BLOCK_SIZE};
use yezzey_storage::keys::{Key, KeyRing};
use yezzey_storage::reader::{ReadaheadConfig, RemoteReader};
use yezzey_storage::runtime::block_on;
use yezzey_storage::store::{AnyStore, Location, S3Settings};
use yezzey_storage::upload::{upload, UploadOptions};
use yezzey_storage::Error;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: these tests need the Garage server that scripts/test.sh starts (source $YEZZEY_RUN/garage/env)")
    })
}

pub fn settings(timeout: Duration) -> S3Settings {
    S3Settings {
        endpoint: Some(env("YEZZEY_S3_ENDPOINT")),
        region: env("YEZZEY_S3_REGION"),
        request_timeout: timeout,
        connect_timeout: Duration::from_secs(2),
        max_attempts: 2,
        ..Default::default()
    }
}

/// A store under a prefix unique to this test run and test name.
pub fn garage(test: &str) -> Arc<AnyStore> {
    garage_with(test, Duration::from_secs(10))
}

pub fn garage_with(test: &str, timeout: Duration) -> Arc<AnyStore> {
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).unwrap();
    let url = format!(
        "s3://{}/tests/{test}-{}",
        env("YEZZEY_BUCKET"),
        hex::encode(r)
    );
    Arc::new(AnyStore::open(&Location::parse(&url).unwrap(), &settings(timeout)).unwrap())
}

pub fn keyring() -> KeyRing {
    KeyRing::new([Key::generate()])
}

/// Deterministic, page-like data: compressible runs mixed with noise.
pub fn page_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run = (x % 48) as usize;
        if x.is_multiple_of(3) {
            out.extend(std::iter::repeat_n((x >> 8) as u8, run));
        } else {
            out.extend((0..run).map(|i| (x >> (i % 8 * 8)) as u8));
        }
    }
    out.truncate(len);
    out
}

pub const FRAME: u32 = 64 * 1024;

pub fn opts() -> UploadOptions {
    UploadOptions {
        format: FormatOptions {
            frame_size: FRAME,
            ..Default::default()
        },
        part_size: 5 << 20,
        ..Default::default()
    }
}

pub fn put(store: &Arc<AnyStore>, name: &str, data: &[u8], keys: &KeyRing) -> u64 {
    block_on(upload(
        store,
        name,
        new_object_id(),
        keys,
        &opts(),
        data,
        |_| {},
    ))
    .unwrap()
    .stored_len
}

pub fn reader(store: &Arc<AnyStore>, keys: &KeyRing, cache: Option<FrameCache>) -> RemoteReader {
    RemoteReader::new(
        store.clone(),
        keys.clone(),
        CipherImpl::default(),
        cache,
        ReadaheadConfig::default(),
    )
}

pub fn read_all(r: &RemoteReader, name: &str, len: usize) -> Result<Vec<u8>, Error> {
    read_all_pausing(r, name, len, Duration::ZERO)
}

/// Reads a whole object front to back, pausing after each read as a slow
/// scan would.
pub fn read_all_pausing(
    r: &RemoteReader,
    name: &str,
    len: usize,
    pause: Duration,
) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; len];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(BLOCK_SIZE * 3);
        r.read_blocking(name, off as u64, &mut out[off..off + n])?;
        off += n;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    Ok(out)
}
