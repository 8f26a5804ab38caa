//! Catalog facts about one relation, read through SPI (SQL-callable
//! functions only: the I/O path never touches the catalog).
use pgrx::prelude::*;

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
    .unwrap_or_else(|e| error!("yezzey: catalog lookup failed: {e}"))
}

/// The first column of the first row of a query, as bigint; read-only
/// SPI, so it also works on a standby (a read-write SPI call there fails
/// assigning a transaction id).
pub fn select_i64(query: &str) -> Result<Option<i64>, pgrx::spi::Error> {
    Spi::connect(|c| c.select(query, Some(1), &[])?.first().get_one::<i64>())
}

/// `pg_relation_size` of the main fork (0 if it cannot be read).
pub fn relation_size(oid: u32) -> i64 {
    select_i64(&format!("SELECT pg_relation_size({oid})"))
        .ok()
        .flatten()
        .unwrap_or(0)
}
