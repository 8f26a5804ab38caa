//! The readahead reader against the directory store, which needs no
//! server: bytes in any order, whole-group readahead, peers sharing frames
//! through the cache, cancelled reads, and errors that are never data.
mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use yezzey_storage::cache::FrameCache;
use yezzey_storage::format::BLOCK_SIZE;
use yezzey_storage::keys::KeyRing;
use yezzey_storage::reader::{ReadaheadConfig, RemoteReader};
use yezzey_storage::runtime::block_on;
use yezzey_storage::store::AnyStore;
use yezzey_storage::Error;

/// A directory store holding one object of `len` bytes.
fn local_object(len: usize, keys: &KeyRing) -> (tempfile::TempDir, Arc<AnyStore>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(AnyStore::local(dir.path()).unwrap());
    let data = page_data(len, 7);
    put(&store, "o/obj", &data, keys);
    (dir, store, data)
}

const LEN: usize = 48 * FRAME as usize + 3 * BLOCK_SIZE;

#[test]
fn blocks_read_in_any_order_are_the_original_bytes() {
    let keys = keyring();
    let (_d, store, data) = local_object(LEN, &keys);
    let r = reader(&store, &keys, None);
    // Front to back, block-shaped as PostgreSQL reads.
    let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; BLOCK_SIZE]; LEN / BLOCK_SIZE];
    for (i, chunk) in bufs.chunks_mut(4).enumerate() {
        let mut parts: Vec<&mut [u8]> = chunk.iter_mut().map(|b| &mut b[..]).collect();
        r.read_blocks_blocking(
            "o/obj",
            (i * 4 * BLOCK_SIZE) as u64,
            &mut parts,
            yezzey_storage::cache::HitCheck::Every,
        )
        .unwrap();
    }
    assert_eq!(bufs.concat(), data);
    // Back to front and at odd offsets, through a fresh reader.
    let r = reader(&store, &keys, None);
    let mut x = 12345u64;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 11) as usize % (LEN - 1);
        let len = 1 + (x >> 40) as usize % (LEN - off).min(3 * FRAME as usize);
        let mut out = vec![0u8; len];
        r.read_blocking("o/obj", off as u64, &mut out).unwrap();
        assert_eq!(out, data[off..off + len], "bytes {off}..{}", off + len);
    }
}

#[test]
fn a_sequential_reader_fetches_whole_groups() {
    let keys = keyring();
    let (_d, store, data) = local_object(LEN, &keys);
    let r = reader(&store, &keys, None);
    assert_eq!(read_all(&r, "o/obj", LEN).unwrap(), data);
    let s = r.stats();
    let gets = s.gets.load(std::sync::atomic::Ordering::Relaxed);
    let frames = s.frames_fetched.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(frames, 49, "each frame fetched once");
    // The trailer, then a few group GETs, not one per frame.
    assert!(gets <= 6, "{gets} GETs for 49 frames");
}

#[test]
fn peers_share_frames_through_the_cache() {
    let keys = keyring();
    let (_d, store, data) = local_object(LEN, &keys);
    let cache_dir = tempfile::tempdir().unwrap();
    // Two readers with their own handles on one cache directory, as two
    // processes (the workers of a parallel scan) have.
    let readers: Vec<RemoteReader> = (0..2)
        .map(|_| {
            let cache = FrameCache::open(cache_dir.path(), 64 << 20).unwrap();
            reader(&store, &keys, Some(cache))
        })
        .collect();
    std::thread::scope(|s| {
        for r in &readers {
            let data = &data;
            s.spawn(move || assert_eq!(&read_all(r, "o/obj", LEN).unwrap(), data));
        }
    });
    let fetched: u64 = readers
        .iter()
        .map(|r| {
            r.stats()
                .frames_fetched
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert!(
        fetched <= 49 + 4,
        "{fetched} frames fetched for 49 between two peers"
    );
    // A third reader gets everything from the cache.
    let third = reader(
        &store,
        &keys,
        Some(FrameCache::open(cache_dir.path(), 64 << 20).unwrap()),
    );
    assert_eq!(read_all(&third, "o/obj", LEN).unwrap(), data);
    assert_eq!(
        third
            .stats()
            .frames_fetched
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn a_cancelled_read_leaves_nothing_stuck() {
    let keys = keyring();
    let (_d, store, data) = local_object(LEN, &keys);
    let r = reader(&store, &keys, None);
    // Dropped after its first poll, with readahead started.
    block_on(async {
        let mut out = vec![0u8; LEN];
        let _ = tokio::time::timeout(Duration::from_nanos(1), r.read("o/obj", 0, &mut out)).await;
    });
    assert_eq!(read_all(&r, "o/obj", LEN).unwrap(), data);
    // And with a deadline that has already passed for reads that must wait.
    let impatient = RemoteReader::new(
        store.clone(),
        keys.clone(),
        yezzey_storage::crypto::CipherImpl::default(),
        None,
        ReadaheadConfig {
            deadline: Duration::ZERO,
            ..Default::default()
        },
    );
    let mut out = vec![0u8; BLOCK_SIZE];
    match impatient.read_blocking("o/obj", 0, &mut out) {
        Ok(()) => assert_eq!(out, data[..BLOCK_SIZE]),
        Err(e) => assert!(matches!(e, Error::Timeout(_)), "{e}"),
    }
}

#[test]
fn missing_damaged_and_foreign_objects_are_errors_never_data() {
    let keys = keyring();
    let (dir, store, _data) = local_object(LEN, &keys);
    let r = reader(&store, &keys, None);
    let mut out = vec![0u8; BLOCK_SIZE];
    assert!(matches!(
        r.read_blocking("o/missing", 0, &mut out),
        Err(Error::NotFound(_))
    ));
    // Another key ring cannot read it.
    let other = reader(&store, &keyring(), None);
    assert!(matches!(
        other.read_blocking("o/obj", 0, &mut out),
        Err(Error::UnknownKey { .. })
    ));
    // A flipped byte in the first frame (just past the 8-byte lead).
    let path = dir.path().join("o/obj");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let fresh = reader(&store, &keys, None);
    assert!(matches!(
        fresh.read_blocking("o/obj", 0, &mut out),
        Err(Error::Corrupt { .. })
    ));
    // A truncated object.
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let fresh = reader(&store, &keys, None);
    assert!(fresh.read_blocking("o/obj", 0, &mut out).is_err());
}
