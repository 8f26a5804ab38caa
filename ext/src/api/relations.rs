//! The relations an offload or a load back acts on, and what they need
//! from the buffer manager: the relation itself, its TOAST table and TOAST
//! index, and (unless told otherwise) its indexes; every leaf of a
//! partitioned table. The free space map and visibility map stay local:
//! they are small and read constantly.
use crate::errors;
use crate::pg;
use pgrx::{pg_sys, PgSqlErrorCode};
use yezzey_storage::key::RelFork;

/// OIDs below this are system catalogs and initdb's objects.
const FIRST_NORMAL_OBJECT_ID: u32 = pg_sys::FirstNormalObjectId;

/// A relation with storage that an offload or load acts on.
#[derive(Debug, Clone)]
pub struct Target {
    pub oid: u32,
    pub name: String,
    pub relkind: String,
    pub key: RelFork,
}

impl Target {
    /// Heap pages (tables, TOAST, matviews) keep pd_lower/pd_upper exact.
    pub fn is_heap(&self) -> bool {
        matches!(self.relkind.as_str(), "r" | "m" | "t")
    }
}

fn describe(oid: u32) -> Target {
    let Some(info) = pg::relation(oid) else {
        errors::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("relation with OID {oid} does not exist"),
            "It may have been dropped concurrently.",
        );
    };
    let name = info.name.clone();
    if oid < FIRST_NORMAL_OBJECT_ID {
        errors::error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("cannot offload \"{name}\": it is a system catalog"),
            "Only user relations can be offloaded.",
        );
    }
    match info.persistence.as_str() {
        "t" => errors::error(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot offload temporary relation \"{name}\""),
            "Temporary relations live only as long as their session.",
        ),
        "u" => errors::error(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot offload unlogged relation \"{name}\""),
            "Unlogged relations are reset after a crash; make it logged first: ALTER TABLE ... SET LOGGED.",
        ),
        _ => {}
    }
    // A partitioned table has no files of its own; expand() takes its leaves.
    let key = if info.relkind == "p" {
        Some(RelFork::main(info.spc, info.db, 0))
    } else {
        info.main_fork()
    };
    let Some(key) = key.filter(|_| matches!(info.relkind.as_str(), "r" | "m" | "t" | "i" | "p"))
    else {
        errors::error(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "cannot offload \"{name}\": it has no storage of its own (relkind '{}')",
                info.relkind
            ),
            "Offload tables, materialized views, indexes or partitioned tables.",
        );
    };
    Target {
        oid,
        name,
        relkind: info.relkind,
        key,
    }
}

/// The relation, its TOAST table and index, and optionally its indexes;
/// for a partitioned table, the same for every leaf partition.
pub fn expand(oid: u32, with_indexes: bool) -> Vec<Target> {
    let top = describe(oid);
    let tables: Vec<u32> = if top.relkind == "p" {
        pg::oids(&format!(
            "SELECT relid::bigint FROM pg_partition_tree({oid}) t JOIN pg_class c ON c.oid = t.relid
              WHERE t.isleaf AND c.relkind IN ('r', 'm') ORDER BY 1"
        ))
    } else {
        vec![oid]
    };
    let mut out = Vec::new();
    for t in tables {
        out.push(if t == oid { top.clone() } else { describe(t) });
        let toast = pg::oids(&format!(
            "SELECT reltoastrelid::bigint FROM pg_class WHERE oid = {t} AND reltoastrelid <> 0"
        ));
        for tt in &toast {
            out.push(describe(*tt));
            out.extend(
                pg::oids(&format!(
                    "SELECT indexrelid::bigint FROM pg_index WHERE indrelid = {tt}"
                ))
                .into_iter()
                .map(describe),
            );
        }
        if with_indexes {
            out.extend(
                pg::oids(&format!(
                    "SELECT i.indexrelid::bigint FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                      WHERE i.indrelid = {t} AND c.relkind = 'i' ORDER BY 1"
                ))
                .into_iter()
                .map(describe),
            );
        }
    }
    out.retain(|t| t.relkind != "p");
    out
}

/// Takes ExclusiveLock on every target, held to the end of the
/// transaction: plain readers go on; writers, row locks and VACUUM wait.
pub fn lock_all(targets: &[Target]) {
    for t in targets {
        pg::relation::lock_exclusive(t.oid);
    }
}

/// Flushes the relation's dirty buffers and fsyncs its main fork; returns
/// its length in blocks.
pub fn flush(t: &Target) -> u32 {
    pg::relation::flush(t.oid)
}

/// Pages of a table that the visibility map does not show all-frozen.
/// Reading such pages later sets hint bits.
pub fn unfrozen_pages(t: &Target, nblocks: u32) -> u32 {
    if !t.is_heap() {
        return 0;
    }
    nblocks.saturating_sub(pg::relation::all_frozen_pages(t.oid))
}

/// The segment files of a fork of `nblocks` blocks: (segno, blocks).
pub fn segments_of(nblocks: u32) -> Vec<(u32, u32)> {
    let per = pg::blocks_per_segment();
    (0..nblocks.div_ceil(per))
        .map(|s| (s, (nblocks - s * per).min(per)))
        .collect()
}

pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// How long a switch waits for readers to leave the relation.
const READERS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs an offload's switch `f` with the relation to itself if that can
/// be had: AccessExclusiveLock, waiting up to 5 s for readers (as VACUUM
/// does to truncate a table), and its buffers written out; `f` is told
/// whether it has it (only then may it free the local pages the objects
/// hold). Taken before the switch's record, so standbys take it (from its
/// lock record) before they replay the switch and free their pages.
pub fn switch_alone<R>(t: &Target, f: impl FnOnce(bool) -> R) -> R {
    let alone = pg::relation::try_access_exclusive(t.oid, READERS_PATIENCE);
    if alone {
        pg::relation::flush_all_buffers(t.key);
    } else {
        pgrx::notice!(
            "yezzey: \"{}\" stayed in use (readers, or writers waiting for the offload) for {} s: its local pages are freed by its next offload",
            t.name,
            READERS_PATIENCE.as_secs()
        );
    }
    let r = f(alone);
    if alone {
        pg::relation::release_access_exclusive(t.oid);
    }
    r
}
