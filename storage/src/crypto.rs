//! AES-256-GCM behind one small interface, with two implementations so the
//! benchmark can compare them on the same data: aws-lc-rs (the default: it
//! measured ~6x faster per core here, and is already in the S3 client's
//! dependency tree) and RustCrypto's `aes-gcm`.
//!
//! Every object gets its own key, derived from the master key and the
//! object's random 128-bit id, so per-frame nonces can simply be counters:
//! nonce reuse across objects is impossible by construction.
use aws_lc_rs::{aead, hmac};

pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
pub const NONCE_LEN: usize = 12;

/// Which AES-GCM implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CipherImpl {
    #[default]
    AwsLc,
    RustCrypto,
}

impl std::str::FromStr for CipherImpl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "aws-lc" | "aws-lc-rs" => Ok(CipherImpl::AwsLc),
            "rustcrypto" | "aes-gcm" => Ok(CipherImpl::RustCrypto),
            _ => Err(format!(
                "unknown cipher implementation {s:?} (aws-lc, rustcrypto)"
            )),
        }
    }
}

/// An AES-256-GCM key ready to seal and open.
pub enum Cipher {
    AwsLc(aead::LessSafeKey),
    RustCrypto(Box<aes_gcm::Aes256Gcm>),
}

/// Decryption failed: wrong key, or the bytes or their context were altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthError;

impl Cipher {
    pub fn new(imp: CipherImpl, key: &[u8; KEY_LEN]) -> Cipher {
        match imp {
            CipherImpl::AwsLc => {
                let k = aead::UnboundKey::new(&aead::AES_256_GCM, key).expect("32-byte key");
                Cipher::AwsLc(aead::LessSafeKey::new(k))
            }
            CipherImpl::RustCrypto => {
                use aes_gcm::KeyInit;
                Cipher::RustCrypto(Box::new(aes_gcm::Aes256Gcm::new(key.into())))
            }
        }
    }

    /// Encrypts `buf` in place and appends the 16-byte tag.
    pub fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) {
        match self {
            Cipher::AwsLc(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(aad),
                        buf.as_mut_slice(),
                    )
                    .expect("AES-GCM seal");
                buf.extend_from_slice(tag.as_ref());
            }
            Cipher::RustCrypto(k) => {
                use aes_gcm::aead::AeadInPlace;
                let tag = k
                    .encrypt_in_place_detached((&nonce).into(), aad, buf.as_mut_slice())
                    .expect("AES-GCM seal");
                buf.extend_from_slice(&tag);
            }
        }
    }

    /// Authenticates and decrypts `buf` (ciphertext followed by its tag) in
    /// place; returns the plaintext length.
    pub fn open(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, AuthError> {
        if buf.len() < TAG_LEN {
            return Err(AuthError);
        }
        match self {
            Cipher::AwsLc(k) => k
                .open_in_place(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    buf,
                )
                .map(|p| p.len())
                .map_err(|_| AuthError),
            Cipher::RustCrypto(k) => {
                use aes_gcm::aead::AeadInPlace;
                let n = buf.len() - TAG_LEN;
                let (data, tag) = buf.split_at_mut(n);
                k.decrypt_in_place_detached(
                    (&nonce).into(),
                    aad,
                    data,
                    aes_gcm::Tag::from_slice(tag),
                )
                .map(|_| n)
                .map_err(|_| AuthError)
            }
        }
    }
}

/// HMAC-SHA256, used for key derivation and key ids.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The key that encrypts one object's frames.
pub fn object_key(master: &[u8; KEY_LEN], object_id: &[u8; 16]) -> [u8; KEY_LEN] {
    hmac_sha256(master, &[b"yezzey object key v1", object_id])
}

/// Frame `i`'s nonce under a per-object key.
pub fn frame_nonce(i: u32) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[8..].copy_from_slice(&i.to_be_bytes());
    n
}

/// The nonce of the footer's authentication tag (never a frame's).
pub fn footer_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[0] = 1;
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_impls_agree_and_reject_tampering() {
        let key = [7u8; KEY_LEN];
        for imp in [CipherImpl::AwsLc, CipherImpl::RustCrypto] {
            let c = Cipher::new(imp, &key);
            let mut buf = b"hello frames".to_vec();
            c.seal(frame_nonce(3), b"aad", &mut buf);
            // Same ciphertext from the other implementation.
            let other = Cipher::new(
                if imp == CipherImpl::AwsLc {
                    CipherImpl::RustCrypto
                } else {
                    CipherImpl::AwsLc
                },
                &key,
            );
            let mut copy = buf.clone();
            let n = other.open(frame_nonce(3), b"aad", &mut copy).unwrap();
            assert_eq!(&copy[..n], b"hello frames");
            // Wrong nonce, wrong aad, flipped bit: all rejected.
            assert_eq!(
                c.open(frame_nonce(4), b"aad", &mut buf.clone()),
                Err(AuthError)
            );
            assert_eq!(
                c.open(frame_nonce(3), b"aaD", &mut buf.clone()),
                Err(AuthError)
            );
            let mut bad = buf.clone();
            bad[0] ^= 1;
            assert_eq!(c.open(frame_nonce(3), b"aad", &mut bad), Err(AuthError));
        }
    }
}
