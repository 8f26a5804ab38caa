//! The segment object format, version 1.
//!
//! One uploaded segment file becomes one immutable object:
//!
//! ```text
//! +-----------+----------+-----+--------------+--------------+-------------+
//! | lead (8)  | frame 0  | ... | frame n-1    | footer index | trailer(128)|
//! +-----------+----------+-----+--------------+--------------+-------------+
//! ```
//!
//! * **lead**: `b"YEZZEY\0\x01"`, so a stray object is recognisable from its
//!   first bytes.
//! * **frames**: the file cut into fixed raw-size pieces (`frame_size`, default
//!   1 MiB, a multiple of 8 KiB; the last may be shorter). Each is compressed
//!   with zstd (stored raw instead if compression does not shrink it), then
//!   followed by a 16-byte tag: with a key, encrypted with AES-256-GCM and
//!   the GCM tag; without, the xxh3_128 of the frame's associated data and
//!   bytes. Frames decode independently, so any 8 KiB block costs one
//!   range GET of one frame once the footer is known.
//! * **footer index**: `frame_count` entries of 24 bytes, little-endian:
//!   `offset u64 | stored_len u32 | raw_len u32 (bit 31: stored uncompressed)
//!   | xxh3_64(raw frame) u64`.
//! * **trailer** (128 bytes, little-endian): magic `b"YZTRAIL1"` (0..8),
//!   format version u16 (8), flags u16 (10; bit 0 encrypted, bit 1
//!   compressed), frame_size u32 (12), frame_count u32 (16), key id u32 (20),
//!   raw_len u64 (24), footer offset u64 (32), footer length u32 (40), zstd
//!   level i32 (44), object id [16] (48), xxh3_128 of the raw file [16] (64),
//!   footer authenticator [16] (80), then (96..120) zeros, or for a layer
//!   object (flag bit 2) its run count u32 (96), its base object's id [16]
//!   (100) and its layer number u32 (116), and the magic again (120..128).
//!
//! **Layer objects.** A re-offload uploads only the blocks of a segment
//! that changed since the segment's objects were written, as a *layer*
//! over the segment's *base* object (`state::map`, `layers`). Its raw bytes
//! are the changed blocks one after another, in block order; its footer
//! index is followed by its block runs, 8 bytes each, little-endian:
//! `start u32 | len u32` (segment block numbers, ascending, not
//! overlapping, none empty, adding up to the raw length), and then 8
//! bytes: `blocks u32 | 0 u32`, the segment's length in blocks when the
//! layer was written (at least the last run's end: a map rebuilt from the
//! objects takes the newest layer's, which a truncation since the base
//! may have made shorter than the base). The runs are part of the footer, so the footer authenticator covers them, and the base id
//! and layer number in the trailer: a layer cannot be passed off as
//! another's or as lying over another base.
//!
//! The trailer comes last so that one suffix-range GET (`bytes=-65536`) reads
//! the trailer and, for segments up to 2.6 GiB at 1 MiB frames, the whole
//! index, without knowing the object's size first.
//!
//! **Integrity and binding.** Each object has a random 128-bit id. Its frames
//! are encrypted under a per-object key `HMAC-SHA256(master, id)` with the
//! frame number as nonce, and the associated data of every frame binds the
//! object's logical *name* (the store key below the configured prefix), its
//! id, the frame number and raw length. So frames cannot be swapped between
//! positions or objects, and an object copied or renamed to another segment's
//! name fails to authenticate. The footer authenticator is a GCM tag (empty
//! plaintext) over the name, the trailer (with this field zeroed) and the
//! index; without encryption it is an xxh3_128 of the same bytes, and every
//! frame carries an xxh3_128 tag over its associated data and bytes, and is
//! checked against its xxh3_64 after decoding either way. Any mismatch is
//! [`Error::Corrupt`], never data.
use crate::crypto::{self, Cipher, CipherImpl, TAG_LEN};
use crate::error::{Error, Result};
use crate::keys::KeyRing;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3};

pub const LEAD_MAGIC: [u8; 8] = *b"YEZZEY\0\x01";
pub const LEAD_LEN: u64 = 8;
pub const TRAILER_MAGIC: [u8; 8] = *b"YZTRAIL1";
pub const TRAILER_LEN: usize = 128;
pub const FOOTER_ENTRY_LEN: usize = 24;
pub const FORMAT_VERSION: u16 = 1;
pub use crate::key::BLOCK_SIZE;
pub const DEFAULT_FRAME_SIZE: u32 = 1 << 20;
pub const MAX_FRAME_SIZE: u32 = 64 << 20;
/// How many bytes from the end a reader fetches first.
pub const TAIL_PREFETCH: u64 = 64 * 1024;

const FLAG_ENCRYPTED: u16 = 1;
const FLAG_COMPRESSED: u16 = 2;
const FLAG_LAYER: u16 = 4;
/// Bytes of one block run in a layer object's footer.
pub const RUN_LEN: usize = 8;
const RAW_STORED_BIT: u32 = 1 << 31;

/// How objects are written.
#[derive(Debug, Clone, Copy)]
pub struct FormatOptions {
    pub frame_size: u32,
    /// zstd level; 0 turns compression off.
    pub zstd_level: i32,
    pub cipher: CipherImpl,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            frame_size: DEFAULT_FRAME_SIZE,
            zstd_level: 1,
            cipher: CipherImpl::default(),
        }
    }
}

impl FormatOptions {
    pub fn validate(&self) -> Result<()> {
        if self.frame_size == 0
            || !self.frame_size.is_multiple_of(BLOCK_SIZE as u32)
            || self.frame_size > MAX_FRAME_SIZE
        {
            return Err(Error::Config(format!(
                "frame size {} must be a multiple of 8192 and at most {MAX_FRAME_SIZE}",
                self.frame_size
            )));
        }
        if !(0..=22).contains(&self.zstd_level) {
            return Err(Error::Config(format!(
                "zstd level {} is outside 0..=22",
                self.zstd_level
            )));
        }
        Ok(())
    }
}

/// One frame's place in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEntry {
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compressed: bool,
    pub checksum: u64,
}

impl FrameEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        let raw = self.raw_len | if self.compressed { 0 } else { RAW_STORED_BIT };
        out.extend_from_slice(&raw.to_le_bytes());
        out.extend_from_slice(&self.checksum.to_le_bytes());
    }

    fn decode(b: &[u8]) -> FrameEntry {
        let raw = u32::from_le_bytes(b[12..16].try_into().unwrap());
        FrameEntry {
            offset: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            stored_len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            raw_len: raw & !RAW_STORED_BIT,
            compressed: raw & RAW_STORED_BIT == 0,
            checksum: u64::from_le_bytes(b[16..24].try_into().unwrap()),
        }
    }

    /// The byte range of this frame within the object.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.stored_len as u64
    }
}

/// Consecutive blocks `[start, start + len)` of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRun {
    pub start: u32,
    pub len: u32,
}

impl BlockRun {
    pub fn end(&self) -> u32 {
        self.start + self.len
    }
}

/// What makes an object a layer: the base it lies over, its place among
/// that base's layers (1 for the first), the blocks it holds, and the
/// segment's length in blocks when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub base: [u8; 16],
    pub seq: u32,
    pub runs: Vec<BlockRun>,
    pub blocks: u32,
}

/// A layer object's trailer fields (its runs are in the footer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerHead {
    pub base: [u8; 16],
    pub seq: u32,
    pub runs: u32,
}

/// A layer's runs, ready for lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerIndex {
    pub head: LayerHead,
    pub runs: Vec<BlockRun>,
    /// The segment's length in blocks when the layer was written.
    pub blocks: u32,
    /// Blocks held by the runs before run `i`.
    before: Vec<u32>,
}

impl LayerIndex {
    fn new(head: LayerHead, runs: Vec<BlockRun>, blocks: u32) -> LayerIndex {
        let before = runs
            .iter()
            .scan(0u32, |acc, r| {
                let b = *acc;
                *acc += r.len;
                Some(b)
            })
            .collect();
        LayerIndex {
            head,
            runs,
            blocks,
            before,
        }
    }

    /// Where block `block` of the segment is in the layer's raw bytes, in
    /// blocks, and how many blocks from there on the layer holds in a row.
    pub fn find(&self, block: u32) -> Option<(u32, u32)> {
        let i = self.runs.partition_point(|r| r.end() <= block);
        let r = self.runs.get(i).filter(|r| r.start <= block)?;
        Some((self.before[i] + block - r.start, r.end() - block))
    }

    /// The first block at or after `block` that the layer holds.
    pub fn next_at_or_after(&self, block: u32) -> Option<u32> {
        let i = self.runs.partition_point(|r| r.end() <= block);
        self.runs.get(i).map(|r| r.start.max(block))
    }

    /// Blocks the layer holds.
    pub fn held(&self) -> u64 {
        self.runs.iter().map(|r| r.len as u64).sum()
    }
}

/// The fixed-size record at the end of every object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    pub version: u16,
    pub encrypted: bool,
    pub compressed: bool,
    pub frame_size: u32,
    pub frame_count: u32,
    pub key_id: u32,
    pub raw_len: u64,
    pub footer_offset: u64,
    pub footer_len: u32,
    pub zstd_level: i32,
    pub object_id: [u8; 16],
    pub raw_checksum: [u8; 16],
    pub footer_auth: [u8; 16],
    /// Set for a layer object.
    pub layer: Option<LayerHead>,
}

impl Trailer {
    fn to_bytes(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[0..8].copy_from_slice(&TRAILER_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        let flags = if self.encrypted { FLAG_ENCRYPTED } else { 0 }
            | if self.compressed { FLAG_COMPRESSED } else { 0 }
            | if self.layer.is_some() { FLAG_LAYER } else { 0 };
        b[10..12].copy_from_slice(&flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.frame_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.frame_count.to_le_bytes());
        b[20..24].copy_from_slice(&self.key_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.raw_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.footer_offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.footer_len.to_le_bytes());
        b[44..48].copy_from_slice(&self.zstd_level.to_le_bytes());
        b[48..64].copy_from_slice(&self.object_id);
        b[64..80].copy_from_slice(&self.raw_checksum);
        b[80..96].copy_from_slice(&self.footer_auth);
        if let Some(l) = &self.layer {
            b[96..100].copy_from_slice(&l.runs.to_le_bytes());
            b[100..116].copy_from_slice(&l.base);
            b[116..120].copy_from_slice(&l.seq.to_le_bytes());
        }
        b[120..128].copy_from_slice(&TRAILER_MAGIC);
        b
    }

    fn from_bytes(name: &str, b: &[u8]) -> Result<Trailer> {
        if b.len() != TRAILER_LEN || b[0..8] != TRAILER_MAGIC || b[120..128] != TRAILER_MAGIC {
            return Err(Error::corrupt(
                name,
                "not a yezzey object (trailer magic missing)",
            ));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(Error::corrupt(
                name,
                format!("object format version {version} is not supported (this build reads version {FORMAT_VERSION})"),
            ));
        }
        let flags = u16::from_le_bytes([b[10], b[11]]);
        let is_layer = flags & FLAG_LAYER != 0;
        if flags & !(FLAG_ENCRYPTED | FLAG_COMPRESSED | FLAG_LAYER) != 0
            || (!is_layer && b[96..120].iter().any(|&x| x != 0))
        {
            return Err(Error::corrupt(
                name,
                "unknown flags or reserved bytes set in trailer",
            ));
        }
        let layer = is_layer.then(|| LayerHead {
            runs: u32_at(96),
            base: b[100..116].try_into().unwrap(),
            seq: u32_at(116),
        });
        Ok(Trailer {
            version,
            encrypted: flags & FLAG_ENCRYPTED != 0,
            compressed: flags & FLAG_COMPRESSED != 0,
            frame_size: u32_at(12),
            frame_count: u32_at(16),
            key_id: u32_at(20),
            raw_len: u64_at(24),
            footer_offset: u64_at(32),
            footer_len: u32_at(40),
            zstd_level: i32::from_le_bytes(b[44..48].try_into().unwrap()),
            object_id: b[48..64].try_into().unwrap(),
            raw_checksum: b[64..80].try_into().unwrap(),
            footer_auth: b[80..96].try_into().unwrap(),
            layer,
        })
    }

    pub fn object_id_hex(&self) -> String {
        hex::encode(self.object_id)
    }

    pub fn raw_checksum_hex(&self) -> String {
        hex::encode(self.raw_checksum)
    }
}

/// A fresh random object id.
pub fn new_object_id() -> [u8; 16] {
    crate::key::ObjectId::random().0
}

/// Seals and opens the frames of one object.
pub struct ObjectCodec {
    name: String,
    object_id: [u8; 16],
    cipher: Option<Cipher>,
    key_id: u32,
    zstd_level: i32,
}

/// One frame, encoded and ready to be placed in an object.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub bytes: Vec<u8>,
    pub raw_len: u32,
    pub compressed: bool,
    pub checksum: u64,
}

impl ObjectCodec {
    /// A codec for a new object named `name` with id `object_id` (see
    /// [`new_object_id`]; object names embed the id).
    pub fn for_writing(
        name: &str,
        object_id: [u8; 16],
        opts: &FormatOptions,
        keys: &KeyRing,
    ) -> Result<ObjectCodec> {
        opts.validate()?;
        let (cipher, key_id) = match keys.current() {
            Some(k) => (
                Some(Cipher::new(
                    opts.cipher,
                    &crypto::object_key(&k.bytes, &object_id),
                )),
                k.id,
            ),
            None => (None, 0),
        };
        Ok(ObjectCodec {
            name: name.to_string(),
            object_id,
            cipher,
            key_id,
            zstd_level: opts.zstd_level,
        })
    }

    fn for_reading(
        name: &str,
        t: &Trailer,
        keys: &KeyRing,
        imp: CipherImpl,
    ) -> Result<ObjectCodec> {
        let cipher = if t.encrypted {
            if keys.is_empty() {
                return Err(Error::KeyRequired {
                    name: name.to_string(),
                });
            }
            let k = keys.get(t.key_id).ok_or_else(|| Error::UnknownKey {
                name: name.to_string(),
                key_id: t.key_id,
            })?;
            Some(Cipher::new(
                imp,
                &crypto::object_key(&k.bytes, &t.object_id),
            ))
        } else {
            None
        };
        Ok(ObjectCodec {
            name: name.to_string(),
            object_id: t.object_id,
            cipher,
            key_id: t.key_id,
            zstd_level: t.zstd_level,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn frame_aad(&self, index: u32, raw_len: u32, compressed: bool) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.name.len() + 32);
        aad.extend_from_slice(b"yezzey frame v1\0");
        aad.extend_from_slice(&(self.name.len() as u32).to_le_bytes());
        aad.extend_from_slice(self.name.as_bytes());
        aad.extend_from_slice(&self.object_id);
        aad.extend_from_slice(&index.to_le_bytes());
        aad.extend_from_slice(&raw_len.to_le_bytes());
        aad.push(compressed as u8);
        aad
    }

    /// Compresses and seals frame `index`. Pure: frames may be encoded in
    /// parallel and placed in order afterwards.
    pub fn encode_frame(&self, index: u32, raw: &[u8]) -> EncodedFrame {
        let checksum = xxh3_64(raw);
        let mut bytes = Vec::new();
        let mut compressed = false;
        if self.zstd_level > 0 && !raw.is_empty() {
            let packed = ZSTD.with(|z| z.borrow_mut().compress(raw, self.zstd_level));
            if packed.len() < raw.len() {
                bytes = packed;
                compressed = true;
            }
        }
        if !compressed {
            bytes.extend_from_slice(raw);
        }
        let aad = self.frame_aad(index, raw.len() as u32, compressed);
        bytes.reserve(TAG_LEN);
        match &self.cipher {
            Some(c) => c.seal(crypto::frame_nonce(index), &aad, &mut bytes),
            None => {
                let tag = plain_tag(&aad, &bytes);
                bytes.extend_from_slice(&tag);
            }
        }
        EncodedFrame {
            bytes,
            raw_len: raw.len() as u32,
            compressed,
            checksum,
        }
    }

    /// Authenticates, decrypts and decompresses a frame. `stored` is the
    /// frame's bytes as read from the store; it is decrypted in place.
    pub fn decode_frame(
        &self,
        index: u32,
        entry: &FrameEntry,
        stored: &mut [u8],
    ) -> Result<Vec<u8>> {
        if stored.len() != entry.stored_len as usize {
            return Err(Error::corrupt(
                &self.name,
                format!(
                    "frame {index}: read {} bytes, index says {}",
                    stored.len(),
                    entry.stored_len
                ),
            ));
        }
        let aad = self.frame_aad(index, entry.raw_len, entry.compressed);
        let failed = || {
            Error::corrupt(
                &self.name,
                format!("frame {index} failed authentication (altered, foreign or wrong key)"),
            )
        };
        let payload: &[u8] = match &self.cipher {
            Some(c) => {
                let n = c
                    .open(crypto::frame_nonce(index), &aad, stored)
                    .map_err(|_| failed())?;
                &stored[..n]
            }
            None => {
                let n = stored.len().checked_sub(TAG_LEN).ok_or_else(failed)?;
                if plain_tag(&aad, &stored[..n]) != stored[n..] {
                    return Err(failed());
                }
                &stored[..n]
            }
        };
        let raw = if entry.compressed {
            ZSTD.with(|z| z.borrow_mut().decompress(payload, entry.raw_len as usize))
                .map_err(|e| Error::corrupt(&self.name, format!("frame {index}: zstd: {e}")))?
        } else {
            payload.to_vec()
        };
        if raw.len() != entry.raw_len as usize || xxh3_64(&raw) != entry.checksum {
            return Err(Error::corrupt(
                &self.name,
                format!("frame {index}: checksum mismatch"),
            ));
        }
        Ok(raw)
    }

    fn footer_auth(&self, trailer: &Trailer, footer: &[u8]) -> [u8; 16] {
        let mut t = trailer.clone();
        t.footer_auth = [0; 16];
        let mut input = Vec::with_capacity(self.name.len() + TRAILER_LEN + footer.len() + 24);
        input.extend_from_slice(b"yezzey footer v1");
        input.extend_from_slice(&(self.name.len() as u32).to_le_bytes());
        input.extend_from_slice(self.name.as_bytes());
        input.extend_from_slice(&t.to_bytes());
        input.extend_from_slice(footer);
        match &self.cipher {
            Some(c) => {
                let mut tag = Vec::with_capacity(TAG_LEN);
                c.seal(crypto::footer_nonce(), &input, &mut tag);
                tag.try_into().unwrap()
            }
            None => xxh3_128(&input).to_le_bytes(),
        }
    }
}

/// The tag of an unencrypted frame: detects any change to its bytes (a
/// flip in zstd's unused bits would otherwise decode to the same output) and
/// binds it to its object and position like the GCM tag does.
fn plain_tag(aad: &[u8], payload: &[u8]) -> [u8; TAG_LEN] {
    let mut h = Xxh3::new();
    h.update(aad);
    h.update(payload);
    h.digest128().to_le_bytes()
}

/// Per-thread zstd contexts: creating one per frame costs more than a small frame's compression.
struct Zstd {
    comp: Option<(i32, zstd::bulk::Compressor<'static>)>,
    decomp: zstd::bulk::Decompressor<'static>,
}

impl Zstd {
    fn compress(&mut self, raw: &[u8], level: i32) -> Vec<u8> {
        if self.comp.as_ref().map(|c| c.0) != Some(level) {
            self.comp = Some((
                level,
                zstd::bulk::Compressor::new(level).expect("zstd context"),
            ));
        }
        self.comp
            .as_mut()
            .unwrap()
            .1
            .compress(raw)
            .expect("zstd compress")
    }

    fn decompress(&mut self, data: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
        self.decomp.decompress(data, raw_len)
    }
}

thread_local! {
    static ZSTD: std::cell::RefCell<Zstd> = std::cell::RefCell::new(Zstd {
        comp: None,
        decomp: zstd::bulk::Decompressor::new().expect("zstd context"),
    });
}

/// Assembles an object from frames added in order. The caller moves the
/// returned byte chunks to the store (possibly as multipart upload parts).
pub struct ObjectWriter {
    codec: std::sync::Arc<ObjectCodec>,
    frame_size: u32,
    entries: Vec<FrameEntry>,
    offset: u64,
    raw_len: u64,
    hasher: Xxh3,
    layer: Option<Layer>,
}

impl ObjectWriter {
    /// Returns the writer and the object's first bytes.
    pub fn new(
        codec: std::sync::Arc<ObjectCodec>,
        opts: &FormatOptions,
    ) -> (ObjectWriter, Vec<u8>) {
        let w = ObjectWriter {
            codec,
            frame_size: opts.frame_size,
            entries: Vec::new(),
            offset: LEAD_LEN,
            raw_len: 0,
            hasher: Xxh3::new(),
            layer: None,
        };
        (w, LEAD_MAGIC.to_vec())
    }

    /// Makes the object a layer holding `layer.runs`, whose blocks are its
    /// raw bytes in order (checked by [`finish`](Self::finish)).
    pub fn set_layer(&mut self, layer: Layer) {
        self.layer = Some(layer);
    }

    pub fn codec(&self) -> &std::sync::Arc<ObjectCodec> {
        &self.codec
    }

    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Places the next frame; `raw` is its original bytes (for the whole-file
    /// checksum), `frame` what [`ObjectCodec::encode_frame`] made of them.
    /// Returns the bytes to append to the object.
    pub fn push(&mut self, raw: &[u8], frame: EncodedFrame) -> Vec<u8> {
        debug_assert_eq!(raw.len(), frame.raw_len as usize);
        assert!(
            self.entries
                .last()
                .is_none_or(|e| e.raw_len == self.frame_size),
            "only the last frame may be short"
        );
        self.hasher.update(raw);
        self.raw_len += raw.len() as u64;
        self.entries.push(FrameEntry {
            offset: self.offset,
            stored_len: frame.bytes.len() as u32,
            raw_len: frame.raw_len,
            compressed: frame.compressed,
            checksum: frame.checksum,
        });
        self.offset += frame.bytes.len() as u64;
        frame.bytes
    }

    /// Finishes the object: returns the footer index and trailer bytes, and the trailer.
    pub fn finish(self) -> (Vec<u8>, Trailer) {
        let mut footer = Vec::with_capacity(self.entries.len() * FOOTER_ENTRY_LEN + TRAILER_LEN);
        for e in &self.entries {
            e.encode(&mut footer);
        }
        if let Some(l) = &self.layer {
            for r in &l.runs {
                footer.extend_from_slice(&r.start.to_le_bytes());
                footer.extend_from_slice(&r.len.to_le_bytes());
            }
            footer.extend_from_slice(&l.blocks.to_le_bytes());
            footer.extend_from_slice(&0u32.to_le_bytes());
            let held: u64 = l.runs.iter().map(|r| r.len as u64).sum();
            assert_eq!(
                held * BLOCK_SIZE as u64,
                self.raw_len,
                "a layer's runs must add up to its bytes"
            );
            assert!(
                l.runs.last().is_none_or(|r| r.end() <= l.blocks),
                "a layer's runs must lie within its segment's length"
            );
        }
        let mut t = Trailer {
            version: FORMAT_VERSION,
            encrypted: self.codec.cipher.is_some(),
            compressed: self.codec.zstd_level > 0,
            frame_size: self.frame_size,
            frame_count: self.entries.len() as u32,
            key_id: self.codec.key_id,
            raw_len: self.raw_len,
            footer_offset: self.offset,
            footer_len: footer.len() as u32,
            zstd_level: self.codec.zstd_level,
            object_id: self.codec.object_id,
            raw_checksum: self.hasher.digest128().to_le_bytes(),
            footer_auth: [0; 16],
            layer: self.layer.as_ref().map(|l| LayerHead {
                base: l.base,
                seq: l.seq,
                runs: l.runs.len() as u32,
            }),
        };
        t.footer_auth = self.codec.footer_auth(&t, &footer);
        footer.extend_from_slice(&t.to_bytes());
        (footer, t)
    }
}

/// Encodes a whole in-memory file (tests, the CLI, small objects).
pub fn encode_all(
    name: &str,
    raw: &[u8],
    opts: &FormatOptions,
    keys: &KeyRing,
) -> Result<(Vec<u8>, Trailer)> {
    encode_object(name, raw, opts, keys, None)
}

/// Encodes a whole in-memory file, as a layer if `layer` is given (its
/// runs' blocks are `raw`, in order).
pub fn encode_object(
    name: &str,
    raw: &[u8],
    opts: &FormatOptions,
    keys: &KeyRing,
    layer: Option<Layer>,
) -> Result<(Vec<u8>, Trailer)> {
    let codec = std::sync::Arc::new(ObjectCodec::for_writing(name, new_object_id(), opts, keys)?);
    let (mut w, mut out) = ObjectWriter::new(codec, opts);
    if let Some(l) = layer {
        w.set_layer(l);
    }
    for (i, chunk) in raw.chunks(opts.frame_size as usize).enumerate() {
        let f = w.codec().encode_frame(i as u32, chunk);
        out.extend(w.push(chunk, f));
    }
    let (tail, t) = w.finish();
    out.extend(tail);
    Ok((out, t))
}

/// What a reader knows about an object once its footer is read and verified.
pub struct ObjectLayout {
    pub trailer: Trailer,
    pub frames: Vec<FrameEntry>,
    /// A layer object's runs.
    pub layer: Option<LayerIndex>,
    pub object_len: u64,
    codec: ObjectCodec,
}

/// The result of looking at an object's last bytes.
// Returned once per parse and unpacked at once: boxing would only allocate.
#[allow(clippy::large_enum_variant)]
pub enum TailParse {
    Complete(ObjectLayout),
    /// The index starts before the bytes given: fetch from `start` to the end.
    NeedFrom {
        start: u64,
    },
}

impl ObjectLayout {
    /// Parses and verifies the end of an object. `tail` holds the object's
    /// last `tail.len()` bytes and `object_len` is its full length.
    pub fn parse_tail(
        name: &str,
        object_len: u64,
        tail: &[u8],
        keys: &KeyRing,
        imp: CipherImpl,
    ) -> Result<TailParse> {
        let min_len = LEAD_LEN + TRAILER_LEN as u64;
        if object_len < min_len || tail.len() < TRAILER_LEN || tail.len() as u64 > object_len {
            return Err(Error::corrupt(
                name,
                format!("object is {object_len} bytes, too short to be a yezzey object"),
            ));
        }
        let t = Trailer::from_bytes(name, &tail[tail.len() - TRAILER_LEN..])?;
        // A layer's runs, and its segment length entry.
        let layer_len = t.layer.map_or(0, |l| (l.runs as u64 + 1) * RUN_LEN as u64);
        let expect_len = (t.frame_count as u64) * FOOTER_ENTRY_LEN as u64 + layer_len;
        if t.footer_len as u64 != expect_len
            || t.footer_offset + t.footer_len as u64 + TRAILER_LEN as u64 != object_len
            || t.footer_offset < LEAD_LEN
        {
            return Err(Error::corrupt(
                name,
                "trailer does not match the object's length (truncated or appended to)",
            ));
        }
        if t.frame_size == 0
            || t.frame_size % BLOCK_SIZE as u32 != 0
            || t.frame_size > MAX_FRAME_SIZE
        {
            return Err(Error::corrupt(
                name,
                format!("invalid frame size {}", t.frame_size),
            ));
        }
        let need = object_len - t.footer_offset;
        if (tail.len() as u64) < need {
            return Ok(TailParse::NeedFrom {
                start: t.footer_offset,
            });
        }
        let footer = &tail[tail.len() - need as usize..tail.len() - TRAILER_LEN];
        let codec = ObjectCodec::for_reading(name, &t, keys, imp)?;
        if codec.footer_auth(&t, footer) != t.footer_auth {
            return Err(Error::corrupt(
                name,
                "footer failed authentication (altered, foreign object or wrong key)",
            ));
        }
        let (index, run_bytes) = footer.split_at(t.frame_count as usize * FOOTER_ENTRY_LEN);
        let frames: Vec<FrameEntry> = index
            .chunks_exact(FOOTER_ENTRY_LEN)
            .map(FrameEntry::decode)
            .collect();
        let layer = match t.layer {
            None => None,
            Some(head) => Some(parse_runs(name, head, run_bytes, t.raw_len)?),
        };
        // Belt and braces: the layout must tile the object exactly.
        let mut off = LEAD_LEN;
        let mut raw = 0u64;
        for (i, f) in frames.iter().enumerate() {
            let last = i + 1 == frames.len();
            let raw_ok = if last {
                f.raw_len >= 1 && f.raw_len <= t.frame_size
            } else {
                f.raw_len == t.frame_size
            };
            if f.offset != off || !raw_ok || (f.stored_len as usize) < TAG_LEN {
                return Err(Error::corrupt(
                    name,
                    format!("frame index entry {i} is inconsistent"),
                ));
            }
            off += f.stored_len as u64;
            raw += f.raw_len as u64;
        }
        if off != t.footer_offset || raw != t.raw_len {
            return Err(Error::corrupt(
                name,
                "frame index does not add up to the trailer's sizes",
            ));
        }
        Ok(TailParse::Complete(ObjectLayout {
            trailer: t,
            frames,
            layer,
            object_len,
            codec,
        }))
    }

    pub fn name(&self) -> &str {
        self.codec.name()
    }

    /// The frame holding raw byte `offset`.
    pub fn frame_of(&self, offset: u64) -> Option<usize> {
        if offset >= self.trailer.raw_len {
            return None;
        }
        Some((offset / self.trailer.frame_size as u64) as usize)
    }

    /// Raw byte offset where frame `i` starts.
    pub fn frame_start(&self, i: usize) -> u64 {
        i as u64 * self.trailer.frame_size as u64
    }

    pub fn decode_frame(&self, i: usize, stored: &mut [u8]) -> Result<Vec<u8>> {
        let e = self
            .frames
            .get(i)
            .ok_or_else(|| Error::corrupt(self.name(), format!("frame {i} out of range")))?;
        self.codec.decode_frame(i as u32, e, stored)
    }
}

/// A layer's runs and segment length from its footer, checked: runs
/// ascending, apart, none empty, adding up to the object's raw length,
/// within the length.
fn parse_runs(name: &str, head: LayerHead, bytes: &[u8], raw_len: u64) -> Result<LayerIndex> {
    let (bytes, tail) = bytes.split_at(bytes.len() - RUN_LEN);
    let blocks = u32::from_le_bytes(tail[0..4].try_into().unwrap());
    let runs: Vec<BlockRun> = bytes
        .chunks_exact(RUN_LEN)
        .map(|b| BlockRun {
            start: u32::from_le_bytes(b[0..4].try_into().unwrap()),
            len: u32::from_le_bytes(b[4..8].try_into().unwrap()),
        })
        .collect();
    let mut end = 0u64;
    let mut held = 0u64;
    for (i, r) in runs.iter().enumerate() {
        if r.len == 0 || r.start.checked_add(r.len).is_none() || (i > 0 && (r.start as u64) < end) {
            return Err(Error::corrupt(
                name,
                format!("block run {i} of the layer is inconsistent"),
            ));
        }
        end = r.end() as u64;
        held += r.len as u64;
    }
    if held * BLOCK_SIZE as u64 != raw_len {
        return Err(Error::corrupt(
            name,
            "the layer's block runs do not add up to its raw length",
        ));
    }
    if end > blocks as u64 || tail[4..8] != [0; 4] {
        return Err(Error::corrupt(
            name,
            "the layer's segment length is inconsistent with its runs",
        ));
    }
    Ok(LayerIndex::new(head, runs, blocks))
}

/// Decodes a whole in-memory object and checks the whole-file checksum.
pub fn decode_all(name: &str, object: &[u8], keys: &KeyRing, imp: CipherImpl) -> Result<Vec<u8>> {
    let layout = match ObjectLayout::parse_tail(name, object.len() as u64, object, keys, imp)? {
        TailParse::Complete(l) => l,
        TailParse::NeedFrom { .. } => unreachable!("whole object given"),
    };
    if object[..LEAD_LEN as usize] != LEAD_MAGIC {
        return Err(Error::corrupt(name, "lead magic missing"));
    }
    let mut raw = Vec::with_capacity(layout.trailer.raw_len as usize);
    for (i, f) in layout.frames.iter().enumerate() {
        let mut stored = object[f.range().start as usize..f.range().end as usize].to_vec();
        raw.extend(layout.decode_frame(i, &mut stored)?);
    }
    if xxh3_128(&raw).to_le_bytes() != layout.trailer.raw_checksum {
        return Err(Error::corrupt(name, "whole-file checksum mismatch"));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Key;

    fn opts(frame: u32) -> FormatOptions {
        FormatOptions {
            frame_size: frame,
            ..Default::default()
        }
    }

    fn sample(len: usize, seed: u64) -> Vec<u8> {
        // Page-like: runs of repeated bytes and counters, compressible but not trivially.
        let mut x = seed | 1;
        (0..len)
            .map(|i| {
                if i % 64 < 40 {
                    (i / 512) as u8
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
            })
            .collect()
    }

    #[test]
    fn round_trip_sizes_with_and_without_key() {
        let ring = KeyRing::new([Key::generate()]);
        for keys in [KeyRing::none(), ring] {
            for len in [0, 1, 8191, 8192, 16384, 16385, 3 * 16384, 3 * 16384 - 1] {
                let raw = sample(len, len as u64);
                let (obj, t) = encode_all("seg/a", &raw, &opts(16384), &keys).unwrap();
                assert_eq!(t.raw_len, len as u64);
                assert_eq!(t.frame_count as usize, len.div_ceil(16384));
                assert_eq!(
                    decode_all("seg/a", &obj, &keys, CipherImpl::RustCrypto).unwrap(),
                    raw
                );
            }
        }
    }

    #[test]
    fn incompressible_frames_are_stored_raw() {
        let mut raw = vec![0u8; 65536];
        getrandom::fill(&mut raw).unwrap();
        let (obj, _) = encode_all("x", &raw, &opts(16384), &KeyRing::none()).unwrap();
        assert_eq!(
            obj.len(),
            raw.len() + 4 * (TAG_LEN + FOOTER_ENTRY_LEN) + TRAILER_LEN + 8
        );
        assert_eq!(
            decode_all("x", &obj, &KeyRing::none(), CipherImpl::AwsLc).unwrap(),
            raw
        );
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let ring = KeyRing::new([Key::generate()]);
        for keys in [KeyRing::none(), ring] {
            let raw = sample(40000, 9);
            let (obj, _) = encode_all("seg/b", &raw, &opts(16384), &keys).unwrap();
            for i in 0..obj.len() {
                let mut bad = obj.clone();
                bad[i] ^= 0x40;
                assert!(
                    decode_all("seg/b", &bad, &keys, CipherImpl::AwsLc).is_err(),
                    "flip at {i} of {} undetected (encrypted: {})",
                    obj.len(),
                    !keys.is_empty()
                );
            }
        }
    }

    fn layer(runs: &[(u32, u32)]) -> Layer {
        Layer {
            base: [7; 16],
            seq: 3,
            runs: runs
                .iter()
                .map(|&(start, len)| BlockRun { start, len })
                .collect(),
            blocks: 200,
        }
    }

    fn layout_of(name: &str, obj: &[u8], keys: &KeyRing) -> ObjectLayout {
        match ObjectLayout::parse_tail(name, obj.len() as u64, obj, keys, CipherImpl::AwsLc)
            .unwrap()
        {
            TailParse::Complete(l) => l,
            TailParse::NeedFrom { .. } => unreachable!(),
        }
    }

    #[test]
    fn layers_round_trip_and_find_their_blocks() {
        let ring = KeyRing::new([Key::generate()]);
        for keys in [KeyRing::none(), ring] {
            let l = layer(&[(2, 1), (5, 3), (100, 2)]);
            let raw = sample(6 * 8192, 4);
            let (obj, t) =
                encode_object("seg/l", &raw, &opts(16384), &keys, Some(l.clone())).unwrap();
            assert_eq!(
                t.layer,
                Some(LayerHead {
                    base: [7; 16],
                    seq: 3,
                    runs: 3
                })
            );
            assert_eq!(
                decode_all("seg/l", &obj, &keys, CipherImpl::AwsLc).unwrap(),
                raw
            );
            let idx = layout_of("seg/l", &obj, &keys).layer.unwrap();
            assert_eq!(idx.runs, l.runs);
            assert_eq!(idx.blocks, 200);
            assert_eq!(idx.held(), 6);
            assert_eq!(idx.find(0), None);
            assert_eq!(idx.find(2), Some((0, 1)));
            assert_eq!(idx.find(3), None);
            assert_eq!(idx.find(6), Some((2, 2)));
            assert_eq!(idx.find(101), Some((5, 1)));
            assert_eq!(idx.find(102), None);
            assert_eq!(idx.next_at_or_after(3), Some(5));
            assert_eq!(idx.next_at_or_after(6), Some(6));
            assert_eq!(idx.next_at_or_after(102), None);
            // A whole object has no layer.
            let (whole, t) = encode_all("seg/w", &raw, &opts(16384), &keys).unwrap();
            assert_eq!(t.layer, None);
            assert!(layout_of("seg/w", &whole, &keys).layer.is_none());
        }
    }

    #[test]
    #[should_panic(expected = "add up")]
    fn a_layer_whose_runs_miss_its_bytes_is_not_written() {
        let raw = sample(2 * 8192, 4);
        let _ = encode_object(
            "x",
            &raw,
            &opts(16384),
            &KeyRing::none(),
            Some(layer(&[(0, 3)])),
        );
    }

    #[test]
    fn every_flipped_byte_of_a_layer_is_detected() {
        let ring = KeyRing::new([Key::generate()]);
        for keys in [KeyRing::none(), ring] {
            let raw = sample(5 * 8192, 9);
            let l = layer(&[(0, 2), (9, 1), (40, 2)]);
            let (obj, _) =
                encode_object("seg/c", &raw, &opts(16384), &keys, Some(l.clone())).unwrap();
            for i in 0..obj.len() {
                let mut bad = obj.clone();
                bad[i] ^= 0x40;
                let parsed = ObjectLayout::parse_tail(
                    "seg/c",
                    bad.len() as u64,
                    &bad,
                    &keys,
                    CipherImpl::AwsLc,
                );
                assert!(
                    decode_all("seg/c", &bad, &keys, CipherImpl::AwsLc).is_err(),
                    "flip at {i} of {} undetected",
                    obj.len()
                );
                // The runs and the base are read only when authenticated.
                if let Ok(TailParse::Complete(got)) = parsed {
                    let got = got.layer.unwrap();
                    assert_eq!(
                        (got.runs, got.head.base),
                        (l.runs.clone(), l.base),
                        "flip at {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn foreign_name_wrong_key_truncation() {
        let k1 = KeyRing::new([Key::generate()]);
        let k2 = KeyRing::new([Key::generate()]);
        let raw = sample(50000, 3);
        let (obj, _) = encode_all("seg/1", &raw, &opts(16384), &k1).unwrap();
        assert!(matches!(
            decode_all("seg/2", &obj, &k1, CipherImpl::AwsLc),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            decode_all("seg/1", &obj, &k2, CipherImpl::AwsLc),
            Err(Error::UnknownKey { .. })
        ));
        assert!(matches!(
            decode_all("seg/1", &obj, &KeyRing::none(), CipherImpl::AwsLc),
            Err(Error::KeyRequired { .. })
        ));
        for cut in [1, 100, obj.len() - 10] {
            assert!(decode_all("seg/1", &obj[..obj.len() - cut], &k1, CipherImpl::AwsLc).is_err());
        }
        // Unencrypted objects are bound to their name too.
        let (plain, _) = encode_all("seg/1", &raw, &opts(16384), &KeyRing::none()).unwrap();
        assert!(decode_all("seg/2", &plain, &KeyRing::none(), CipherImpl::AwsLc).is_err());
    }

    #[test]
    fn frames_cannot_be_swapped() {
        let keys = KeyRing::new([Key::generate()]);
        let raw = sample(3 * 16384, 5);
        let codec = ObjectCodec::for_writing("n", new_object_id(), &opts(16384), &keys).unwrap();
        let f0 = codec.encode_frame(0, &raw[..16384]);
        let f1 = codec.encode_frame(1, &raw[16384..32768]);
        let e1 = FrameEntry {
            offset: 0,
            stored_len: f1.bytes.len() as u32,
            raw_len: 16384,
            compressed: f1.compressed,
            checksum: f1.checksum,
        };
        let mut b = f1.bytes.clone();
        assert!(codec.decode_frame(1, &e1, &mut b).is_ok());
        let mut b = f1.bytes.clone();
        assert!(codec.decode_frame(0, &e1, &mut b).is_err());
        let e0 = FrameEntry {
            stored_len: f0.bytes.len() as u32,
            compressed: f0.compressed,
            checksum: f0.checksum,
            ..e1
        };
        let mut b = f0.bytes.clone();
        assert!(codec.decode_frame(1, &e0, &mut b).is_err());
    }

    #[test]
    fn tail_parse_asks_for_more_when_index_is_long() {
        let raw = sample(100 * 8192, 1);
        let (obj, _) = encode_all("big", &raw, &opts(8192), &KeyRing::none()).unwrap();
        let tail = &obj[obj.len() - 200..];
        match ObjectLayout::parse_tail(
            "big",
            obj.len() as u64,
            tail,
            &KeyRing::none(),
            CipherImpl::AwsLc,
        )
        .unwrap()
        {
            TailParse::NeedFrom { start } => {
                let l = match ObjectLayout::parse_tail(
                    "big",
                    obj.len() as u64,
                    &obj[start as usize..],
                    &KeyRing::none(),
                    CipherImpl::AwsLc,
                )
                .unwrap()
                {
                    TailParse::Complete(l) => l,
                    _ => panic!("still incomplete"),
                };
                assert_eq!(l.frames.len(), 100);
                assert_eq!(l.frame_of(8192 * 5 + 3), Some(5));
                assert_eq!(l.frame_of(100 * 8192), None);
            }
            TailParse::Complete(_) => panic!("index cannot fit in 200 bytes"),
        }
    }
}
