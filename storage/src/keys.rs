//! Encryption keys. A key ring holds the current key (used for new objects)
//! and any number of older ones (still readable), so keys can be rotated by
//! prepending a new key to the key file. Each key's id is derived from the
//! key itself, so ids never need managing and never collide by accident.
//!
//! Key file format: one key per line, 64 hex digits (256 bits); `#` starts a
//! comment; the first key is current.
use crate::crypto::{hmac_sha256, KEY_LEN};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

#[derive(Clone)]
pub struct Key {
    pub id: u32,
    pub bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:08x})", self.id)
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        let h = hmac_sha256(&bytes, &[b"yezzey key id v1"]);
        let id = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        Key { id, bytes }
    }

    pub fn from_hex(s: &str) -> Result<Key> {
        let s = s.trim();
        let v = hex::decode(s)
            .map_err(|_| Error::BadKey("key must be 64 hexadecimal digits".into()))?;
        let bytes: [u8; KEY_LEN] = v.try_into().map_err(|v: Vec<u8>| {
            Error::BadKey(format!("key is {} bits, expected 256", v.len() * 8))
        })?;
        Ok(Key::from_bytes(bytes))
    }

    /// A fresh random key (for `yezzey-tool keygen` and tests).
    pub fn generate() -> Key {
        let mut b = [0u8; KEY_LEN];
        getrandom::fill(&mut b).expect("OS random source");
        Key::from_bytes(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }
}

#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    current: Option<u32>,
    keys: HashMap<u32, Key>,
}

impl KeyRing {
    /// No keys: objects are written unencrypted (still checksummed).
    pub fn none() -> KeyRing {
        KeyRing::default()
    }

    pub fn new(keys: impl IntoIterator<Item = Key>) -> KeyRing {
        let mut ring = KeyRing::default();
        for k in keys {
            ring.current.get_or_insert(k.id);
            ring.keys.insert(k.id, k);
        }
        ring
    }

    pub fn parse(text: &str) -> Result<KeyRing> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            keys.push(
                Key::from_hex(line).map_err(|e| Error::BadKey(format!("line {}: {e}", n + 1)))?,
            );
        }
        if keys.is_empty() {
            return Err(Error::BadKey("key file holds no key".into()));
        }
        Ok(KeyRing::new(keys))
    }

    pub fn from_file(path: &Path) -> Result<KeyRing> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        KeyRing::parse(&text).map_err(|e| Error::BadKey(format!("{}: {e}", path.display())))
    }

    /// The key new objects are encrypted with, if any.
    pub fn current(&self) -> Option<&Key> {
        self.current.and_then(|id| self.keys.get(&id))
    }

    pub fn get(&self, id: u32) -> Option<&Key> {
        self.keys.get(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rotation_and_errors() {
        let a = Key::generate();
        let b = Key::generate();
        let ring =
            KeyRing::parse(&format!("# new\n{}\n\n{}  # old\n", b.to_hex(), a.to_hex())).unwrap();
        assert_eq!(ring.current().unwrap().id, b.id);
        assert!(ring.get(a.id).is_some());
        assert_ne!(a.id, b.id);
        assert!(KeyRing::parse("abcd").is_err());
        assert!(KeyRing::parse("# nothing\n").is_err());
        assert!(KeyRing::parse(&"zz".repeat(32)).is_err());
    }
}
