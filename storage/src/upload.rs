//! Streaming upload of one file as one object: frames are read in order,
//! encoded in parallel on the runtime's blocking pool (whose threads block
//! signals, unlike threads a PostgreSQL backend would spawn itself), placed
//! in order, and sent as one PUT (small objects) or as multipart parts
//! uploaded several at a time. Memory stays bounded by the encode-ahead
//! window plus the parts in flight.
use crate::error::{Error, Result};
use crate::format::{EncodedFrame, FormatOptions, ObjectCodec, ObjectWriter, Trailer};
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

struct Parts<'a> {
    store: &'a Arc<AnyStore>,
    name: &'a str,
    mp: Option<Multipart>,
    pending: Vec<u8>,
    running: JoinSet<Result<Part>>,
    done: Vec<Part>,
    next: i32,
    opts: &'a UploadOptions,
    total: u64,
}

impl Parts<'_> {
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
            self.mp = Some(self.store.create_multipart(self.name).await?);
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
                .put(self.name, Bytes::from(std::mem::take(&mut self.pending)))
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
    input: impl Read,
    progress: impl FnMut(u64),
) -> Result<Uploaded> {
    let mut parts = Parts {
        store,
        name,
        mp: None,
        pending: Vec::new(),
        running: JoinSet::new(),
        done: Vec::new(),
        next: 1,
        opts,
        total: 0,
    };
    let result = encode_into(&mut parts, name, object_id, keys, opts, input, progress).await;
    if result.is_err() {
        parts.running.abort_all();
        if let Some(mp) = parts.mp.take() {
            let _ = store.abort_multipart(&mp).await;
        }
    }
    result
}

async fn encode_into(
    parts: &mut Parts<'_>,
    name: &str,
    object_id: [u8; 16],
    keys: &KeyRing,
    opts: &UploadOptions,
    mut input: impl Read,
    mut progress: impl FnMut(u64),
) -> Result<Uploaded> {
    let codec = Arc::new(ObjectCodec::for_writing(
        name,
        object_id,
        &opts.format,
        keys,
    )?);
    let frame_size = opts.format.frame_size as usize;
    let (mut writer, lead) = ObjectWriter::new(codec.clone(), &opts.format);
    parts.add(&lead).await?;
    let mut queue: VecDeque<tokio::task::JoinHandle<(Vec<u8>, EncodedFrame)>> = VecDeque::new();
    let (mut index, mut eof, mut consumed) = (0u32, false, 0u64);
    loop {
        while !eof && queue.len() < opts.encode_ahead.max(1) {
            let mut raw = vec![0u8; frame_size];
            let n = read_full(&mut input, &mut raw).map_err(|e| Error::io(name, e))?;
            eof = n < frame_size;
            if n == 0 {
                break;
            }
            raw.truncate(n);
            let (c, i) = (codec.clone(), index);
            queue.push_back(tokio::task::spawn_blocking(move || {
                let f = c.encode_frame(i, &raw);
                (raw, f)
            }));
            index += 1;
        }
        let Some(h) = queue.pop_front() else { break };
        let (raw, frame) = h
            .await
            .map_err(|e| Error::Store(format!("encoding task failed: {e}")))?;
        consumed += raw.len() as u64;
        let bytes = writer.push(&raw, frame);
        parts.add(&bytes).await?;
        progress(consumed);
    }
    let (tail, trailer) = writer.finish();
    parts.add(&tail).await?;
    parts.finish().await?;
    Ok(Uploaded {
        trailer,
        stored_len: parts.total,
    })
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
