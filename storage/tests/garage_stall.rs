//! Garage frozen mid-scan (SIGSTOP: connections accepted, never answered):
//! reads must fail within the configured timeout, not hang. A test binary of
//! its own, because freezing the server would disturb concurrent tests.
mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};
use yezzey_storage::crypto::CipherImpl;
use yezzey_storage::format::new_object_id;
use yezzey_storage::format::{FormatOptions, BLOCK_SIZE};
use yezzey_storage::reader::{ReadaheadConfig, RemoteReader};
use yezzey_storage::runtime::block_on;
use yezzey_storage::upload::{upload, UploadOptions};
use yezzey_storage::Error;

fn garage_ctl(action: &str) {
    let ok = Command::new("bash")
        .arg(std::env::var("YEZZEY_GARAGE_CTL").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/garage.sh").to_string()
        }))
        .arg(action)
        .status()
        .unwrap()
        .success();
    assert!(ok, "garage.sh {action} failed");
}

struct Resume;
impl Drop for Resume {
    fn drop(&mut self) {
        garage_ctl("resume");
    }
}

#[test]
fn stalled_store_errors_within_the_timeout() {
    let timeout = Duration::from_secs(2);
    let s = garage_with("stall", timeout);
    let keys = keyring();
    let frame = 64 * 1024u32;
    let data = page_data(64 * frame as usize, 1);
    let opts = UploadOptions {
        format: FormatOptions {
            frame_size: frame,
            ..Default::default()
        },
        ..Default::default()
    };
    block_on(upload(
        &s,
        "big",
        new_object_id(),
        &keys,
        &opts,
        &data[..],
        |_| {},
    ))
    .unwrap();
    // No readahead: every frame is its own GET, so the freeze hits a read.
    let ra = ReadaheadConfig {
        window_bytes: 0,
        ..Default::default()
    };
    let r = RemoteReader::new(s.clone(), keys, CipherImpl::default(), None, ra);
    let mut block = vec![0u8; BLOCK_SIZE];
    for f in 0..4u64 {
        r.read_blocking("big", f * frame as u64, &mut block)
            .unwrap();
        assert_eq!(block, data[(f * frame as u64) as usize..][..BLOCK_SIZE]);
    }
    garage_ctl("pause");
    let _resume = Resume;
    let t0 = Instant::now();
    let err = r
        .read_blocking("big", 10 * frame as u64, &mut block)
        .unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, Error::Timeout(_) | Error::Store(_)), "{err}");
    // Two attempts of 2 s each, plus connect and backoff slack.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    eprintln!("stalled store: {err} after {took:?}");
    drop(_resume);
    // Once Garage is back, the same read succeeds.
    r.read_blocking("big", 10 * frame as u64, &mut block)
        .unwrap();
    assert_eq!(block, data[10 * frame as usize..][..BLOCK_SIZE]);
}
