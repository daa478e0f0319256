//! Thin napi-rs binding over `ocichunk-core`: converts types and errors, nothing else.
//! CPU-heavy calls are `AsyncTask`s (off the JS thread); buffers come in as borrowed bytes and go
//! out as `Buffer`s built from owned `Vec<u8>`s, without copies.

use napi::bindgen_prelude::*;
use napi::{Env, Task};
use napi_derive::napi;
use ocichunk_core::{batch, chunker::ChunkerParams, frame, fsx, Error as CoreError};
use std::path::Path;

fn err(e: CoreError) -> napi::Error {
    let status = match e {
        CoreError::Invalid(_) => Status::InvalidArg,
        _ => Status::GenericFailure,
    };
    napi::Error::new(status, e.to_string())
}

fn triplets(a: &[u32], what: &str) -> Result<Vec<(usize, usize, usize)>> {
    if a.len() % 3 != 0 {
        return Err(napi::Error::new(Status::InvalidArg, format!("EINVAL: {what} must hold triplets")));
    }
    Ok(a.chunks(3).map(|t| (t[0] as usize, t[1] as usize, t[2] as usize)).collect())
}

fn pairs(a: &[u32], what: &str) -> Result<Vec<(usize, usize)>> {
    if a.len() % 2 != 0 {
        return Err(napi::Error::new(Status::InvalidArg, format!("EINVAL: {what} must hold pairs")));
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

fn params(c: &ChunkerSpec) -> Result<ChunkerParams> {
    let p = match c.kind.as_str() {
        "cdc" => ChunkerParams::Cdc {
            min: c.min.unwrap_or(16 << 10) as usize,
            avg: c.avg.unwrap_or(64 << 10) as usize,
            max: c.max.unwrap_or(256 << 10) as usize,
        },
        "fixed" => ChunkerParams::Fixed { size: c.size.unwrap_or(1 << 20) as usize },
        "file" => ChunkerParams::File { max: c.max.unwrap_or(64 << 20) as usize },
        k => return Err(napi::Error::new(Status::InvalidArg, format!("EINVAL: unknown chunker kind {k:?}"))),
    };
    p.validate().map_err(err)?;
    Ok(p)
}

// ---- chunkAndHash ----

pub struct ChunkTask {
    data: Buffer,
    segments: Vec<(usize, usize, bool)>,
    params: ChunkerParams,
    threads: usize,
}

#[napi(object)]
pub struct ChunkResult {
    pub counts: Uint32Array,
    pub lengths: Uint32Array,
    pub digests: Buffer,
}

impl Task for ChunkTask {
    type Output = batch::Chunked;
    type JsValue = ChunkResult;
    fn compute(&mut self) -> Result<Self::Output> {
        batch::chunk_and_hash(&self.data, &self.segments, self.params, self.threads).map_err(err)
    }
    fn resolve(&mut self, _env: Env, o: Self::Output) -> Result<Self::JsValue> {
        Ok(ChunkResult { counts: o.counts.into(), lengths: o.lengths.into(), digests: o.digests.into() })
    }
}

#[napi(ts_return_type = "Promise<ChunkResult>")]
pub fn chunk_and_hash(data: Buffer, segments: Uint32Array, chunker: ChunkerSpec, threads: u32) -> Result<AsyncTask<ChunkTask>> {
    let segments = triplets(&segments, "segments")?.into_iter().map(|(o, l, e)| (o, l, e != 0)).collect();
    Ok(AsyncTask::new(ChunkTask { data, segments, params: params(&chunker)?, threads: threads as usize }))
}

// ---- compressFrames ----

pub struct CompressTask {
    data: Buffer,
    parts: Vec<(usize, usize)>,
    counts: Vec<u32>,
    level: i32,
    threads: usize,
}

#[napi(object)]
pub struct FramesResult {
    pub data: Buffer,
    pub sizes: Uint32Array,
}

impl Task for CompressTask {
    type Output = batch::Frames;
    type JsValue = FramesResult;
    fn compute(&mut self) -> Result<Self::Output> {
        batch::compress_frames(&self.data, &self.parts, &self.counts, self.level, self.threads).map_err(err)
    }
    fn resolve(&mut self, _env: Env, o: Self::Output) -> Result<Self::JsValue> {
        Ok(FramesResult { data: o.data.into(), sizes: o.sizes.into() })
    }
}

#[napi(ts_return_type = "Promise<FramesResult>")]
pub fn compress_frames(data: Buffer, parts: Uint32Array, frame_part_counts: Uint32Array, level: i32, threads: u32) -> Result<AsyncTask<CompressTask>> {
    Ok(AsyncTask::new(CompressTask {
        data,
        parts: pairs(&parts, "parts")?,
        counts: frame_part_counts.to_vec(),
        level,
        threads: threads as usize,
    }))
}

// ---- decompressFrames ----

pub struct DecompressTask {
    data: Buffer,
    frames: Vec<(usize, usize, usize)>,
    threads: usize,
}

impl Task for DecompressTask {
    type Output = Vec<u8>;
    type JsValue = Buffer;
    fn compute(&mut self) -> Result<Self::Output> {
        batch::decompress_frames(&self.data, &self.frames, self.threads).map_err(err)
    }
    fn resolve(&mut self, _env: Env, o: Self::Output) -> Result<Self::JsValue> {
        Ok(o.into())
    }
}

#[napi(ts_return_type = "Promise<Buffer>")]
pub fn decompress_frames(data: Buffer, frames: Uint32Array, threads: u32) -> Result<AsyncTask<DecompressTask>> {
    Ok(AsyncTask::new(DecompressTask { data, frames: triplets(&frames, "frames")?, threads: threads as usize }))
}

// ---- hashRanges ----

pub struct HashTask {
    data: Buffer,
    ranges: Vec<(usize, usize)>,
    threads: usize,
}

impl Task for HashTask {
    type Output = Vec<u8>;
    type JsValue = Buffer;
    fn compute(&mut self) -> Result<Self::Output> {
        batch::hash_ranges(&self.data, &self.ranges, self.threads).map_err(err)
    }
    fn resolve(&mut self, _env: Env, o: Self::Output) -> Result<Self::JsValue> {
        Ok(o.into())
    }
}

#[napi(ts_return_type = "Promise<Buffer>")]
pub fn hash_ranges(data: Buffer, ranges: Uint32Array, threads: u32) -> Result<AsyncTask<HashTask>> {
    Ok(AsyncTask::new(HashTask { data, ranges: pairs(&ranges, "ranges")?, threads: threads as usize }))
}

// ---- hashFile ----

pub struct HashFileTask {
    path: String,
}

impl Task for HashFileTask {
    type Output = ([u8; 32], u64);
    type JsValue = String;
    fn compute(&mut self) -> Result<Self::Output> {
        batch::hash_file(Path::new(&self.path)).map_err(err)
    }
    fn resolve(&mut self, _env: Env, o: Self::Output) -> Result<Self::JsValue> {
        let hex: String = o.0.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("sha256:{hex}:{}", o.1))
    }
}

/// Resolves to "sha256:<hex>:<size>".
#[napi(ts_return_type = "Promise<string>")]
pub fn hash_file(path: String) -> AsyncTask<HashFileTask> {
    AsyncTask::new(HashFileTask { path })
}

// ---- small synchronous helpers ----

#[napi]
pub fn compress_sync(data: Buffer, level: i32) -> Result<Buffer> {
    frame::compress_frame(&[&data], level).map(Into::into).map_err(err)
}

#[napi]
pub fn decompress_sync(data: Buffer, max_len: u32) -> Result<Buffer> {
    frame::decompress_bytes(&data, max_len as usize).map(Into::into).map_err(err)
}

#[napi]
pub fn mknod(path: String, kind: String, mode: u32, major: u32, minor: u32) -> Result<()> {
    let k = match kind.as_str() {
        "char" => fsx::NodeKind::Char,
        "block" => fsx::NodeKind::Block,
        "fifo" => fsx::NodeKind::Fifo,
        _ => return Err(napi::Error::new(Status::InvalidArg, format!("EINVAL: unknown node kind {kind:?}"))),
    };
    fsx::mknod(Path::new(&path), k, mode, major, minor).map_err(err)
}

#[napi]
pub fn lsetxattr(path: String, name: String, value: Buffer) -> Result<()> {
    fsx::lsetxattr(Path::new(&path), &name, &value).map_err(err)
}

#[napi]
pub fn llistxattr(path: String) -> Result<Vec<String>> {
    fsx::llistxattr(Path::new(&path)).map_err(err)
}

#[napi]
pub fn lgetxattr(path: String, name: String) -> Result<Buffer> {
    fsx::lgetxattr(Path::new(&path), &name).map(Into::into).map_err(err)
}

/// Called once when the binding is loaded.
#[napi]
pub fn tune_allocator() {
    ocichunk_core::fsx::return_large_buffers();
}

#[napi]
pub fn core_version() -> String {
    ocichunk_core::VERSION.to_string()
}
