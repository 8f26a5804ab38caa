//! Storage-core benchmark, everything measured side by side in one run:
//!
//! * per-core throughput of the object format's encode and decode against
//!   raw zstd and raw AES-256-GCM (aws-lc-rs and RustCrypto) on the same
//!   PostgreSQL-like heap pages: the physical limit of the read path;
//! * upload and download throughput to the S3 store in the environment
//!   (the local Garage under scripts/), and the peak memory of a process
//!   that streams a large object;
//! * cache-hit latency per 8 KiB block, raw cache and through the reader.
//!
//! Usage: `storage-bench [--mb N] [--runs N]`; the S3 part needs the
//! variables `scripts/garage.sh` writes (YEZZEY_S3_ENDPOINT, ...). See
//! bench/README.md for the command that produced the published figures.
use std::sync::Arc;
use std::time::{Duration, Instant};
use yezzey_storage::cache::{FrameCache, HitCheck};
use yezzey_storage::crypto::{frame_nonce, Cipher, CipherImpl};
use yezzey_storage::format::new_object_id;
use yezzey_storage::format::{FormatOptions, ObjectCodec, BLOCK_SIZE, DEFAULT_FRAME_SIZE};
use yezzey_storage::keys::{Key, KeyRing};
use yezzey_storage::reader::{ReadaheadConfig, RemoteReader};
use yezzey_storage::runtime::block_on;
use yezzey_storage::store::{AnyStore, Location, ObjectStore, S3Settings};
use yezzey_storage::upload::{upload, UploadOptions};

const FRAME: usize = DEFAULT_FRAME_SIZE as usize;

/// Heap-like 8 KiB pages: page header, line pointers, tuples (header, int4
/// id, int8 amount, date, text of varying length) packed from the end.
fn heap_pages(bytes: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "order",
        "shipped",
        "pending",
        "customer",
        "invoice",
        "refund",
        "north",
        "south",
        "express",
        "standard",
        "warehouse",
        "priority",
        "returned",
        "gift",
        "card",
        "berlin",
        "lisbon",
        "osaka",
    ];
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut out = Vec::with_capacity(bytes);
    let mut id = 1u32;
    while out.len() < bytes {
        let mut page = vec![0u8; BLOCK_SIZE];
        let mut lower = 24usize;
        let mut upper = BLOCK_SIZE;
        loop {
            let mut t = Vec::with_capacity(128);
            t.extend_from_slice(&(1000 + id / 50).to_le_bytes()); // xmin
            t.extend_from_slice(&[0; 4]); // xmax
            t.extend_from_slice(&[0; 4]); // cid
            t.extend_from_slice(&[0, 0, 0, 0, 1, 0]); // ctid
            t.extend_from_slice(&[5, 0, 0x02, 0x09, 24]); // natts, infomask, hoff
            t.push(0);
            t.extend_from_slice(&id.to_le_bytes());
            t.extend_from_slice(&[0; 4]);
            t.extend_from_slice(&((next() % 1_000_000) as i64).to_le_bytes());
            t.extend_from_slice(&(8400 + (id / 300) as i32).to_le_bytes());
            let mut text = String::new();
            for _ in 0..(1 + next() % 8) {
                text.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
                text.push(' ');
            }
            t.push(((text.len() + 1) << 1 | 1) as u8);
            t.extend_from_slice(text.as_bytes());
            while t.len() % 8 != 0 {
                t.push(0);
            }
            if upper < lower + 4 + t.len() {
                break;
            }
            upper -= t.len();
            page[upper..upper + t.len()].copy_from_slice(&t);
            let lp = (upper as u32) | (1 << 15) | ((t.len() as u32) << 17);
            page[lower..lower + 4].copy_from_slice(&lp.to_le_bytes());
            lower += 4;
            id += 1;
        }
        page[12..14].copy_from_slice(&(lower as u16).to_le_bytes());
        page[14..16].copy_from_slice(&(upper as u16).to_le_bytes());
        page[16..18].copy_from_slice(&(BLOCK_SIZE as u16).to_le_bytes());
        page[18..20].copy_from_slice(&0x2004u16.to_le_bytes());
        out.extend_from_slice(&page);
    }
    out.truncate(bytes);
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median over `runs` of raw-MB/s for `f` processing `raw_bytes`.
fn mbps(runs: usize, raw_bytes: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                raw_bytes as f64 / t.elapsed().as_secs_f64() / 1e6
            })
            .collect(),
    )
}

/// Median over `runs` of the microseconds per call of `read(frame, block)`
/// at `n` pseudo-random (frame, block) positions.
fn random_block_us(
    runs: usize,
    n: usize,
    frames: usize,
    blocks_per_frame: usize,
    x: &mut u64,
    mut read: impl FnMut(usize, usize),
) -> f64 {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..n {
                    *x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    read(
                        (*x >> 33) as usize % frames,
                        (*x >> 20) as usize % blocks_per_frame,
                    );
                }
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            })
            .collect(),
    )
}

fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| k / 1024.0)
        .unwrap_or(0.0)
}

fn s3_store(prefix: &str) -> Option<Arc<AnyStore>> {
    let endpoint = std::env::var("YEZZEY_S3_ENDPOINT").ok()?;
    let bucket = std::env::var("YEZZEY_BUCKET").unwrap_or_else(|_| "yezzey".into());
    let s = S3Settings {
        endpoint: Some(endpoint),
        region: std::env::var("YEZZEY_S3_REGION").unwrap_or_else(|_| "garage".into()),
        ..Default::default()
    };
    let loc = Location::parse(&format!("s3://{bucket}/{prefix}")).unwrap();
    Some(Arc::new(AnyStore::open(&loc, &s).unwrap()))
}

fn reader(store: Arc<AnyStore>, keys: &KeyRing, cache: Option<FrameCache>) -> RemoteReader {
    RemoteReader::new(
        store,
        keys.clone(),
        CipherImpl::AwsLc,
        cache,
        ReadaheadConfig::default(),
    )
}

/// Child mode: stream an object sequentially in 128 KiB reads (PostgreSQL's
/// io_combine_limit) and report throughput and peak memory.
fn download_child(prefix: &str, name: &str, key_hex: &str) {
    let keys = KeyRing::new([Key::from_hex(key_hex).unwrap()]);
    let r = reader(s3_store(prefix).unwrap(), &keys, None);
    let len = block_on(r.layout(name)).unwrap().trailer.raw_len as usize;
    let before = peak_rss_mb();
    let mut buf = vec![0u8; 16 * BLOCK_SIZE];
    let t = Instant::now();
    let mut off = 0;
    while off < len {
        let n = buf.len().min(len - off);
        r.read_blocking(name, off as u64, &mut buf[..n]).unwrap();
        off += n;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} {} {}",
        len as f64 / secs / 1e6,
        peak_rss_mb(),
        peak_rss_mb() - before
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--download-child") {
        return download_child(&args[2], &args[3], &args[4]);
    }
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mb = flag("--mb", 64);
    let runs = flag("--runs", 5);
    let data = heap_pages(mb << 20);
    let frames: Vec<&[u8]> = data.chunks(FRAME).collect();
    let key = Key::generate();
    let keys = KeyRing::new([key.clone()]);
    println!("# storage-bench: {mb} MiB of heap-like pages, {} frames of 1 MiB, median of {runs} runs, one thread", frames.len());

    // --- codec vs its parts, per core ---
    let compressed: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| zstd::bulk::compress(f, 1).unwrap())
        .collect();
    let ratio = data.len() as f64 / compressed.iter().map(|c| c.len()).sum::<usize>() as f64;
    let zc = mbps(runs, data.len(), || {
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        for f in &frames {
            std::hint::black_box(c.compress(f).unwrap());
        }
    });
    let zd = mbps(runs, data.len(), || {
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        for c in &compressed {
            std::hint::black_box(d.decompress(c, FRAME).unwrap());
        }
    });
    let mut aes = Vec::new();
    for imp in [CipherImpl::AwsLc, CipherImpl::RustCrypto] {
        let c = Cipher::new(imp, &key.bytes);
        let sealed: Vec<Vec<u8>> = compressed
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut v = b.clone();
                c.seal(frame_nonce(i as u32), b"aad", &mut v);
                v
            })
            .collect();
        // Per raw MB, on the compressed bytes (what the read path decrypts)...
        let seal = mbps(runs, data.len(), || {
            for (i, b) in compressed.iter().enumerate() {
                let mut v = b.clone();
                c.seal(frame_nonce(i as u32), b"aad", &mut v);
                std::hint::black_box(v);
            }
        });
        let open = mbps(runs, data.len(), || {
            for (i, s) in sealed.iter().enumerate() {
                let mut v = s.clone();
                std::hint::black_box(c.open(frame_nonce(i as u32), b"aad", &mut v).unwrap());
            }
        });
        // ...and on raw bytes, the cipher's own speed.
        let raw_open = mbps(runs, data.len(), || {
            for (i, f) in frames.iter().enumerate() {
                let mut v = f.to_vec();
                c.seal(frame_nonce(i as u32), b"aad", &mut v);
                std::hint::black_box(v);
            }
        });
        aes.push((imp, seal, open, raw_open));
    }
    println!();
    println!("| per core, MB/s of raw data | encode | decode |");
    println!("|---|---:|---:|");
    println!("| raw zstd-1 (ratio {ratio:.2}x) | {zc:.0} | {zd:.0} |");
    for (imp, seal, open, raw) in &aes {
        println!("| raw AES-256-GCM {imp:?} on the compressed frames (on raw bytes: {raw:.0}) | {seal:.0} | {open:.0} |");
    }
    let mut codec_rows = Vec::new();
    for imp in [CipherImpl::AwsLc, CipherImpl::RustCrypto] {
        let opts = FormatOptions {
            cipher: imp,
            ..Default::default()
        };
        let codec =
            ObjectCodec::for_writing("bench/object", new_object_id(), &opts, &keys).unwrap();
        let enc = mbps(runs, data.len(), || {
            for (i, f) in frames.iter().enumerate() {
                std::hint::black_box(codec.encode_frame(i as u32, f));
            }
        });
        // Decode through a real object layout so the index is the real one.
        let (obj, _) =
            yezzey_storage::format::encode_all("bench/object", &data, &opts, &keys).unwrap();
        let layout = match yezzey_storage::format::ObjectLayout::parse_tail(
            "bench/object",
            obj.len() as u64,
            &obj,
            &keys,
            imp,
        )
        .unwrap()
        {
            yezzey_storage::format::TailParse::Complete(l) => l,
            _ => unreachable!(),
        };
        let dec = mbps(runs, data.len(), || {
            for (i, f) in layout.frames.iter().enumerate() {
                let mut stored = obj[f.range().start as usize..f.range().end as usize].to_vec();
                std::hint::black_box(layout.decode_frame(i, &mut stored).unwrap());
            }
        });
        println!("| yezzey format v1, zstd-1 + {imp:?} | {enc:.0} | {dec:.0} |");
        codec_rows.push((imp, enc, dec));
    }
    let best_open = aes.iter().map(|a| a.2).fold(0.0, f64::max);
    let best_seal = aes.iter().map(|a| a.1).fold(0.0, f64::max);
    let limit_dec = 1.0 / (1.0 / zd + 1.0 / best_open);
    let limit_enc = 1.0 / (1.0 / zc + 1.0 / best_seal);
    let (_, enc, dec) = codec_rows[0];
    println!();
    println!("physical limit (raw zstd-1 + fastest AES-GCM, same data): encode {limit_enc:.0} MB/s, decode {limit_dec:.0} MB/s");
    println!(
        "format v1 (default cipher) vs limit: encode {:.3}x, decode {:.3}x (target decode >= 0.90)",
        enc / limit_enc,
        dec / limit_dec
    );
    println!(
        "aws-lc-rs vs RustCrypto, whole decode: {:.2}x",
        codec_rows[0].2 / codec_rows[1].2
    );

    // --- cache hits ---
    let dir = tempfile::tempdir().unwrap();
    let cache = FrameCache::open(dir.path(), 1 << 30).unwrap();
    for (i, f) in frames.iter().enumerate().take(32) {
        cache
            .insert("bench/object", i as u32, f, HitCheck::Every)
            .unwrap();
    }
    let n_frames = frames.len().min(32);
    let mut block = vec![0u8; BLOCK_SIZE];
    let mut x = 1u64;
    let blocks_per_frame = FRAME / BLOCK_SIZE;
    let per_block_us = random_block_us(runs, 50_000, n_frames, blocks_per_frame, &mut x, |f, b| {
        assert!(cache.read("bench/object", f as u32, b * BLOCK_SIZE, &mut block));
    });
    println!();
    println!("cache hit, random 8 KiB block, FrameCache::read: {per_block_us:.2} us/block (target < 20 us)");

    // --- S3 (Garage) ---
    let Some(store) = s3_store("bench") else {
        println!("\nS3 part skipped: YEZZEY_S3_ENDPOINT is not set (source the env file scripts/garage.sh writes)");
        return;
    };
    let up_mb = (mb * 4).max(256);
    let big = heap_pages(up_mb << 20);
    let mut up = Vec::new();
    for r in 0..runs.min(3) {
        let name = format!("upload-{r}");
        let t = Instant::now();
        let u = block_on(upload(
            &store,
            &name,
            new_object_id(),
            &keys,
            &UploadOptions::default(),
            &big[..],
            |_| {},
        ))
        .unwrap();
        up.push(big.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
        if r == 0 {
            println!(
                "\nupload {up_mb} MiB (zstd-1, AES-GCM, 16 MiB parts x4): stored {:.1}% of raw",
                100.0 * u.stored_len as f64 / big.len() as f64
            );
        }
    }
    println!(
        "upload to S3: {:.0} MB/s of raw data (median of {})",
        median(up.clone()),
        up.len()
    );

    // Through the reader with a warm cache (includes layout lookup and block_on).
    let r = reader(
        store.clone(),
        &keys,
        Some(FrameCache::open(dir.path(), 1 << 30).unwrap()),
    );
    let warm_frames = 32usize;
    let mut buf = vec![0u8; BLOCK_SIZE];
    for f in 0..warm_frames {
        r.read_blocking("upload-0", (f * FRAME) as u64, &mut buf)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200)); // let readahead settle
    let reader_us = random_block_us(
        runs,
        20_000,
        warm_frames,
        blocks_per_frame,
        &mut x,
        |f, b| {
            r.read_blocking("upload-0", (f * FRAME + b * BLOCK_SIZE) as u64, &mut buf)
                .unwrap();
        },
    );
    println!("cache hit through RemoteReader::read_blocking: {reader_us:.2} us/block");

    let me = std::env::current_exe().unwrap();
    let mut down = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs.min(3) {
        let out = std::process::Command::new(&me)
            .args(["--download-child", "bench", "upload-0", &key.to_hex()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Vec<f64> = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        down.push(v[0]);
        rss.push(v[2]);
    }
    println!(
        "download from S3, sequential 128 KiB reads, no cache: {:.0} MB/s of raw data; peak memory growth while streaming {:.0} MB (target <= 64 MB)",
        median(down),
        median(rss)
    );
    for r in 0..runs.min(3) {
        let _ = block_on(store.delete(&format!("upload-{r}")));
    }
}
