//! Catalog facts about relations and databases, and the standby horizon,
//! read through SPI (SQL-callable functions only: the I/O path never
//! touches the catalog).
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use yezzey_storage::key::{Lsn, RelFork};

/// A relation's identity and where its files are.
#[derive(Debug, Clone)]
pub struct RelInfo {
    pub name: String,
    pub relkind: String,
    pub persistence: String,
    /// Tablespace, with 0 (the database default) resolved.
    pub spc: u32,
    pub db: u32,
    /// None for relations without storage (views, partitioned tables).
    pub relnumber: Option<u32>,
}

impl RelInfo {
    /// The main fork, for relations with storage.
    pub fn main_fork(&self) -> Option<RelFork> {
        self.relnumber.map(|r| RelFork::main(self.spc, self.db, r))
    }
}

fn spi_error(e: pgrx::spi::Error) -> ! {
    crate::errors::error(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("yezzey: catalog lookup failed: {e}"),
        "This is a bug in yezzey; please report it.",
    )
}

/// None if no relation has this OID (e.g. dropped concurrently).
pub fn relation(oid: u32) -> Option<RelInfo> {
    let q = format!(
        "SELECT c.oid::regclass::text, c.relkind::text, c.relpersistence::text,
                (CASE WHEN c.reltablespace = 0 THEN d.dattablespace ELSE c.reltablespace END)::bigint,
                d.oid::bigint, pg_relation_filenode(c.oid)::bigint
           FROM pg_class c, pg_database d
          WHERE c.oid = {oid} AND d.datname = current_database()"
    );
    Spi::connect(|c| {
        let mut out = None;
        for r in c.select(&q, None, &[])? {
            out = Some(RelInfo {
                name: r.get::<String>(1)?.unwrap_or_default(),
                relkind: r.get::<String>(2)?.unwrap_or_default(),
                persistence: r.get::<String>(3)?.unwrap_or_default(),
                spc: r.get::<i64>(4)?.unwrap_or(0) as u32,
                db: r.get::<i64>(5)?.unwrap_or(0) as u32,
                relnumber: r.get::<i64>(6)?.map(|n| n as u32),
            });
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| spi_error(e))
}

/// The OIDs a query's first column returns.
pub fn oids(query: &str) -> Vec<u32> {
    Spi::connect(|c| {
        let mut v = Vec::new();
        for r in c.select(query, None, &[])? {
            if let Some(o) = r.get::<i64>(1)? {
                v.push(o as u32);
            }
        }
        Ok::<_, pgrx::spi::Error>(v)
    })
    .unwrap_or_else(|e| spi_error(e))
}

/// The first column of the first row of a query, as bigint; read-only
/// SPI, so it also works on a standby (a read-write SPI call there fails
/// assigning a transaction id).
pub fn select_i64(query: &str) -> Option<i64> {
    Spi::connect(|c| c.select(query, Some(1), &[])?.first().get_one::<i64>())
        .unwrap_or_else(|e| spi_error(e))
}

/// Whether a database exists, from the catalog as it is now (not from the
/// transaction's snapshot: a database created since must count).
pub fn database_exists(db: u32) -> bool {
    // SAFETY: a syscache probe from a backend inside a transaction.
    unsafe {
        pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::DATABASEOID as i32,
            pg_sys::Datum::from(db),
            pg_sys::Datum::from(0usize),
            pg_sys::Datum::from(0usize),
            pg_sys::Datum::from(0usize),
        )
    }
}

/// The oldest position a connected standby reports having replayed
/// (`pg_stat_replication.replay_lsn`; a delayed standby reports its real,
/// delayed position). A standby that has not sent its first reply yet
/// counts as having replayed nothing. Replication slots are not used:
/// their restart_lsn is what a receiver has flushed, not replayed; and a
/// receiver that replies without a replay position (pg_receivewal,
/// Barman's streaming) never replays, so it holds nothing. None when no
/// connected standby holds anything.
pub fn standby_horizon() -> Option<Lsn> {
    select_i64(
        "SELECT (min(coalesce(replay_lsn, '0/0')) - '0/0'::pg_lsn)::bigint FROM pg_stat_replication
          WHERE replay_lsn IS NOT NULL OR reply_time IS NULL",
    )
    .map(|l| Lsn(l as u64))
}

/// This server's physical replication slots (standbys that stream from
/// it name theirs in their lineage records).
pub fn physical_slots() -> std::collections::HashSet<String> {
    Spi::connect(|c| {
        let mut out = std::collections::HashSet::new();
        for r in c.select(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical'",
            None,
            &[],
        )? {
            if let Some(s) = r.get::<String>(1)? {
                out.insert(s);
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| spi_error(e))
}
