//! Typed keys shared by the object names, the durable state and the read
//! path: a relation fork, a WAL position, a lineage member, an object id.
//! Each serialises the way yezzey's JSON files and WAL records have always
//! spelled it (plain integers and hex strings), so typed code reads the
//! files older builds wrote.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// PostgreSQL's block size, the unit of every relation file (`BLCKSZ`).
pub const BLOCK_SIZE: usize = 8192;

/// A relation fork number: 0 main, 1 free space map, 2 visibility map, 3 init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fork(pub u8);

impl Fork {
    pub const MAIN: Fork = Fork(0);

    /// PostgreSQL's names, indexed by fork number.
    pub const NAMES: [&'static str; 4] = ["main", "fsm", "vm", "init"];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("unknown")
    }

    pub fn from_name(name: &str) -> Option<Fork> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Fork(i as u8))
    }

    /// The fork as PostgreSQL's `ForkNumber` (a C int).
    pub fn as_i32(self) -> i32 {
        self.0 as i32
    }
}

/// Where one relation fork's files are: tablespace, database,
/// relfilenumber and fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RelFork {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    pub fork: Fork,
}

impl RelFork {
    pub const fn main(spc: u32, db: u32, rel: u32) -> RelFork {
        RelFork {
            spc,
            db,
            rel,
            fork: Fork::MAIN,
        }
    }
}

impl fmt::Display for RelFork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{} ({})",
            self.spc,
            self.db,
            self.rel,
            self.fork.name()
        )
    }
}

/// A WAL position, shown as PostgreSQL shows a `pg_lsn` (`16/B374D848`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

/// One cluster of a lineage (an origin, a restored backup, a clone, a
/// promoted standby: clusters that share a system identifier and so an
/// object prefix). Random, never zero; spelled as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(pub u64);

impl MemberId {
    /// A fresh random id.
    pub fn random() -> MemberId {
        loop {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).expect("OS random source");
            let v = u64::from_le_bytes(b);
            if v != 0 {
                return MemberId(v);
            }
        }
    }

    pub fn parse(s: &str) -> Option<MemberId> {
        let s = s.strip_prefix('m').unwrap_or(s);
        (s.len() == 16)
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
            .filter(|v| *v != 0)
            .map(MemberId)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for MemberId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MemberId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MemberId::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a member id")))
    }
}

/// An object's random 128-bit id (in its name and its trailer; its
/// encryption key is derived from it). Spelled as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectId(pub [u8; 16]);

impl ObjectId {
    pub fn random() -> ObjectId {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).expect("OS random source");
        ObjectId(id)
    }

    pub fn parse(s: &str) -> Option<ObjectId> {
        hex::decode(s).ok()?.try_into().ok().map(ObjectId)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ObjectId::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an object id")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0x1484_9F90).to_string(), "0/14849F90");
        let m = MemberId(0xab);
        assert_eq!(m.to_string(), "00000000000000ab");
        assert_eq!(MemberId::parse("m00000000000000ab"), Some(m));
        assert_eq!(MemberId::parse("0000000000000000"), None);
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"00000000000000ab\"");
        let id = ObjectId([7; 16]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ObjectId>(&json).unwrap(), id);
        assert_eq!(Fork::from_name("vm"), Some(Fork(2)));
        assert_eq!(serde_json::to_string(&Fork::MAIN).unwrap(), "0");
    }
}
