//! Streaming upload of one file as one object: frames are read in order,
//! encoded in parallel on the runtime's blocking pool (whose threads block
//! signals, unlike threads a PostgreSQL backend would spawn itself), placed
//! in order, and sent as one PUT (small objects) or as multipart parts
//! uploaded several at a time. Memory stays bounded by the encode-ahead
//! window plus the parts in flight.
use crate::error::{Error, Result};
use crate::format::{EncodedFrame, FormatOptions, Layer, ObjectCodec, ObjectWriter, Trailer};
use crate::keys::KeyRing;
use crate::store::{AnyStore, Multipart, ObjectStore, Part};
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::Read;
use std::sync::Arc;
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy)]
pub struct UploadOptions {
    pub format: FormatOptions,
    /// Multipart part size (S3 requires at least 5 MiB except for the last part).
    pub part_size: usize,
    pub parallel_parts: usize,
    /// Frames encoded concurrently.
    pub encode_ahead: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            format: FormatOptions::default(),
            part_size: 16 << 20,
            parallel_parts: 4,
            encode_ahead: 4,
        }
    }
}

/// What an upload produced.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub trailer: Trailer,
    /// Bytes stored (the object's length).
    pub stored_len: u64,
}

struct Parts {
    store: Arc<AnyStore>,
    name: String,
    mp: Option<Multipart>,
    pending: Vec<u8>,
    running: JoinSet<Result<Part>>,
    done: Vec<Part>,
    next: i32,
    opts: UploadOptions,
    total: u64,
}

impl Parts {
    async fn add(&mut self, bytes: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(bytes);
        self.total += bytes.len() as u64;
        while self.pending.len() >= self.opts.part_size {
            let rest = self.pending.split_off(self.opts.part_size);
            let part = std::mem::replace(&mut self.pending, rest);
            self.send(part).await?;
        }
        Ok(())
    }

    async fn send(&mut self, part: Vec<u8>) -> Result<()> {
        if self.mp.is_none() {
            self.mp = Some(self.store.create_multipart(&self.name).await?);
        }
        while self.running.len() >= self.opts.parallel_parts {
            self.reap_one().await?;
        }
        let (store, mp, n) = (self.store.clone(), self.mp.clone().unwrap(), self.next);
        self.next += 1;
        self.running
            .spawn(async move { store.upload_part(&mp, n, Bytes::from(part)).await });
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<()> {
        if let Some(r) = self.running.join_next().await {
            self.done
                .push(r.map_err(|e| Error::Store(format!("upload task failed: {e}")))??);
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if self.mp.is_none() {
            return self
                .store
                .put(&self.name, Bytes::from(std::mem::take(&mut self.pending)))
                .await;
        }
        if !self.pending.is_empty() {
            let last = std::mem::take(&mut self.pending);
            self.send(last).await?;
        }
        while !self.running.is_empty() {
            self.reap_one().await?;
        }
        self.store
            .complete_multipart(self.mp.as_ref().unwrap(), std::mem::take(&mut self.done))
            .await
    }
}

type Encoding = tokio::task::JoinHandle<(Vec<u8>, EncodedFrame)>;

/// An object being written from bytes pushed in order: for callers that
/// produce the bytes themselves between pushes (on the calling thread, out
/// of the runtime), where [`upload`] reads them from a [`Read`]. Frames are
/// encoded on the blocking pool, up to `encode_ahead` at once. Call
/// [`finish`](Self::finish), or [`abort`](Self::abort) to leave nothing
/// behind; dropped otherwise, a started multipart upload stays until the
/// store expires it.
pub struct Upload {
    parts: Parts,
    codec: Arc<ObjectCodec>,
    /// Taken by `finish`.
    writer: Option<ObjectWriter>,
    queue: VecDeque<Encoding>,
    raw: Vec<u8>,
    index: u32,
    consumed: u64,
}

impl Upload {
    /// Starts object `name` with id `object_id`.
    pub async fn start(
        store: &Arc<AnyStore>,
        name: &str,
        object_id: [u8; 16],
        keys: &KeyRing,
        opts: &UploadOptions,
    ) -> Result<Upload> {
        let codec = Arc::new(ObjectCodec::for_writing(
            name,
            object_id,
            &opts.format,
            keys,
        )?);
        let (writer, lead) = ObjectWriter::new(codec.clone(), &opts.format);
        let mut parts = Parts {
            store: store.clone(),
            name: name.to_string(),
            mp: None,
            pending: Vec::new(),
            running: JoinSet::new(),
            done: Vec::new(),
            next: 1,
            opts: *opts,
            total: 0,
        };
        parts.add(&lead).await?;
        Ok(Upload {
            parts,
            codec,
            writer: Some(writer),
            queue: VecDeque::new(),
            raw: Vec::new(),
            index: 0,
            consumed: 0,
        })
    }

    fn frame_size(&self) -> usize {
        self.parts.opts.format.frame_size as usize
    }

    /// Makes the object a layer holding `layer.runs`: the bytes pushed are
    /// those blocks, in order ([`crate::format`]).
    pub fn set_layer(&mut self, layer: Layer) {
        self.writer
            .as_mut()
            .expect("an upload changed after it finished")
            .set_layer(layer);
    }

    /// Appends raw bytes; returns the raw bytes placed in the object so far.
    pub async fn push(&mut self, mut bytes: &[u8]) -> Result<u64> {
        let fs = self.frame_size();
        while !bytes.is_empty() {
            let n = (fs - self.raw.len()).min(bytes.len());
            self.raw.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.raw.len() == fs {
                let raw = std::mem::replace(&mut self.raw, Vec::with_capacity(fs));
                self.encode(raw).await?;
            }
        }
        Ok(self.consumed)
    }

    async fn encode(&mut self, raw: Vec<u8>) -> Result<()> {
        while self.queue.len() >= self.parts.opts.encode_ahead.max(1) {
            self.place_one().await?;
        }
        let (c, i) = (self.codec.clone(), self.index);
        self.queue.push_back(tokio::task::spawn_blocking(move || {
            let f = c.encode_frame(i, &raw);
            (raw, f)
        }));
        self.index += 1;
        Ok(())
    }

    /// The oldest encoded frame, placed in the object.
    async fn place_one(&mut self) -> Result<()> {
        let Some(h) = self.queue.pop_front() else {
            return Ok(());
        };
        let (raw, frame) = h
            .await
            .map_err(|e| Error::Store(format!("encoding task failed: {e}")))?;
        self.consumed += raw.len() as u64;
        let writer = self
            .writer
            .as_mut()
            .expect("an upload written after it finished");
        let bytes = writer.push(&raw, frame);
        self.parts.add(&bytes).await
    }

    /// Writes the last frame, the index and the trailer, and completes the
    /// object.
    pub async fn finish(mut self) -> Result<Uploaded> {
        let result = self.finish_inner().await;
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    async fn finish_inner(&mut self) -> Result<Uploaded> {
        if !self.raw.is_empty() {
            let raw = std::mem::take(&mut self.raw);
            self.encode(raw).await?;
        }
        while !self.queue.is_empty() {
            self.place_one().await?;
        }
        let writer = self.writer.take().expect("an upload finished twice");
        let (tail, trailer) = writer.finish();
        self.parts.add(&tail).await?;
        self.parts.finish().await?;
        Ok(Uploaded {
            trailer,
            stored_len: self.parts.total,
        })
    }

    /// Gives up: nothing is left behind under the name (a started
    /// multipart upload is aborted).
    pub async fn abort(&mut self) {
        self.parts.running.abort_all();
        if let Some(mp) = self.parts.mp.take() {
            let _ = self.parts.store.abort_multipart(&mp).await;
        }
    }
}

/// Uploads everything `input` yields as object `name` with id `object_id`
/// (see [`crate::format::new_object_id`]). `progress` is called
/// with the raw bytes consumed so far after each frame. On failure nothing
/// is left behind under `name` (a started multipart upload is aborted).
pub async fn upload(
    store: &Arc<AnyStore>,
    name: &str,
    object_id: [u8; 16],
    keys: &KeyRing,
    opts: &UploadOptions,
    mut input: impl Read,
    mut progress: impl FnMut(u64),
) -> Result<Uploaded> {
    let mut up = Upload::start(store, name, object_id, keys, opts).await?;
    let mut raw = vec![0u8; up.frame_size()];
    loop {
        let n = match read_full(&mut input, &mut raw) {
            Ok(n) => n,
            Err(e) => {
                up.abort().await;
                return Err(Error::io(name, e));
            }
        };
        if n == 0 {
            break;
        }
        match up.push(&raw[..n]).await {
            Ok(done) => progress(done),
            Err(e) => {
                up.abort().await;
                return Err(e);
            }
        }
        if n < raw.len() {
            break;
        }
    }
    up.finish().await
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
