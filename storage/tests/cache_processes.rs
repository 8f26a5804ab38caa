//! Several processes filling one cache directory at once: the size limit
//! holds (in the shared counter and on disk) and no process ever reads a
//! torn or wrong entry (each verifies every hit's bytes).
use std::process::Command;

#[test]
fn concurrent_processes_respect_the_limit_and_never_read_torn_entries() {
    let dir = tempfile::tempdir().unwrap();
    let limit: u64 = 1 << 20; // ~20 of the 64 distinct frames fit
    let procs: Vec<_> = (0..6)
        .map(|seed| {
            Command::new(env!("CARGO_BIN_EXE_yezzey-tool"))
                .args([
                    "cache-stress",
                    dir.path().to_str().unwrap(),
                    &limit.to_string(),
                    &(seed * 104_729 + 3).to_string(),
                    "3000",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut hits, mut inserts) = (0u64, 0u64);
    for p in procs {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8(out.stdout).unwrap();
        let mut it = s.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        hits += it.next().unwrap();
        inserts += it.next().unwrap();
    }
    assert!(
        hits > 1000 && inserts > 100,
        "hits {hits}, inserts {inserts}: the workload did not exercise the cache"
    );
    let cache = yezzey_storage::cache::FrameCache::open(dir.path(), limit).unwrap();
    let on_disk = cache.disk_usage().unwrap();
    assert!(
        on_disk <= limit,
        "{on_disk} bytes on disk over the {limit} limit"
    );
    assert!(cache.stats().used_bytes <= limit);
    assert!(cache.stats().evictions > 0);
}
