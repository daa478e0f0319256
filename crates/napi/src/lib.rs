//! Thin napi-rs binding over `ocichunk-core`: converts types and errors, nothing else.
//! CPU-heavy calls are `AsyncTask`s (off the JS thread); buffers come in as borrowed bytes and go
//! out as `Buffer`s built from owned `Vec<u8>`s, without copies.
//!
//! Every error of the core (and of this binding's own checks) reaches JavaScript through [`err`]:
//! an `Error` whose `message` is the core's message, `code` the core's stable code ("ECORRUPT",
//! `ocichunk_core::Code`) and `origin` "ocichunk-core"; one from the OS also has `ioKind`
//! (`std::io::ErrorKind`, "NotFound") and `errno` (positive, as `os.constants.errno`). Thrown by
//! synchronous calls, the rejection of `AsyncTask`s ([`Coded`]). The lazy mount's
//! `ThreadsafeFunction` only carries chunk requests to JavaScript: no core error crosses it (the
//! answer comes back as `LazyMount.complete(id, error?)`).

use napi::bindgen_prelude::*;
use napi::{Env, Task};
use napi_derive::napi;
use ocichunk_core::format::build;
use ocichunk_core::format::dict::PackName;
use ocichunk_core::format::pack;
use ocichunk_core::{batch, chunker::ChunkerParams, format, frame, fsx, restore, tarscan, Code, Error as CoreError};
use std::path::Path;

type CoreResult<T> = std::result::Result<T, CoreError>;

/// The value of `origin` on every error built by [`err`]: what TypeScript recognises them by.
const ORIGIN: &str = "ocichunk-core";

/// The JavaScript error for a core error (see the module's documentation).
fn err(env: Env, e: CoreError) -> napi::Error {
    let build = || -> Result<napi::Error> {
        let mut o = env.create_error(napi::Error::from_reason(e.message()))?;
        o.set_named_property("code", env.create_string(e.code_str())?)?;
        o.set_named_property("origin", env.create_string(ORIGIN)?)?;
        if let Some(io) = e.io_cause() {
            o.set_named_property("ioKind", env.create_string(&format!("{:?}", io.kind))?)?;
            if let Some(n) = io.errno {
                o.set_named_property("errno", env.create_int32(n)?)?;
            }
        }
        Ok(napi::Error::from(o.into_unknown()))
    };
    // creating an object fails only when the engine cannot run JavaScript (an exception is
    // pending, the environment is shutting down): napi's own error stands then
    build().unwrap_or_else(|f| f)
}

/// An `AsyncTask` whose work fails with a core error, rejected with [`err`]'s error: `compute`
/// runs off the JS thread (no `Env`), so it keeps the error for `reject`.
pub struct Coded<W: Work> {
    work: W,
    failed: Option<CoreError>,
}

impl<W: Work> Coded<W> {
    fn task(work: W) -> AsyncTask<Coded<W>> {
        AsyncTask::new(Coded { work, failed: None })
    }
}

/// The two halves of a [`Coded`] task.
pub trait Work: Send + Sized {
    type Output: Send + Sized + 'static;
    type JsValue: ToNapiValue + TypeName;
    fn compute(&mut self) -> CoreResult<Self::Output>;
    fn resolve(&mut self, env: Env, o: Self::Output) -> Result<Self::JsValue>;
}

impl<W: Work> Task for Coded<W> {
    type Output = W::Output;
    type JsValue = W::JsValue;
    fn compute(&mut self) -> Result<Self::Output> {
        self.work.compute().map_err(|e| {
            let stand_in = napi::Error::new(Status::GenericFailure, e.to_string());
            self.failed = Some(e);
            stand_in
        })
    }
    fn resolve(&mut self, env: Env, o: Self::Output) -> Result<Self::JsValue> {
        self.work.resolve(env, o)
    }
    fn reject(&mut self, env: Env, e: napi::Error) -> Result<Self::JsValue> {
        Err(match self.failed.take() {
            Some(c) => err(env, c),
            None => e,
        })
    }
}

fn triplets(a: &[u32], what: &str) -> CoreResult<Vec<(usize, usize, usize)>> {
    if !a.len().is_multiple_of(3) {
        return Err(CoreError::invalid(format!("{what} must hold triplets")));
    }
    Ok(a.chunks(3).map(|t| (t[0] as usize, t[1] as usize, t[2] as usize)).collect())
}

fn pairs(a: &[u32], what: &str) -> CoreResult<Vec<(usize, usize)>> {
    if !a.len().is_multiple_of(2) {
        return Err(CoreError::invalid(format!("{what} must hold pairs")));
    }
    Ok(a.chunks(2).map(|t| (t[0] as usize, t[1] as usize)).collect())
}

#[napi(object)]
pub struct ChunkerSpec {
    pub kind: String,
    pub min: Option<u32>,
    pub avg: Option<u32>,
    pub max: Option<u32>,
    pub size: Option<u32>,
}

fn params(c: &ChunkerSpec) -> CoreResult<ChunkerParams> {
    let p = match c.kind.as_str() {
        "cdc" => {
            ChunkerParams::Cdc { min: c.min.unwrap_or(16 << 10) as usize, avg: c.avg.unwrap_or(64 << 10) as usize, max: c.max.unwrap_or(256 << 10) as usize }
        }
        "fixed" => ChunkerParams::Fixed { size: c.size.unwrap_or(1 << 20) as usize },
        "file" => ChunkerParams::File { max: c.max.unwrap_or(64 << 20) as usize },
        k => return Err(CoreError::invalid(format!("unknown chunker kind {k:?}"))),
    };
    p.validate()?;
    Ok(p)
}

// ---- compressFrames ----

pub struct CompressTask {
    data: Buffer,
    parts: Vec<(usize, usize)>,
    counts: Vec<u32>,
    level: i32,
    threads: usize,
    out: Option<Buffer>,
}

#[napi(object)]
pub struct FramesResult {
    /// the frames back to back (absent when they were written into `out`)
    pub data: Option<Buffer>,
    pub sizes: Uint32Array,
}

impl Work for CompressTask {
    type Output = (Option<Vec<u8>>, Vec<u32>);
    type JsValue = FramesResult;
    fn compute(&mut self) -> CoreResult<Self::Output> {
        match &mut self.out {
            Some(out) => batch::compress_frames_into(&self.data, &self.parts, &self.counts, self.level, self.threads, out.as_mut()).map(|s| (None, s)),
            None => batch::compress_frames(&self.data, &self.parts, &self.counts, self.level, self.threads).map(|f| (Some(f.data), f.sizes)),
        }
    }
    fn resolve(&mut self, _env: Env, o: Self::Output) -> Result<Self::JsValue> {
        Ok(FramesResult { data: o.0.map(Into::into), sizes: o.1.into() })
    }
}

/// Compress frames made of `parts` of `data`; with `out`, into it (it must not be touched until this resolves).
#[napi(ts_return_type = "Promise<FramesResult>")]
pub fn compress_frames(
    env: Env,
    data: Buffer,
    parts: Uint32Array,
    frame_part_counts: Uint32Array,
    level: i32,
    threads: u32,
    out: Option<Buffer>,
) -> Result<AsyncTask<Coded<CompressTask>>> {
    let parts = pairs(&parts, "parts").map_err(|e| err(env, e))?;
    Ok(Coded::task(CompressTask { data, parts, counts: frame_part_counts.to_vec(), level, threads: threads as usize, out }))
}

// ---- decompressFrames ----

pub struct DecompressTask {
    data: Buffer,
    frames: Vec<(usize, usize, usize)>,
    dicts: Vec<Option<std::sync::Arc<ocichunk_core::frame::Dictionary>>>,
    threads: usize,
}

impl Work for DecompressTask {
    type Output = Vec<u8>;
    type JsValue = Buffer;
    fn compute(&mut self) -> CoreResult<Self::Output> {
        batch::decompress_frames(&self.data, &self.frames, &self.dicts, self.threads)
    }
    fn resolve(&mut self, _env: Env, o: Self::Output) -> Result<Self::JsValue> {
        Ok(o.into())
    }
}

/// Decompress frames `(offset, length, uncompressed length)` of `data`; frame `i` with dictionary
/// `dicts[frameDicts[i]]` where that is not -1.
#[napi(ts_return_type = "Promise<Buffer>")]
pub fn decompress_frames(
    env: Env,
    data: Buffer,
    frames: Uint32Array,
    threads: u32,
    dicts: Option<Vec<Buffer>>,
    frame_dicts: Option<Int32Array>,
) -> Result<AsyncTask<Coded<DecompressTask>>> {
    let frames = triplets(&frames, "frames").map_err(|e| err(env, e))?;
    let prepared: Vec<_> = dicts.unwrap_or_default().iter().map(|d| std::sync::Arc::new(frame::Dictionary::for_reading(d.to_vec()))).collect();
    let dicts = match frame_dicts {
        None => Vec::new(),
        Some(fd) if fd.len() == frames.len() => fd
            .iter()
            .map(|&i| {
                if i < 0 {
                    Ok(None)
                } else {
                    prepared.get(i as usize).cloned().map(Some).ok_or_else(|| err(env, CoreError::invalid(format!("no dictionary {i}"))))
                }
            })
            .collect::<Result<Vec<_>>>()?,
        Some(fd) => return Err(err(env, CoreError::invalid(format!("{} dictionary indexes for {} frames", fd.len(), frames.len())))),
    };
    Ok(Coded::task(DecompressTask { data, frames, dicts, threads: threads as usize }))
}

// ---- hashRanges ----

pub struct HashTask {
    data: Buffer,
    ranges: Vec<(usize, usize)>,
    threads: usize,
}

impl Work for HashTask {
    type Output = Vec<u8>;
    type JsValue = Buffer;
    fn compute(&mut self) -> CoreResult<Self::Output> {
        batch::hash_ranges(&self.data, &self.ranges, self.threads)
    }
    fn resolve(&mut self, _env: Env, o: Self::Output) -> Result<Self::JsValue> {
        Ok(o.into())
    }
}

#[napi(ts_return_type = "Promise<Buffer>")]
pub fn hash_ranges(env: Env, data: Buffer, ranges: Uint32Array, threads: u32) -> Result<AsyncTask<Coded<HashTask>>> {
    let ranges = pairs(&ranges, "ranges").map_err(|e| err(env, e))?;
    Ok(Coded::task(HashTask { data, ranges, threads: threads as usize }))
}

// ---- hashFile ----

pub struct HashFileTask {
    path: String,
}

impl Work for HashFileTask {
    type Output = ([u8; 32], u64);
    type JsValue = String;
    fn compute(&mut self) -> CoreResult<Self::Output> {
        batch::hash_file(Path::new(&self.path))
    }
    fn resolve(&mut self, _env: Env, o: Self::Output) -> Result<Self::JsValue> {
        let hex: String = o.0.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("sha256:{hex}:{}", o.1))
    }
}

/// Resolves to "sha256:<hex>:<size>".
#[napi(ts_return_type = "Promise<string>")]
pub fn hash_file(path: String) -> AsyncTask<Coded<HashFileTask>> {
    Coded::task(HashFileTask { path })
}

// ---- LayerScanner: a layer's bytes in, batches of headers, file data and chunk digests out ----

#[napi(object)]
pub struct ScanBatch {
    /// index of the pool buffer holding the batch's bytes; release it when done
    pub buffer: u32,
    pub length: u32,
    pub headers: Buffer,
    pub first_entry: u32,
    pub entries: u32,
    /// (entry, start, len, eof) per segment
    pub segs: Uint32Array,
    pub counts: Uint32Array,
    pub lengths: Uint32Array,
    pub digests: Buffer,
}

#[napi(object)]
pub struct ScanStep {
    pub batches: Vec<ScanBatch>,
    /// the input is all read (then call finish)
    pub eof: bool,
    /// push/end: the piece was taken (else offer it again once the batches are released)
    pub accepted: bool,
}

#[napi(object)]
pub struct ScanFileDigest {
    pub digest: String,
    pub size: f64,
}

/// A scan not started yet, running on its thread, or closed.
pub enum ScanState {
    Idle(tarscan::LayerScan),
    Running(tarscan::Threaded),
    Closed,
}

type Shared = std::sync::Arc<std::sync::Mutex<ScanState>>;

fn locked(s: &Shared) -> CoreResult<std::sync::MutexGuard<'_, ScanState>> {
    s.lock().map_err(|_| CoreError::new(Code::Io, "layer scanner poisoned"))
}

fn wrong(what: &str) -> CoreError {
    CoreError::invalid(format!("{what} does not fit this scan's state"))
}

#[napi]
pub struct LayerScanner {
    inner: Shared,
    pool: std::sync::Arc<tarscan::BufferPool>,
}

impl Drop for LayerScanner {
    fn drop(&mut self) {
        self.pool.close();
    }
}

pub enum Op {
    Push(Vec<u8>),
    End,
    Pull,
    Finish,
}

pub struct ScanTask {
    inner: Shared,
    op: Option<Op>,
}

fn scan_batches(o: Vec<tarscan::Batch>) -> Vec<ScanBatch> {
    o.into_iter()
        .map(|b| ScanBatch {
            segs: b.segs.iter().flat_map(|s| [s.entry, s.start, s.len, s.eof as u32]).collect::<Vec<u32>>().into(),
            buffer: b.buffer,
            length: b.len as u32,
            headers: b.headers.into(),
            first_entry: b.first_entry,
            entries: b.entries,
            counts: b.counts.into(),
            lengths: b.lengths.into(),
            digests: b.digests.into(),
        })
        .collect()
}

impl Work for ScanTask {
    type Output = (Vec<tarscan::Batch>, bool, bool);
    type JsValue = ScanStep;
    fn compute(&mut self) -> CoreResult<Self::Output> {
        let mut s = locked(&self.inner)?;
        let ScanState::Running(t) = &mut *s else { return Err(wrong("this call")) };
        match self.op.take().ok_or_else(|| wrong("a repeated call"))? {
            Op::Push(p) => t.offer(Some(p)).map(|(b, ok)| (b, false, ok)),
            Op::End => t.offer(None).map(|(b, ok)| (b, false, ok)),
            Op::Pull => t.next_batches().map(|(b, eof)| (b, eof, true)),
            Op::Finish => t.finish().map(|b| (b, true, true)),
        }
    }
    fn resolve(&mut self, _env: Env, o: Self::Output) -> Result<Self::JsValue> {
        Ok(ScanStep { batches: scan_batches(o.0), eof: o.1, accepted: o.2 })
    }
}

/// What shapes canonical entries (`format::canonical::CanonOptions`).
#[napi(object)]
pub struct CanonSpec {
    pub source_date_epoch: f64,
    pub keep_mtime: bool,
}

#[napi]
impl LayerScanner {
    /// `compression`: "auto" | "none" | "gzip" | "zstd"; `buffers`: how many batch buffers to
    /// allocate once and share with JavaScript (see `buffers()`): the scan waits for a free one.
    /// `canon`: batches carry canonical entries (`format::canonical::encode_entry`); without it,
    /// raw tar headers (`tarscan::encode_header`).
    #[napi(constructor)]
    pub fn new(env: Env, compression: String, chunker: ChunkerSpec, batch_bytes: u32, threads: u32, buffers: u32, canon: Option<CanonSpec>) -> Result<Self> {
        Self::create(compression, chunker, batch_bytes, threads, buffers, canon).map_err(|e| err(env, e))
    }

    fn create(compression: String, chunker: ChunkerSpec, batch_bytes: u32, threads: u32, buffers: u32, canon: Option<CanonSpec>) -> CoreResult<Self> {
        let c = match compression.as_str() {
            "none" => tarscan::Compression::None,
            "gzip" => tarscan::Compression::Gzip,
            "zstd" => tarscan::Compression::Zstd,
            "auto" => tarscan::Compression::Sniff,
            k => return Err(CoreError::invalid(format!("unknown compression {k:?}"))),
        };
        let p = params(&chunker)?;
        let pool = tarscan::BufferPool::new(buffers.clamp(2, 64) as usize, tarscan::batch_size(p, batch_bytes as usize))?;
        let canon = match canon {
            Some(o) if !o.source_date_epoch.is_finite() || o.source_date_epoch.fract() != 0.0 => {
                return Err(CoreError::invalid(format!("source date epoch {}", o.source_date_epoch)))
            }
            Some(o) => Some(format::canonical::CanonOptions { source_date_epoch: o.source_date_epoch as i64, keep_mtime: o.keep_mtime }),
            None => None,
        };
        let s = tarscan::LayerScan::new(c, p, batch_bytes as usize, threads as usize, pool.clone(), canon)?;
        Ok(LayerScanner { inner: std::sync::Arc::new(std::sync::Mutex::new(ScanState::Idle(s))), pool })
    }

    /// The pool buffers, as Buffers over the same memory (no copy); batches name them by index.
    #[napi(ts_return_type = "Buffer[]")]
    pub fn buffers(&self, env: Env) -> Result<Vec<napi::JsBuffer>> {
        (0..self.pool.len())
            .map(|i| {
                let (p, n) = self.pool.raw(i);
                // SAFETY: the memory lives until the last Arc is dropped; the finalizer holds one
                unsafe { env.create_buffer_with_borrowed_data(p, n, self.pool.clone(), |keep, _env| drop(keep)) }.map(|b| b.into_raw())
            })
            .collect()
    }

    fn start(&self, env: Env, f: impl FnOnce(tarscan::LayerScan) -> CoreResult<tarscan::Threaded>) -> Result<()> {
        let run = || -> CoreResult<()> {
            let mut s = locked(&self.inner)?;
            let ScanState::Idle(scan) = std::mem::replace(&mut *s, ScanState::Closed) else { return Err(wrong("starting")) };
            *s = ScanState::Running(f(scan)?);
            Ok(())
        };
        run().map_err(|e| err(env, e))
    }

    /// Read the blob from a file, on a thread of its own (then pull until eof, and finish).
    #[napi]
    pub fn open_file(&self, env: Env, path: String) -> Result<()> {
        self.start(env, |s| s.spawn_file(Path::new(&path)))
    }

    /// Take the blob from pushes, parsed on a thread of its own (push... end, pull until eof, finish).
    #[napi]
    pub fn open_stream(&self, env: Env) -> Result<()> {
        self.start(env, |s| s.spawn_stream())
    }

    /// Offer the next bytes of the blob (copied); `accepted` false: offer them again.
    #[napi(ts_return_type = "Promise<ScanStep>")]
    pub fn push(&self, data: Buffer) -> AsyncTask<Coded<ScanTask>> {
        Coded::task(ScanTask { inner: self.inner.clone(), op: Some(Op::Push(data.to_vec())) })
    }

    /// The blob's bytes are all pushed; `accepted` false: call again.
    #[napi(ts_return_type = "Promise<ScanStep>")]
    pub fn end(&self) -> AsyncTask<Coded<ScanTask>> {
        Coded::task(ScanTask { inner: self.inner.clone(), op: Some(Op::End) })
    }

    /// The next batches the scan has finished (waits for some; eof: the input is all read).
    #[napi(ts_return_type = "Promise<ScanStep>")]
    pub fn pull(&self) -> AsyncTask<Coded<ScanTask>> {
        Coded::task(ScanTask { inner: self.inner.clone(), op: Some(Op::Pull) })
    }

    /// After eof: the last batches, or why the layer's stream is incomplete.
    #[napi(ts_return_type = "Promise<ScanStep>")]
    pub fn finish(&self) -> AsyncTask<Coded<ScanTask>> {
        Coded::task(ScanTask { inner: self.inner.clone(), op: Some(Op::Finish) })
    }

    /// Digest and size of the file, once it is read to its end.
    #[napi]
    pub fn file_digest(&self, env: Env) -> Result<Option<ScanFileDigest>> {
        let s = locked(&self.inner).map_err(|e| err(env, e))?;
        Ok(match &*s {
            ScanState::Running(t) => t.digest().map(|d| ScanFileDigest { digest: d.digest.clone(), size: d.size as f64 }),
            _ => None,
        })
    }

    /// JavaScript is done with pool buffer `index` (from a batch): the scan may fill it again.
    #[napi]
    pub fn release(&self, env: Env, index: u32) -> Result<()> {
        self.pool.release(index).map_err(|e| err(env, e))
    }

    /// Stop the scan: its thread ends, batches not taken are dropped. (A call still running keeps
    /// the scan until it returns; the scan then ends when this object is collected.)
    #[napi]
    pub fn close(&self) {
        self.pool.close();
        if let Ok(mut s) = self.inner.try_lock() {
            *s = ScanState::Closed;
        }
    }
}

// ---- small synchronous helpers ----

#[napi]
pub fn compress_sync(env: Env, data: Buffer, level: i32) -> Result<Buffer> {
    frame::compress_frame(&[&data], level).map(Into::into).map_err(|e| err(env, e))
}

#[napi]
pub fn decompress_sync(env: Env, data: Buffer, max_len: u32) -> Result<Buffer> {
    frame::decompress_bytes(&data, max_len as usize).map(Into::into).map_err(|e| err(env, e))
}

// ---- the format: TOC check, restore ----

#[napi(object)]
pub struct TocViolation {
    /// ECORRUPT | EUNSAFE | EUNSUPPORTED
    pub code: String,
    pub layer: Option<u32>,
    pub path: Option<String>,
    pub message: String,
}

#[napi(object)]
pub struct TocCheck {
    /// the TOC's JSON, when it breaks no rule
    pub json: Option<Buffer>,
    pub violations: Vec<TocViolation>,
    /// violations past the first 1000, only counted
    pub more: u32,
}

/// Decode a TOC blob under the format's limits and check every rule (docs/format.md).
#[napi]
pub fn check_toc(blob: Buffer) -> TocCheck {
    match format::check_toc(&blob) {
        Ok((_, _, json)) => TocCheck { json: Some(json.into()), violations: vec![], more: 0 },
        Err(r) => TocCheck {
            json: None,
            violations: r
                .violations
                .iter()
                .map(|v| TocViolation { code: v.class.code().into(), layer: v.layer, path: v.path.clone(), message: v.to_string() })
                .collect(),
            more: r.more as u32,
        },
    }
}

/// A TOC opened once for every reader: checked (every rule), merged, and asked where a file's bytes
/// are (`format::Checked`). The constructor throws the first violation; `checkToc` lists them all.
#[napi]
pub struct CheckedToc {
    inner: std::sync::Arc<format::Checked>,
}

#[napi]
impl CheckedToc {
    #[napi(constructor)]
    pub fn new(env: Env, blob: Buffer) -> Result<Self> {
        let c = format::Checked::open(&blob).map_err(|r| err(env, restore::report_error(&r)))?;
        Ok(CheckedToc { inner: std::sync::Arc::new(c) })
    }

    /// The TOC's JSON, handed over once (the checked TOC does not keep it): null after the first call.
    #[napi]
    pub fn take_json(&self) -> Option<Buffer> {
        self.inner.take_json().map(Into::into)
    }

    /// The merged view every reader shows (`format::tree::TreeOut` as JSON).
    #[napi]
    pub fn view(&self, env: Env) -> Result<Buffer> {
        let c = &self.inner;
        serde_json::to_vec(&c.tree.view(&c.toc)).map(Into::into).map_err(|e| err(env, CoreError::new(Code::Io, format!("merged view: {e}"))))
    }

    /// The TOC chunks the reads `paths[i]`, `[offsets[i], +lengths[i])` of the merged tree need, in
    /// the order read, each once (`format::Checked::plan_reads`: a prefetch list's plan).
    #[napi]
    pub fn plan_reads(&self, env: Env, paths: Vec<String>, offsets: Float64Array, lengths: Float64Array) -> Result<Uint32Array> {
        if paths.len() != offsets.len() || paths.len() != lengths.len() {
            return Err(err(env, CoreError::invalid(format!("{} paths, {} offsets, {} lengths", paths.len(), offsets.len(), lengths.len()))));
        }
        // a length beyond 2^53 (a trace's "to the end") is clipped to the file anyway
        let num = |v: f64| {
            if v >= 0.0 {
                Ok(if v >= u64::MAX as f64 { u64::MAX } else { v as u64 })
            } else {
                Err(err(env, CoreError::invalid(format!("read offset or length {v}"))))
            }
        };
        let mut reads = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            reads.push((p.as_str(), num(offsets[i])?, num(lengths[i])?));
        }
        Ok(self.inner.plan_reads(reads).into())
    }

    /// Where the bytes `[offset, offset + length)` of regular file `ino` are: one row per chunk,
    /// `[chunk, fromInChunk, toInChunk, atInOutput]` (the format's one offset -> chunk lookup).
    #[napi]
    pub fn plan(&self, env: Env, ino: u32, offset: f64, length: f64) -> Result<Float64Array> {
        let f = self.inner.file(ino as u64).ok_or_else(|| err(env, CoreError::invalid(format!("inode {ino} is not a regular file"))))?;
        if !(offset >= 0.0 && length >= 0.0) {
            return Err(err(env, CoreError::invalid(format!("read of [{offset}, +{length})"))));
        }
        let rows: Vec<f64> = f.pieces(offset as u64, length as u64).flat_map(|p| [p.chunk as f64, p.from as f64, p.to as f64, p.at as f64]).collect();
        Ok(rows.into())
    }
}

#[napi]
impl CheckedToc {
    /// This stored TOC's chunks not in `dict` yet (its digests loaded), added with the locations
    /// it claims, foreign until trusted (`ChunkDict::add_stored`); how many.
    #[napi]
    pub fn add_stored_chunks(&self, env: Env, dict: &mut ChunkDict) -> Result<u32> {
        dict.inner.add_stored(&self.inner.toc).map_err(|e| err(env, e))
    }

    /// How many layers the TOC has.
    #[napi(getter)]
    pub fn layer_count(&self) -> u32 {
        self.inner.toc.layers.len() as u32
    }

    /// The content digest of each layer (`format::build::LayerDigest`); needs every chunk digest.
    #[napi]
    pub fn layer_digests(&self, env: Env) -> Result<Vec<String>> {
        build::toc_layer_digests(&self.inner.toc).map_err(|e| err(env, e))
    }

    /// The image's content digest (`format::build::image_content_digest`); needs every chunk digest.
    #[napi]
    pub fn content_digest(&self, env: Env) -> Result<String> {
        Ok(build::image_content_digest(&self.layer_digests(env)?))
    }

    /// Where the chunk digests are (`format::digests`): the TOC's version, and for version 2 the
    /// digest table blob, its size and its sections.
    #[napi]
    pub fn digest_info(&self) -> DigestInfo {
        let t = &self.inner.toc;
        let d = &t.digests;
        DigestInfo {
            version: t.version as u32,
            blob: d.table_ref().map(|r| r.blob.clone()),
            blob_size: d.blob_size() as f64,
            section: d.table_ref().map_or(0, |r| r.section),
            sections: d.sections() as u32,
            complete: d.complete(),
        }
    }

    /// Load the whole digest table (its blob digest checked by the caller): every section checked
    /// against the TOC.
    #[napi]
    pub fn load_digests(&self, env: Env, blob: Buffer) -> Result<()> {
        self.inner.toc.digests.load(&blob).map_err(|m| err(env, CoreError::corrupt(m)))
    }

    /// Load section `i` of the digest table, checked against the TOC; false if loaded before.
    #[napi]
    pub fn add_digest_section(&self, env: Env, i: u32, bytes: Buffer) -> Result<bool> {
        self.inner.toc.digests.add_section(i, &bytes).map_err(|m| err(env, CoreError::corrupt(m)))
    }

    /// The digest table sections, in order, holding digests of `chunks` not loaded yet.
    #[napi]
    pub fn missing_digest_sections(&self, chunks: Uint32Array) -> Uint32Array {
        self.inner.toc.digests.missing_sections(chunks.iter().copied()).into()
    }

    /// SHA-256 hex of section `i` as the TOC states it ("" if there is no such section).
    #[napi]
    pub fn digest_section_hash(&self, i: u32) -> String {
        self.inner.toc.digests.table_ref().and_then(|r| r.hashes.get(i as usize)).map_or_else(String::new, |h| ocichunk_core::format::digests::hex(h))
    }

    /// Load dictionary `i` (decompressed from its frame; its length checked against the TOC).
    #[napi]
    pub fn set_dictionary(&self, env: Env, i: u32, raw: Buffer) -> Result<()> {
        self.inner.set_dict(i, raw.to_vec()).map_err(|e| err(env, e))
    }

    /// Whether dictionary `i` is loaded.
    #[napi]
    pub fn has_dictionary(&self, i: u32) -> bool {
        self.inner.dict(i).is_some()
    }

    /// Decompress frames `(offset, length, uncompressed length)` of `data`, which are the TOC's
    /// frames `tocFrames` (each with its dictionary, which must be loaded), off the JS thread.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn decompress_frames(
        &self,
        env: Env,
        data: Buffer,
        frames: Uint32Array,
        toc_frames: Uint32Array,
        threads: u32,
    ) -> Result<AsyncTask<Coded<DecompressTask>>> {
        let frames = triplets(&frames, "frames").map_err(|e| err(env, e))?;
        if toc_frames.len() != frames.len() {
            return Err(err(env, CoreError::invalid(format!("{} TOC frames for {} frames", toc_frames.len(), frames.len()))));
        }
        let dicts = toc_frames.iter().map(|&f| self.inner.frame_dict(f)).collect::<CoreResult<Vec<_>>>().map_err(|e| err(env, e))?;
        Ok(Coded::task(DecompressTask { data, frames, dicts, threads: threads as usize }))
    }

    /// `[offset, length]` of section `i` in the digest table blob.
    #[napi]
    pub fn digest_section_span(&self, i: u32) -> Vec<f64> {
        let (o, l) = self.inner.toc.digests.section_span(i);
        vec![o as f64, l as f64]
    }
}

/// [`CheckedToc::digest_info`].
#[napi(object)]
pub struct DigestInfo {
    pub version: u32,
    /// `sha256:<hex>` of the digest table blob (version 2)
    pub blob: Option<String>,
    pub blob_size: f64,
    /// chunks per section (version 2)
    pub section: u32,
    pub sections: u32,
    /// every chunk digest is loaded
    pub complete: bool,
}

// ---- the format: writing a TOC ----

#[napi(object)]
pub struct DraftStats {
    /// entries as the tar gave them (later ones of a path included)
    pub entries: f64,
    pub files: f64,
    pub file_bytes: f64,
    pub chunk_refs: f64,
}

fn draft_stats(s: build::DraftStats) -> DraftStats {
    DraftStats { entries: s.entries as f64, files: s.files as f64, file_bytes: s.file_bytes as f64, chunk_refs: s.chunk_refs as f64 }
}

/// One layer being converted (`format::build::LayerDraft`): the scan's entries, then each file's
/// chunks; a `TocBuilder` takes it in canonical order.
#[napi]
pub struct LayerDraft {
    inner: Option<build::LayerDraft>,
}

impl LayerDraft {
    fn draft(&mut self, env: Env) -> Result<&mut build::LayerDraft> {
        self.inner.as_mut().ok_or_else(|| err(env, CoreError::invalid("layer draft already taken")))
    }
}

#[napi]
impl LayerDraft {
    /// `onePass`: the layer's contents are placed as they arrive (`route` says which wait).
    #[napi(constructor)]
    pub fn new(one_pass: bool) -> Self {
        LayerDraft { inner: Some(build::LayerDraft::new(one_pass)) }
    }

    /// The next `count` tar headers' entries as a scan batch encodes them.
    #[napi]
    pub fn add_entries(&mut self, env: Env, encoded: &[u8], count: u32) -> Result<()> {
        self.draft(env)?.add_entries(encoded, count as usize).map_err(|e| err(env, e))
    }

    /// One pass: the routes of tar headers `headers` (increasing; the chunks of every header before
    /// them added), whose contents begin in the batch being placed, and the files released before
    /// each (`format::sequence`); `late` names an entry one pass cannot place in canonical order.
    #[napi]
    pub fn route(&mut self, env: Env, headers: &[u32]) -> Result<Routing> {
        self.draft(env)?.route(headers).map(routing).map_err(|e| err(env, e))
    }

    /// One pass, at the layer's end: the files still held, in canonical order.
    #[napi]
    pub fn release_rest(&mut self, env: Env) -> Result<Routing> {
        self.draft(env)?.release_rest().map(routing).map_err(|e| err(env, e))
    }

    /// Chunks of a batch: `counts[k]` chunk ids of `ids`, in order, belong to tar header `headers[k]`.
    #[napi]
    pub fn add_chunks(&mut self, env: Env, headers: &[u32], counts: &[u32], ids: &[u32]) -> Result<()> {
        if headers.len() != counts.len() || counts.iter().map(|&c| c as usize).sum::<usize>() != ids.len() {
            return Err(err(env, CoreError::invalid("chunks: headers, counts and ids do not match")));
        }
        let d = self.draft(env)?;
        let mut at = 0;
        for (&h, &c) in headers.iter().zip(counts) {
            d.add_chunks(h, &ids[at..at + c as usize]).map_err(|e| err(env, e))?;
            at += c as usize;
        }
        Ok(())
    }

    #[napi(getter)]
    pub fn stats(&mut self, env: Env) -> Result<DraftStats> {
        Ok(draft_stats(self.draft(env)?.stats))
    }

    /// Take the draft and give its layer's content digest, as a TOC built from it would.
    #[napi]
    pub fn content_digest(&mut self, env: Env, dict: &ChunkDict) -> Result<String> {
        let d = self.inner.take().ok_or_else(|| err(env, CoreError::invalid("layer draft already taken")))?;
        Ok(build::draft_content_digest(d, &dict.inner))
    }
}

#[napi(object)]
pub struct BuiltToc {
    pub json: Buffer,
    /// the JSON compressed (the TOC blob)
    pub blob: Buffer,
    pub packs: Vec<String>,
    pub chunks: u32,
    pub unique_chunk_bytes: f64,
    pub reused_chunks: u32,
    pub image_frame_bytes: f64,
    /// chunk ids whose location a destination claimed and nobody verified yet
    pub foreign: Uint32Array,
    pub layer_digests: Vec<String>,
    pub content_digest: String,
    /// the digest table blob (docs/format.md §3), and its digest
    pub digest_table: Buffer,
    pub digest_table_digest: String,
}

/// The image content digest of these layer content digests.
#[napi]
pub fn image_content_digest(layer_digests: Vec<String>) -> String {
    build::image_content_digest(&layer_digests)
}

/// A TOC being assembled (`format::build::TocBuilder`): layers in order, then `build`.
#[napi]
pub struct TocBuilder {
    inner: build::TocBuilder,
}

/// Routes of a batch's tar headers in one pass (0: placed now, 1: held), and before each, how many
/// held files are released (`releasedBefore`, counted from the batch's start); the released files'
/// chunks in canonical order, `fileStarts[i]` the index of file i's first chunk. `late`: the path
/// of an entry one pass cannot place in canonical order (the rest is then empty).
#[napi(object)]
pub struct Routing {
    pub routes: Uint8Array,
    pub released_before: Uint32Array,
    pub chunks: Uint32Array,
    pub file_starts: Uint32Array,
    pub late: Option<String>,
}

fn routing(r: std::result::Result<build::Routing, String>) -> Routing {
    match r {
        Ok(r) => Routing {
            routes: r.routes.iter().map(|&x| x as u8).collect::<Vec<u8>>().into(),
            released_before: r.released_before.into(),
            chunks: r.chunks.into(),
            file_starts: r.file_starts.into(),
            late: None,
        },
        Err(late) => Routing {
            routes: Vec::<u8>::new().into(),
            released_before: Vec::<u32>::new().into(),
            chunks: Vec::<u32>::new().into(),
            file_starts: Vec::<u32>::new().into(),
            late: Some(late),
        },
    }
}

/// A layer's chunks in canonical order, file after file: `fileStarts[i]` is the index of file i's
/// first chunk.
#[napi(object)]
pub struct LayerChunks {
    pub chunks: Uint32Array,
    pub file_starts: Uint32Array,
}

#[napi]
impl TocBuilder {
    /// `prefetch`: paths, and per path `[offset, length]` in `prefetchRanges`.
    #[napi(constructor)]
    pub fn new(env: Env, version: u32, chunker: ChunkerSpec, prefetch_paths: Option<Vec<String>>, prefetch_ranges: Option<&[f64]>) -> Result<Self> {
        params(&chunker).map_err(|e| err(env, e))?;
        let paths = prefetch_paths.unwrap_or_default();
        let ranges = prefetch_ranges.unwrap_or_default();
        if ranges.len() != 2 * paths.len() || ranges.iter().any(|&v| !(v >= 0.0 && v.fract() == 0.0 && v <= (1u64 << 53) as f64)) {
            return Err(err(env, CoreError::invalid("prefetch: paths and ranges do not match")));
        }
        let prefetch: Vec<_> = paths.into_iter().enumerate().map(|(i, p)| (p, ranges[2 * i] as u64, ranges[2 * i + 1] as u64)).collect();
        let record = build::ChunkerRecord { kind: chunker.kind, min: chunker.min, avg: chunker.avg, max: chunker.max, size: chunker.size };
        Ok(TocBuilder { inner: build::TocBuilder::new(version, record, Some(prefetch)) })
    }

    /// Take a converted layer in canonical order; returns its files' chunk ids in that order (what
    /// a second pass packs) and where each file's chunks start among them.
    #[napi]
    pub fn add_draft(&mut self, env: Env, draft: &mut LayerDraft) -> Result<LayerChunks> {
        let d = draft.inner.take().ok_or_else(|| err(env, CoreError::invalid("layer draft already taken")))?;
        let entries = d.finish();
        let mut chunks = Vec::new();
        let mut file_starts = Vec::new();
        for d in &entries {
            build::append_file(&mut chunks, &mut file_starts, d.chunks.as_ref());
        }
        self.inner.add_layer(entries);
        Ok(LayerChunks { chunks: chunks.into(), file_starts: file_starts.into() })
    }

    /// Layer `layer` of an earlier conversion's TOC, as it is; its chunks interned in `dict`.
    #[napi]
    pub fn add_toc_layer(&mut self, env: Env, dict: &mut ChunkDict, toc: &CheckedToc, layer: u32) -> Result<DraftStats> {
        self.inner.add_toc_layer(&mut dict.inner, &toc.inner.toc, layer as usize).map(draft_stats).map_err(|e| err(env, e))
    }

    /// Number packs, frames and chunks in order of first reference and encode the TOC; `written[n]`
    /// is the digest of this conversion's `n`th pack, ids below `storedBefore` count as reused.
    #[napi]
    pub fn build(&self, env: Env, dict: &ChunkDict, written: Vec<String>, stored_before: u32, level: i32) -> Result<BuiltToc> {
        let b = self.inner.build(&dict.inner, &written, stored_before).map_err(|e| err(env, e))?;
        // what numbering freed goes back before the compressor's tables (tens of MiB) are made
        ocichunk_core::mem::release_free_memory();
        let blob = frame::compress_frame_once(&b.json, level).map_err(|e| err(env, e))?;
        Ok(BuiltToc {
            blob: blob.into(),
            json: b.json.into(),
            packs: b.packs,
            chunks: b.chunks,
            unique_chunk_bytes: b.unique_chunk_bytes as f64,
            reused_chunks: b.reused_chunks,
            image_frame_bytes: b.image_frame_bytes as f64,
            foreign: b.foreign.into(),
            layer_digests: b.layer_digests,
            content_digest: b.content_digest,
            digest_table: b.digest_table.into(),
            digest_table_digest: b.digest_table_digest,
        })
    }
}

/// The cache file of a chunk (`ocichunk_core::cache`: the one owner of the cache's layout).
#[napi]
pub fn chunk_cache_path(env: Env, dir: String, hex: String) -> Result<String> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(err(env, CoreError::invalid(format!("{hex:?} is not a sha256 hex digest"))));
    }
    Ok(ocichunk_core::cache::chunk_path(Path::new(&dir), &hex).to_string_lossy().into_owned())
}

// ---- cachePutMany ----

pub struct CachePutTask {
    dir: String,
    hexes: Vec<String>,
    chunks: Vec<Buffer>,
}

impl Work for CachePutTask {
    type Output = Vec<u8>;
    type JsValue = Uint8Array;
    fn compute(&mut self) -> CoreResult<Self::Output> {
        let items: Vec<(&str, &[u8])> = self.hexes.iter().map(|h| h.as_str()).zip(self.chunks.iter().map(|b| &b[..])).collect();
        Ok(ocichunk_core::cache::put_many(Path::new(&self.dir), &items)?.into_iter().map(u8::from).collect())
    }
    fn resolve(&mut self, _env: Env, o: Self::Output) -> Result<Self::JsValue> {
        Ok(o.into())
    }
}

/// Store verified chunks in the chunk cache (`ocichunk_core::cache::put_many`), off the JavaScript
/// thread; resolves to one byte per chunk, 1 where this call stored it.
#[napi(ts_return_type = "Promise<Uint8Array>")]
pub fn cache_put_many(env: Env, dir: String, hexes: Vec<String>, chunks: Vec<Buffer>) -> Result<AsyncTask<Coded<CachePutTask>>> {
    if hexes.len() != chunks.len() {
        return Err(err(env, CoreError::invalid(format!("{} digests for {} chunks", hexes.len(), chunks.len()))));
    }
    Ok(Coded::task(CachePutTask { dir, hexes, chunks }))
}

#[napi(object)]
pub struct RestoreSummary {
    pub entries: f64,
    pub files: f64,
    pub file_bytes: f64,
    pub dirs: f64,
    pub hardlinks: f64,
}

type SharedWriter = std::sync::Arc<std::sync::Mutex<Option<restore::Writer>>>;

fn poisoned() -> CoreError {
    CoreError::new(Code::Io, "restore writer poisoned")
}

fn finished() -> CoreError {
    CoreError::invalid("restore writer finished")
}

fn writer_op<T>(w: &SharedWriter, f: impl FnOnce(&mut restore::Writer) -> CoreResult<T>) -> CoreResult<T> {
    let mut g = w.lock().map_err(|_| poisoned())?;
    f(g.as_mut().ok_or_else(finished)?)
}

/// Writes a TOC's merged tree into an empty directory (crates/core/src/restore.rs).
#[napi]
pub struct RestoreWriter {
    inner: SharedWriter,
    fetcher: std::sync::Arc<restore::Fetcher>,
    /// verified batches waiting for `writePrepared`, by the sequence index they start at
    ready: std::sync::Arc<std::sync::Mutex<HashMap<u32, restore::Batch>>>,
}

pub struct RestorePrepareTask {
    fetcher: std::sync::Arc<restore::Fetcher>,
    ready: std::sync::Arc<std::sync::Mutex<HashMap<u32, restore::Batch>>>,
    start: u32,
    end: u32,
    comp: Option<Buffer>,
    frames: Vec<(u32, usize)>,
    threads: usize,
}

impl Work for RestorePrepareTask {
    type Output = i64;
    type JsValue = i64;
    fn compute(&mut self) -> CoreResult<i64> {
        let given = self.comp.as_ref().map(|c| restore::Given { bytes: c.as_ref(), frames: &self.frames });
        match self.fetcher.prepare(self.start as usize, self.end as usize, given, self.threads)? {
            restore::Prepared::Mismatch(c) => Ok(c as i64),
            restore::Prepared::Ready(b) => {
                self.ready.lock().map_err(|_| poisoned())?.insert(self.start, b);
                Ok(-1)
            }
        }
    }
    fn resolve(&mut self, _env: Env, o: i64) -> Result<i64> {
        Ok(o)
    }
}

pub struct RestoreSkeletonTask {
    inner: SharedWriter,
}

impl Work for RestoreSkeletonTask {
    type Output = ();
    type JsValue = ();
    fn compute(&mut self) -> CoreResult<()> {
        writer_op(&self.inner, |w| w.skeleton())
    }
    fn resolve(&mut self, _env: Env, _: ()) -> Result<()> {
        Ok(())
    }
}

pub struct RestoreWritePreparedTask {
    inner: SharedWriter,
    fetcher: std::sync::Arc<restore::Fetcher>,
    batch: Option<restore::Batch>,
}

impl Work for RestoreWritePreparedTask {
    type Output = ();
    type JsValue = ();
    fn compute(&mut self) -> CoreResult<()> {
        let b = self.batch.take().ok_or_else(|| CoreError::invalid("no prepared batch starts there"))?;
        let r = writer_op(&self.inner, |w| w.write_batch(&b));
        self.fetcher.recycle(b);
        r
    }
    fn resolve(&mut self, _env: Env, _: ()) -> Result<()> {
        Ok(())
    }
}

pub struct RestoreWriteTask {
    inner: SharedWriter,
    chunks: Vec<Buffer>,
}

impl Work for RestoreWriteTask {
    type Output = ();
    type JsValue = ();
    fn compute(&mut self) -> CoreResult<()> {
        let parts: Vec<&[u8]> = self.chunks.iter().map(|b| b.as_ref()).collect();
        writer_op(&self.inner, |w| w.write(&parts))
    }
    fn resolve(&mut self, _env: Env, _: ()) -> Result<()> {
        Ok(())
    }
}

#[napi]
impl RestoreWriter {
    /// Checks the TOC, merges its layers, makes `target` (empty or absent); `skeleton` (or the
    /// first write, or `finish`) creates its directories, symlinks, devices and FIFOs.
    #[napi(constructor)]
    pub fn new(env: Env, target: String, toc: &CheckedToc) -> Result<Self> {
        let w = restore::Writer::open(Path::new(&target), toc.inner.clone()).map_err(|e| err(env, e))?;
        let fetcher = std::sync::Arc::new(w.fetcher());
        Ok(RestoreWriter { inner: std::sync::Arc::new(std::sync::Mutex::new(Some(w))), fetcher, ready: Default::default() })
    }

    /// Create the directories, symlinks, devices and FIFOs off the JS thread (else the first
    /// write or `finish` does), while the first batch is fetched.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn skeleton(&self) -> AsyncTask<Coded<RestoreSkeletonTask>> {
        Coded::task(RestoreSkeletonTask { inner: self.inner.clone() })
    }

    /// Read frames from these files (the TOC's packs, in order) when `prepare` is given none.
    #[napi]
    pub fn open_packs(&self, env: Env, paths: Vec<String>) -> Result<()> {
        let paths: Vec<std::path::PathBuf> = paths.into_iter().map(Into::into).collect();
        self.fetcher.open_packs(&paths).map_err(|e| err(env, e))
    }

    /// The TOC frames chunks `start..end` of the sequence need, in pack order.
    #[napi]
    pub fn frames(&self, env: Env, start: u32, end: u32) -> Result<Uint32Array> {
        self.fetcher.frames(start as usize, end as usize).map(Into::into).map_err(|e| err(env, e))
    }

    /// Fetch chunks `start..end` of the sequence off the JS thread: their frames (from `comp`,
    /// frame `frames[2k]` at offset `frames[2k + 1]`, or read from the pack files), decompressed and
    /// every chunk compared with its digest. Resolves to -1 when the batch is ready for
    /// `writePrepared(start)`, or to the TOC index of a chunk whose bytes do not match.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn prepare(
        &self,
        env: Env,
        start: u32,
        end: u32,
        comp: Option<Buffer>,
        frames: Option<Uint32Array>,
        threads: u32,
    ) -> Result<AsyncTask<Coded<RestorePrepareTask>>> {
        let f = frames.as_deref().unwrap_or(&[]);
        if !f.len().is_multiple_of(2) || comp.is_some() != frames.is_some() {
            return Err(err(env, CoreError::invalid("prepare: compressed bytes and [frame, offset] pairs go together")));
        }
        let frames = f.chunks(2).map(|p| (p[0], p[1] as usize)).collect();
        Ok(Coded::task(RestorePrepareTask { fetcher: self.fetcher.clone(), ready: self.ready.clone(), start, end, comp, frames, threads: threads as usize }))
    }

    /// Write the batch `prepare` made of the chunks from `start` on, off the JS thread.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn write_prepared(&self, start: u32) -> AsyncTask<Coded<RestoreWritePreparedTask>> {
        let batch = self.ready.lock().ok().and_then(|mut r| r.remove(&start));
        Coded::task(RestoreWritePreparedTask { inner: self.inner.clone(), fetcher: self.fetcher.clone(), batch })
    }

    /// TOC chunk indexes in the order `write` takes them.
    #[napi]
    pub fn chunk_sequence(&self, env: Env) -> Result<Uint32Array> {
        writer_op(&self.inner, |w| Ok(w.chunk_sequence().into())).map_err(|e| err(env, e))
    }

    /// The next chunks of the sequence (verified by the caller), written off the JS thread.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn write(&self, chunks: Vec<Buffer>) -> AsyncTask<Coded<RestoreWriteTask>> {
        Coded::task(RestoreWriteTask { inner: self.inner.clone(), chunks })
    }

    /// Hardlinks and metadata; the writer is done after this.
    #[napi]
    pub fn finish(&self, env: Env) -> Result<RestoreSummary> {
        let done = || self.inner.lock().map_err(|_| poisoned())?.take().ok_or_else(finished)?.finish();
        let s = done().map_err(|e| err(env, e))?;
        Ok(RestoreSummary {
            entries: s.entries as f64,
            files: s.files as f64,
            file_bytes: s.file_bytes as f64,
            dirs: s.dirs as f64,
            hardlinks: s.hardlinks as f64,
        })
    }
}

#[napi]
pub fn mknod(env: Env, path: String, kind: String, mode: u32, major: u32, minor: u32) -> Result<()> {
    let k = match kind.as_str() {
        "char" => fsx::NodeKind::Char,
        "block" => fsx::NodeKind::Block,
        "fifo" => fsx::NodeKind::Fifo,
        _ => return Err(err(env, CoreError::invalid(format!("unknown node kind {kind:?}")))),
    };
    fsx::mknod(Path::new(&path), k, mode, major, minor).map_err(|e| err(env, e))
}

#[napi]
pub fn lsetxattr(env: Env, path: String, name: String, value: Buffer) -> Result<()> {
    fsx::lsetxattr(Path::new(&path), &name, &value).map_err(|e| err(env, e))
}

#[napi]
pub fn llistxattr(env: Env, path: String) -> Result<Vec<String>> {
    fsx::llistxattr(Path::new(&path)).map_err(|e| err(env, e))
}

#[napi]
pub fn lgetxattr(env: Env, path: String, name: String) -> Result<Buffer> {
    fsx::lgetxattr(Path::new(&path), &name).map(Into::into).map_err(|e| err(env, e))
}

/// Called once when the binding is loaded.
#[napi]
pub fn tune_allocator() {
    ocichunk_core::fsx::return_large_buffers();
}

/// Buffers of their own mappings (`mem::Pages`), shared with JavaScript without copies, whose
/// memory `release()` gives back at a known time (V8 frees a Buffer's memory only when it collects
/// it); they read as zeros after, and can be filled again.
#[napi]
pub struct PageBuffers {
    pages: std::sync::Arc<Vec<ocichunk_core::mem::Pages>>,
}

#[napi]
impl PageBuffers {
    #[napi(constructor)]
    pub fn new(env: Env, count: u32, size: f64) -> Result<Self> {
        if !(size >= 0.0 && size <= (1u64 << 40) as f64) {
            return Err(err(env, CoreError::invalid(format!("buffers of {size} bytes"))));
        }
        let pages = (0..count).map(|_| ocichunk_core::mem::Pages::new(size as usize)).collect::<CoreResult<Vec<_>>>().map_err(|e| err(env, e))?;
        Ok(PageBuffers { pages: std::sync::Arc::new(pages) })
    }

    /// The buffers, as Buffers over the same memory (no copy).
    #[napi(ts_return_type = "Buffer[]")]
    pub fn buffers(&self, env: Env) -> Result<Vec<napi::JsBuffer>> {
        (0..self.pages.len())
            .map(|i| {
                let (p, n) = (self.pages[i].as_ptr(), self.pages[i].len());
                // SAFETY: the mapping lives until the last Arc is dropped; the finalizer holds one
                unsafe { env.create_buffer_with_borrowed_data(p, n, self.pages.clone(), |keep, _env| drop(keep)) }.map(|b| b.into_raw())
            })
            .collect()
    }

    /// Give the memory back (nothing may be reading or writing the buffers meanwhile).
    #[napi]
    pub fn release(&self) {
        for p in self.pages.iter() {
            p.release();
        }
    }
}

/// Return freed memory to the system now (`mem::release_free_memory`).
#[napi]
pub fn release_free_memory() {
    ocichunk_core::mem::release_free_memory();
}

#[napi]
pub fn core_version() -> String {
    ocichunk_core::VERSION.to_string()
}

/// Every `code` an error of the core can carry (`Code::ALL`).
#[napi]
pub fn error_codes() -> Vec<String> {
    Code::ALL.iter().map(|c| c.as_str().to_string()).collect()
}

// ---- lazy mount (FUSE) ----

use napi::threadsafe_function::{ErrorStrategy, ThreadSafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode};
use ocichunk_core::lazyfs;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

type Done = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;

#[derive(Default)]
struct Pending {
    next: u32,
    waiting: HashMap<u32, Done>,
}

/// Chunk requests from FUSE threads to JavaScript: `fetch([requestId, ...chunkIndexes])`, answered
/// with `LazyMount.complete(requestId, error?)`; request id 0 is a background fetch (a hint: chunks
/// likely read soon), which nobody waits for and which gets no answer.
struct JsFetcher {
    tsfn: ThreadsafeFunction<Vec<u32>, ErrorStrategy::Fatal>,
    pending: Arc<Mutex<Pending>>,
}

impl lazyfs::Fetcher for JsFetcher {
    fn fetch(&self, chunks: Vec<u32>, done: Done) {
        let id = {
            let mut p = self.pending.lock().unwrap();
            // 0 is a hint's id
            p.next = p.next.checked_add(1).unwrap_or(1);
            let id = p.next;
            p.waiting.insert(id, done);
            id
        };
        let mut msg = Vec::with_capacity(chunks.len() + 1);
        msg.push(id);
        msg.extend(chunks);
        if self.tsfn.call(msg, ThreadsafeFunctionCallMode::NonBlocking) != Status::Ok {
            if let Some(d) = self.pending.lock().unwrap().waiting.remove(&id) {
                d(Err("the fetcher is gone (unmounting)".into()));
            }
        }
    }

    fn prefetch(&self, chunks: Vec<u32>) {
        let mut msg = Vec::with_capacity(chunks.len() + 1);
        msg.push(0);
        msg.extend(chunks);
        // a hint lost while unmounting is no loss
        let _ = self.tsfn.call(msg, ThreadsafeFunctionCallMode::NonBlocking);
    }
}

#[napi(object)]
pub struct MountStats {
    pub reads: f64,
    pub bytes_read: f64,
    pub fetch_requests: f64,
    pub chunks_requested: f64,
    pub cache_reads: f64,
    pub chunks_hashed: f64,
    /// chunks the fetcher handed over verified (kept in memory, not hashed by the mount)
    pub chunks_provided: f64,
    pub errors: f64,
    /// background fetches asked for by first reads of files, and their chunks
    pub prefetch_hints: f64,
    pub chunks_hinted: f64,
}

#[napi]
pub struct LazyMount {
    mount: Option<lazyfs::Mount>,
    pending: Arc<Mutex<Pending>>,
    tsfn: Option<ThreadsafeFunction<Vec<u32>, ErrorStrategy::Fatal>>,
}

#[napi]
impl LazyMount {
    /// Answer fetch request `id`: its chunks are in the cache now (or could not be fetched).
    #[napi]
    pub fn complete(&self, id: u32, error: Option<String>) {
        if let Some(d) = self.pending.lock().unwrap().waiting.remove(&id) {
            d(match error {
                Some(e) => Err(e),
                None => Ok(()),
            });
        }
    }

    #[napi]
    pub fn stats(&self) -> MountStats {
        let s = self.mount.as_ref().map(|m| &m.shared.stats);
        let g = |f: fn(&lazyfs::FsStats) -> &std::sync::atomic::AtomicU64| s.map(|s| f(s).load(Ordering::Relaxed) as f64).unwrap_or(0.0);
        MountStats {
            reads: g(|s| &s.reads),
            bytes_read: g(|s| &s.bytes_read),
            fetch_requests: g(|s| &s.fetch_requests),
            chunks_requested: g(|s| &s.chunks_requested),
            cache_reads: g(|s| &s.cache_reads),
            chunks_hashed: g(|s| &s.chunks_hashed),
            chunks_provided: g(|s| &s.chunks_provided),
            errors: g(|s| &s.errors),
            prefetch_hints: g(|s| &s.prefetch_hints),
            chunks_hinted: g(|s| &s.chunks_hinted),
        }
    }

    /// Chunks fetched and verified (against their digests) by the caller: kept in the mount's
    /// memory with the chunks it verified itself, so reads need not wait for their cache files.
    #[napi]
    pub fn provide(&self, env: Env, chunks: Uint32Array, data: Vec<Buffer>) -> Result<()> {
        let Some(m) = self.mount.as_ref() else { return Ok(()) };
        if chunks.len() != data.len() {
            return Err(err(env, CoreError::invalid(format!("{} chunks, {} buffers", chunks.len(), data.len()))));
        }
        for (&c, b) in chunks.iter().zip(data.iter()) {
            m.shared.provide(c, b.to_vec()).map_err(|e| err(env, e))?;
        }
        Ok(())
    }

    /// The reads recorded since the last call, as [ino, offset, length, ...].
    #[napi]
    pub fn take_trace(&self) -> Vec<f64> {
        let Some(t) = self.mount.as_ref().and_then(|m| m.shared.trace.as_ref()) else { return Vec::new() };
        let v = std::mem::take(&mut *t.lock().unwrap());
        v.into_iter().flat_map(|(i, o, l)| [i as f64, o as f64, l as f64]).collect()
    }

    /// Unmount (waits for the kernel to let go), fail pending fetches and release the callback.
    /// Returns true when the mount was busy and had to be detached (lazy unmount).
    #[napi]
    pub fn unmount(&mut self) -> bool {
        let detached = self.mount.take().map(|mut m| m.unmount()).unwrap_or(false);
        for (_, d) in self.pending.lock().unwrap().waiting.drain() {
            d(Err("unmounted".into()));
        }
        if let Some(t) = self.tsfn.take() {
            let _ = t.abort();
        }
        detached
    }
}

/// What a mount lets the image do beyond being read (lazyfs::MountFlags; all off by default).
#[napi(object)]
pub struct MountFlags {
    pub allow_other: bool,
    pub allow_suid: bool,
    pub allow_dev: bool,
    /// each layer as an overlayfs layer directory (`format::layers`) instead of the merged tree
    pub layers: Option<bool>,
    /// bytes of verified chunks kept in memory (default `lazyfs::VERIFIED_BYTES`, 64 MiB)
    pub verified_bytes: Option<f64>,
    /// files of at most this many bytes are fetched whole when first read (default
    /// `lazyfs::WHOLE_FILE_BYTES`, 16 MiB; 0: off)
    pub whole_file_bytes: Option<f64>,
    /// when a second file of a directory is read, its other files are fetched if they add up to at
    /// most this many bytes (default `lazyfs::WHOLE_DIR_BYTES`: 0, off)
    pub whole_dir_bytes: Option<f64>,
}

pub struct MountTask {
    toc: Arc<format::Checked>,
    mountpoint: String,
    cache_dir: String,
    record: bool,
    layers: bool,
    budget: usize,
    whole_file: u64,
    whole_dir: u64,
    flags: lazyfs::MountFlags,
    pending: Arc<Mutex<Pending>>,
    tsfn: Option<ThreadsafeFunction<Vec<u32>, ErrorStrategy::Fatal>>,
}

impl Work for MountTask {
    type Output = lazyfs::Mount;
    type JsValue = LazyMount;
    /// The merged tree is built and the filesystem mounted here, off the JavaScript thread: fetches
    /// (a prefetch list) started before run meanwhile.
    fn compute(&mut self) -> CoreResult<Self::Output> {
        let Some(tsfn) = self.tsfn.clone() else { return Err(CoreError::invalid("mounted already")) };
        let fetcher = JsFetcher { tsfn, pending: self.pending.clone() };
        let shared = lazyfs::Shared::new(self.toc.clone(), self.cache_dir.clone().into(), Box::new(fetcher), self.record, self.layers)?;
        let shared = Arc::new(shared.verified_budget(self.budget).whole_file(self.whole_file).whole_dir(self.whole_dir));
        lazyfs::mount(shared, Path::new(&self.mountpoint), self.flags)
    }
    fn resolve(&mut self, _env: Env, mount: Self::Output) -> Result<Self::JsValue> {
        Ok(LazyMount { mount: Some(mount), pending: self.pending.clone(), tsfn: self.tsfn.take() })
    }
}

/// Mount a chunked image's merged tree (or its layers) read-only at `mountpoint`, reading chunks
/// from `cache_dir` and asking `fetch` for missing ones; resolves once mounted.
#[napi(ts_return_type = "Promise<LazyMount>")]
pub fn mount_lazy(
    env: Env,
    toc: &CheckedToc,
    mountpoint: String,
    cache_dir: String,
    record: bool,
    flags: MountFlags,
    fetch: JsFunction,
) -> Result<AsyncTask<Coded<MountTask>>> {
    let budget = match flags.verified_bytes {
        None => lazyfs::VERIFIED_BYTES,
        Some(b) if b >= 0.0 && b <= usize::MAX as f64 => b as usize,
        Some(b) => return Err(err(env, CoreError::invalid(format!("verified chunk budget of {b} bytes")))),
    };
    let limit = |v: Option<f64>, default: u64, what: &str| match v {
        None => Ok(default),
        Some(b) if b >= 0.0 && b <= (1u64 << 53) as f64 => Ok(b as u64),
        Some(b) => Err(err(env, CoreError::invalid(format!("{what} of {b} bytes")))),
    };
    let whole_file = limit(flags.whole_file_bytes, lazyfs::WHOLE_FILE_BYTES, "whole-file read-ahead")?;
    let whole_dir = limit(flags.whole_dir_bytes, lazyfs::WHOLE_DIR_BYTES, "directory read-ahead")?;
    let tsfn: ThreadsafeFunction<Vec<u32>, ErrorStrategy::Fatal> =
        fetch.create_threadsafe_function(0, |ctx: ThreadSafeCallContext<Vec<u32>>| Ok(vec![ctx.value]))?;
    Ok(Coded::task(MountTask {
        toc: toc.inner.clone(),
        mountpoint,
        cache_dir,
        record,
        layers: flags.layers.unwrap_or(false),
        budget,
        whole_file,
        whole_dir,
        flags: lazyfs::MountFlags { allow_other: flags.allow_other, allow_suid: flags.allow_suid, allow_dev: flags.allow_dev },
        pending: Arc::new(Mutex::new(Pending::default())),
        tsfn: Some(tsfn),
    }))
}

/// A chunk's location in `ChunkDict` (`format::dict::Location`); `pack` is a stored pack's digest or
/// the number of a pack the conversion under way writes.
/// Rows of `ChunkDict::spool_plan`: ids, spool offsets, byte counts (compressed where `raw` is 0),
/// and 1 where a file begins before the chunk.
#[napi(object)]
pub struct SpoolPlanRows {
    pub ids: Uint32Array,
    pub offsets: Float64Array,
    pub lens: Uint32Array,
    pub raw: Uint8Array,
    pub starts: Uint8Array,
}

#[napi(object)]
pub struct PackLocationKeys {
    pub pack: String,
    pub keys: Vec<String>,
}

#[napi(object)]
pub struct ChunkLocation {
    pub pack: Either<String, u32>,
    pub offset: f64,
    pub compressed_len: u32,
    pub len: u32,
    pub inner: u32,
    /// the dictionary the frame was compressed with, if any
    pub dict: Option<DictFrameLocation>,
}

/// Where a dictionary's frame is (`format::dict::DictLocation`).
#[napi(object)]
pub struct DictFrameLocation {
    pub pack: Either<String, u32>,
    pub offset: f64,
    pub compressed_len: u32,
    pub len: u32,
}

/// The chunk dictionary of a conversion (`format::dict::ChunkDict`): chunk ids by digest, their
/// lengths, locations, spool offsets and whether a location still has to be verified.
#[napi]
pub struct ChunkDict {
    inner: format::ChunkDict,
}

impl ChunkDict {
    fn id(&self, env: Env, id: u32) -> Result<u32> {
        if (id as usize) < self.inner.len() {
            Ok(id)
        } else {
            Err(err(env, CoreError::invalid(format!("chunk id {id} of {}", self.inner.len()))))
        }
    }
}

fn location(env: Env, dict: &mut format::ChunkDict, l: &ChunkLocation) -> Result<format::dict::Location> {
    if !(l.offset >= 0.0 && l.offset <= (1u64 << 53) as f64 && l.offset.fract() == 0.0) {
        return Err(err(env, CoreError::invalid(format!("chunk location at offset {}", l.offset))));
    }
    let name = |p: &Either<String, u32>| match p {
        Either::A(d) => PackName::Stored(d.clone()),
        Either::B(n) => PackName::Written(*n),
    };
    let pack = dict.pack_ref(name(&l.pack));
    let used = match &l.dict {
        None => None,
        Some(d) => {
            if !(d.offset >= 0.0 && d.offset <= (1u64 << 53) as f64 && d.offset.fract() == 0.0) {
                return Err(err(env, CoreError::invalid(format!("dictionary location at offset {}", d.offset))));
            }
            let p = dict.pack_ref(name(&d.pack));
            Some(dict.dict_ref(format::dict::DictLocation { pack: p, offset: d.offset as u64, compressed_len: d.compressed_len, len: d.len }))
        }
    };
    Ok(format::dict::Location { pack, offset: l.offset as u64, compressed_len: l.compressed_len, len: l.len, inner: l.inner, dict: used })
}

#[napi]
impl ChunkDict {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        ChunkDict { inner: format::ChunkDict::new() }
    }

    #[napi(getter)]
    pub fn size(&self) -> u32 {
        self.inner.len() as u32
    }

    /// Ids of `digests.length / 32` chunks (binary SHA-256s back to back), added when unknown with
    /// the given lengths. New chunks get the next ids in order: a chunk is new where its id is the
    /// size before the call plus the number of new ones before it.
    #[napi]
    pub fn intern(&mut self, env: Env, digests: &[u8], lengths: &[u32]) -> Result<Uint32Array> {
        if digests.len() != lengths.len() * 32 {
            return Err(err(env, CoreError::invalid(format!("{} bytes of digests for {} lengths", digests.len(), lengths.len()))));
        }
        let mut ids = vec![0u32; lengths.len()];
        self.inner.intern_all(digests, lengths, &mut ids);
        Ok(ids.into())
    }

    /// Id of a known chunk (binary SHA-256), or -1.
    #[napi]
    pub fn lookup(&self, digest: &[u8]) -> i64 {
        match <&[u8; 32]>::try_from(digest) {
            Ok(d) => self.inner.get(d).map_or(-1, i64::from),
            Err(_) => -1,
        }
    }

    #[napi]
    pub fn hex(&self, env: Env, id: u32) -> Result<String> {
        let d = self.inner.digest(self.id(env, id)?);
        Ok(d.iter().map(|b| format!("{b:02x}")).collect())
    }

    #[napi]
    pub fn length(&self, env: Env, id: u32) -> Result<u32> {
        Ok(self.inner.chunk_len(self.id(env, id)?))
    }

    /// Neither stored nor claimed by this conversion.
    #[napi]
    pub fn unplaced(&self, env: Env, id: u32) -> Result<bool> {
        Ok(self.inner.unplaced(self.id(env, id)?))
    }

    #[napi]
    pub fn claim(&mut self, env: Env, id: u32) -> Result<()> {
        let id = self.id(env, id)?;
        self.inner.claim(id);
        Ok(())
    }

    #[napi]
    pub fn unclaim(&mut self, env: Env, id: u32) -> Result<()> {
        let id = self.id(env, id)?;
        self.inner.unclaim(id);
        Ok(())
    }

    #[napi]
    pub fn set_location(&mut self, env: Env, id: u32, at: ChunkLocation) -> Result<()> {
        let (id, at) = (self.id(env, id)?, location(env, &mut self.inner, &at)?);
        self.inner.set_location(id, at);
        Ok(())
    }

    /// A location a destination's TOC claims: `isForeign` until `trust`.
    #[napi]
    pub fn set_foreign(&mut self, env: Env, id: u32, at: ChunkLocation) -> Result<()> {
        let (id, at) = (self.id(env, id)?, location(env, &mut self.inner, &at)?);
        self.inner.set_foreign(id, at);
        Ok(())
    }

    #[napi]
    pub fn location(&self, env: Env, id: u32) -> Result<Option<ChunkLocation>> {
        let name = |p: u32| match self.inner.pack_name(p) {
            PackName::Stored(d) => Either::A(d.clone()),
            PackName::Written(n) => Either::B(*n),
        };
        Ok(self.inner.location(self.id(env, id)?).map(|l| ChunkLocation {
            pack: name(l.pack),
            offset: l.offset as f64,
            compressed_len: l.compressed_len,
            len: l.len,
            inner: l.inner,
            dict: l.dict.map(|r| {
                let d = self.inner.dict_location(r);
                DictFrameLocation { pack: name(d.pack), offset: d.offset as f64, compressed_len: d.compressed_len, len: d.len }
            }),
        }))
    }

    /// The trust record line of the chunk's location (`ChunkDict::location_key`), if it is placed.
    #[napi]
    pub fn location_key(&self, env: Env, id: u32) -> Result<Option<String>> {
        Ok(self.inner.location_key(self.id(env, id)?).map(|(_, line)| line))
    }

    /// The trust record lines of the chunks from `from` on placed in stored packs, by pack.
    #[napi]
    pub fn location_keys_from(&self, from: u32) -> Vec<PackLocationKeys> {
        self.inner.location_keys_from(from).into_iter().map(|(pack, keys)| PackLocationKeys { pack, keys }).collect()
    }

    #[napi]
    pub fn is_foreign(&self, env: Env, id: u32) -> Result<bool> {
        Ok(self.inner.is_foreign(self.id(env, id)?))
    }

    #[napi]
    pub fn trust(&mut self, env: Env, id: u32) -> Result<()> {
        let id = self.id(env, id)?;
        self.inner.trust(id);
        Ok(())
    }

    /// Where the chunk's bytes wait in the spool: raw (`compressedLength` -1) or compressed alone.
    #[napi]
    pub fn set_spooled(&mut self, env: Env, id: u32, offset: f64, compressed_length: i64) -> Result<()> {
        let id = self.id(env, id)?;
        if !(offset >= 0.0 && offset.fract() == 0.0) || compressed_length > u32::MAX as i64 {
            return Err(err(env, CoreError::invalid(format!("spool offset {offset}, length {compressed_length}"))));
        }
        let compressed_len = u32::try_from(compressed_length).ok();
        self.inner.set_spooled(id, format::dict::Spooled { offset: offset as u64, compressed_len });
        Ok(())
    }

    /// `[offset, compressedLength or -1]`, or undefined when the chunk's bytes are not spooled.
    #[napi]
    pub fn spooled(&self, env: Env, id: u32) -> Result<Option<Vec<f64>>> {
        Ok(self.inner.spooled(self.id(env, id)?).map(|s| vec![s.offset as f64, s.compressed_len.map_or(-1.0, f64::from)]))
    }

    /// Pass 2 of an unsorted layer: which of `chunks` (canonical order, files beginning at
    /// `fileStarts`) to place, and where the spool holds them (`ChunkDict::spool_plan`).
    #[napi]
    pub fn spool_plan(&self, env: Env, chunks: Uint32Array, file_starts: Uint32Array) -> Result<SpoolPlanRows> {
        let p = self.inner.spool_plan(&chunks, &file_starts).map_err(|e| err(env, e))?;
        Ok(SpoolPlanRows {
            ids: p.ids.into(),
            offsets: Float64Array::new(p.offsets.iter().map(|&o| o as f64).collect()),
            lens: p.lens.into(),
            raw: Uint8Array::new(p.raw.iter().map(|&r| r as u8).collect()),
            starts: Uint8Array::new(p.starts.iter().map(|&r| r as u8).collect()),
        })
    }

    /// Pack `number` of the conversion under way was committed as `digest`.
    #[napi]
    pub fn resolve_written(&mut self, number: u32, digest: String) {
        self.inner.resolve_written(number, &digest);
    }

    /// Forget the chunks added after the dictionary held `mark`.
    #[napi]
    pub fn truncate(&mut self, mark: u32) {
        self.inner.truncate(mark as usize);
    }
}

#[napi(object)]
pub struct PackSpec {
    pub level: i32,
    pub threads: u32,
    pub group_below: u32,
    pub group_target: u32,
    /// bytes of a run frame: consecutive chunks of `groupBelow` bytes or more of one file share one
    /// (absent or below `groupBelow`: each such chunk is a frame of its own)
    pub run_target: Option<u32>,
    pub pack_target: f64,
    pub batch_bytes: f64,
    /// bytes of each layer's zstd dictionary (absent or 0: none), and of the sample it is trained from
    pub dict_size: Option<u32>,
    pub dict_sample: Option<f64>,
}

/// The frame and pack writer (`format::pack::FrameWriter`): chunks placed in order become frames,
/// sealed into batches that `compressNext` compresses off the JS thread and `land` places in packs.
#[napi]
pub struct PackWriter {
    inner: pack::FrameWriter,
}

/// A compressed batch: frames back to back in `data` (absent: in the buffer given to
/// `compressNext`); per frame `[compressedLength, length, chunks]` in `frames`, their chunk ids in
/// order in `ids`.
#[napi(object)]
pub struct CompressedBatch {
    pub data: Option<Buffer>,
    pub frames: Uint32Array,
    pub ids: Uint32Array,
}

pub struct PackCompressTask {
    sealed: Option<pack::Sealed>,
    level: i32,
    threads: usize,
    recycle: pack::Recycler,
    out: Option<Buffer>,
}

impl Work for PackCompressTask {
    type Output = pack::Compressed;
    type JsValue = CompressedBatch;
    fn compute(&mut self) -> CoreResult<Self::Output> {
        let out = self.out.as_mut().map(|b| b.as_mut());
        pack::compress(self.sealed.take().unwrap_or_default(), self.level, self.threads, Some(&self.recycle), out)
    }
    fn resolve(&mut self, _env: Env, c: Self::Output) -> Result<Self::JsValue> {
        // the chunk count's top bits: compressed with the layer's dictionary (31), with the carried one (30)
        let frames: Vec<u32> = c.frames.iter().flat_map(|f| [f.compressed_len, f.len, f.ids.len() as u32 | dict_bits(f.dict)]).collect();
        let ids: Vec<u32> = c.frames.into_iter().flat_map(|f| f.ids).collect();
        Ok(CompressedBatch { data: c.data.map(Into::into), frames: frames.into(), ids: ids.into() })
    }
}

fn dict_bits(d: pack::FrameDict) -> u32 {
    match d {
        pack::FrameDict::None => 0,
        pack::FrameDict::Layer => 1 << 31,
        pack::FrameDict::Carried => 1 << 30,
    }
}

pub struct AloneTask {
    data: Buffer,
    parts: Vec<(usize, usize)>,
    dict: Option<std::sync::Arc<ocichunk_core::frame::Dictionary>>,
    level: i32,
    threads: usize,
    out: Buffer,
}

impl Work for AloneTask {
    type Output = Vec<u32>;
    type JsValue = Uint32Array;
    fn compute(&mut self) -> CoreResult<Self::Output> {
        pack::compress_alone(&self.data, &self.parts, self.dict.as_deref(), self.level, self.threads, self.out.as_mut())
    }
    fn resolve(&mut self, _env: Env, sizes: Self::Output) -> Result<Self::JsValue> {
        Ok(sizes.into())
    }
}

#[napi]
impl PackWriter {
    /// Whether this layer's run frames use a dictionary carried from a lower layer: then a big
    /// chunk's frame can be compressed before the layer's chunks are placed (`compressAlone`).
    #[napi(getter)]
    pub fn carries_dictionary(&self) -> bool {
        self.inner.carried().is_some()
    }

    /// Compress each of `parts` (`[offset, length]` pairs of `data`) into a frame of its own, as
    /// this layer's run frames are compressed, back to back into `out` (untouched until this
    /// resolves); resolves to each frame's length. Such frames go to `placeCompressed`.
    #[napi(ts_return_type = "Promise<Uint32Array>")]
    pub fn compress_alone(&self, env: Env, data: Buffer, parts: Uint32Array, out: Buffer) -> Result<AsyncTask<Coded<AloneTask>>> {
        let parts = pairs(&parts, "parts").map_err(|e| err(env, e))?;
        let o = self.inner.options();
        Ok(Coded::task(AloneTask { data, parts, dict: self.inner.carried().cloned(), level: o.level, threads: o.threads, out }))
    }

    #[napi(constructor)]
    pub fn new(env: Env, o: PackSpec) -> Result<Self> {
        let bytes = |v: f64| if v >= 1.0 && v.fract() == 0.0 { Ok(v as u64) } else { Err(err(env, CoreError::invalid(format!("pack option {v}")))) };
        let o = pack::PackOptions {
            level: o.level,
            threads: o.threads as usize,
            group_below: o.group_below,
            group_target: o.group_target,
            run_target: o.run_target.unwrap_or(0),
            pack_target: bytes(o.pack_target)?,
            batch_bytes: bytes(o.batch_bytes)?,
            dict_size: o.dict_size.unwrap_or(0),
            dict_sample: match o.dict_sample {
                Some(v) if v != 0.0 => bytes(v)?,
                _ => 0,
            },
        };
        Ok(PackWriter { inner: pack::FrameWriter::new(o).map_err(|e| err(env, e))? })
    }

    /// An image's first layer comes next (no dictionary is carried to it).
    #[napi]
    pub fn begin_image(&mut self) {
        self.inner.begin_image();
    }

    #[napi]
    pub fn begin_layer(&mut self) {
        self.inner.begin_layer();
    }

    /// Place chunks `ids` whose bytes start at `positions` in `data` (each unless placed already),
    /// with a file boundary before each chunk whose index is in `starts` (ascending); returns how
    /// many sealed batches wait for `compressNext`.
    #[napi]
    pub fn place(&mut self, env: Env, dict: &mut ChunkDict, data: &[u8], ids: &[u32], positions: &[u32], starts: &[u32]) -> Result<u32> {
        if ids.len() != positions.len() {
            return Err(err(env, CoreError::invalid(format!("{} ids, {} positions", ids.len(), positions.len()))));
        }
        let mut next = 0;
        for (k, (&id, &at)) in ids.iter().zip(positions).enumerate() {
            let mut boundary = false;
            while starts.get(next).is_some_and(|&s| s as usize <= k) {
                next += 1;
                boundary = true;
            }
            if boundary {
                self.inner.file_boundary();
            }
            let id = dict.id(env, id)?;
            let len = dict.inner.chunk_len(id) as usize;
            let bytes = data
                .get(at as usize..at as usize + len)
                .ok_or_else(|| err(env, CoreError::invalid(format!("chunk {id} at {at}+{len} is outside the {}-byte buffer", data.len()))))?;
            self.inner.place(&mut dict.inner, id, bytes).map_err(|e| err(env, e))?;
        }
        Ok(self.inner.ready() as u32)
    }

    /// Place chunk `id` as `frame`, compressed alone earlier by `compressAlone`; returns `ready`.
    #[napi]
    pub fn place_compressed(&mut self, env: Env, dict: &mut ChunkDict, id: u32, frame: &[u8]) -> Result<u32> {
        let id = dict.id(env, id)?;
        self.inner.place_compressed(&mut dict.inner, id, frame.to_vec()).map_err(|e| err(env, e))?;
        Ok(self.inner.ready() as u32)
    }

    /// End of a layer's placements; returns how many sealed batches wait.
    #[napi]
    pub fn finish_layer(&mut self, env: Env) -> Result<u32> {
        self.inner.finish_layer().map_err(|e| err(env, e))?;
        Ok(self.inner.ready() as u32)
    }

    /// Compress the oldest sealed batch (taken now) off the JS thread, into `out` when the frames
    /// fit (it must not be touched until this resolves).
    #[napi(ts_return_type = "Promise<CompressedBatch>")]
    pub fn compress_next(&mut self, env: Env, out: Option<Buffer>) -> Result<AsyncTask<Coded<PackCompressTask>>> {
        let sealed = self.inner.take_ready().ok_or_else(|| err(env, CoreError::invalid("no sealed batch to compress")))?;
        let o = self.inner.options();
        Ok(Coded::task(PackCompressTask { sealed: Some(sealed), level: o.level, threads: o.threads, recycle: self.inner.recycler(), out }))
    }

    /// Land a compressed batch (in the order they were taken): its chunks get their locations; rows
    /// `[flags, pack, start, length]` say where its frames go (flags 1: commit the open pack first,
    /// 2: open pack number `pack` first).
    #[napi]
    pub fn land(&mut self, env: Env, dict: &mut ChunkDict, frames: &[u32], ids: &[u32]) -> Result<Uint32Array> {
        let mut list = Vec::with_capacity(frames.len() / 3);
        let mut k = 0usize;
        for f in frames.chunks_exact(3) {
            let n = (f[2] & 0x3fff_ffff) as usize;
            let chunk_ids = ids.get(k..k + n).ok_or_else(|| err(env, CoreError::invalid("frame chunk counts past the ids given")))?;
            let dict = match f[2] >> 30 {
                0 => pack::FrameDict::None,
                2 => pack::FrameDict::Layer,
                1 => pack::FrameDict::Carried,
                _ => return Err(err(env, CoreError::invalid("a frame with two dictionaries"))),
            };
            list.push(pack::Landing { compressed_len: f[0], len: f[1], ids: chunk_ids.to_vec(), dict });
            k += n;
        }
        let writes = self.inner.land(&mut dict.inner, &list).map_err(|e| err(env, e))?;
        let rows: Vec<u32> = writes.iter().flat_map(|w| [u32::from(w.close_before) | (u32::from(w.open) << 1), w.pack, w.start as u32, w.len as u32]).collect();
        Ok(rows.into())
    }

    /// The open pack was committed (end of a layer).
    #[napi]
    pub fn pack_closed(&mut self) {
        self.inner.pack_closed();
    }

    /// Forget the layer's placements (its chunks are unplaced again).
    #[napi]
    pub fn rollback_layer(&mut self, dict: &mut ChunkDict) {
        self.inner.rollback_layer(&mut dict.inner);
    }
}
