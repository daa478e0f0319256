//! Streaming layer scan: undoes gzip or zstd, parses tar headers (ustar, GNU long names and base-256
//! numbers, PAX records), gathers regular files' contents into batches, cuts them into chunks and
//! hashes the chunks on the rayon pool while the next batch fills.
//!
//! Bytes are pushed in pieces of any size; batches come out in order. A batch carries the headers
//! parsed while it filled (encoded, see [`encode_header`]), the file segments it holds, and each
//! segment's chunk lengths and SHA-256 digests. A file's unfinished last chunk moves to the next
//! batch, so chunk boundaries depend only on file contents, never on piece or batch sizes.

use crate::batch::{scan_pool, sha256};
use crate::chunker::{cut, ChunkerParams};
use crate::{Error, Result};
use rayon::prelude::*;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Decided by the first bytes (gzip and zstd magic numbers; anything else is a plain tar).
    Sniff,
}

/// A run of one regular file's bytes in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Index of the file's header among all headers of the layer.
    pub entry: u32,
    pub start: u32,
    pub len: u32,
    /// The file ends in this segment.
    pub eof: bool,
}

/// Batch buffers allocated once per scan and shared with the caller (the binding hands them to
/// JavaScript once), so that batches need no fresh memory: the scan writes a buffer only between
/// its [`BufferPool::release`] and the batch that hands it out. Memory lives until every holder
/// drops its `Arc`.
pub struct BufferPool {
    bufs: Vec<(*mut u8, usize)>,
    free: std::sync::Mutex<Vec<u32>>,
}

// SAFETY: the raw buffers are only reached through the ownership protocol above.
unsafe impl Send for BufferPool {}
unsafe impl Sync for BufferPool {}

impl BufferPool {
    pub fn new(count: usize, size: usize) -> Arc<BufferPool> {
        let bufs = (0..count).map(|_| (Box::into_raw(vec![0u8; size].into_boxed_slice()) as *mut u8, size)).collect();
        Arc::new(BufferPool { bufs, free: std::sync::Mutex::new((0..count as u32).rev().collect()) })
    }
    /// Pointer and length of buffer `i`, for a caller that exposes it (without copying) elsewhere.
    pub fn raw(&self, i: usize) -> (*mut u8, usize) {
        self.bufs[i]
    }
    pub fn len(&self) -> usize {
        self.bufs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }
    /// The caller is done with buffer `i` (it came out in a batch).
    pub fn release(&self, i: u32) -> Result<()> {
        let mut f = self.free.lock().unwrap();
        if i as usize >= self.bufs.len() || f.contains(&i) {
            return Err(Error::Invalid(format!("buffer {i} is not held")));
        }
        f.push(i);
        Ok(())
    }
    #[cfg(test)]
    fn bytes<'a>(&'a self, d: &'a BatchData) -> &'a [u8] {
        match d {
            BatchData::Pooled { index, len } => unsafe { std::slice::from_raw_parts(self.bufs[*index as usize].0, *len) },
            BatchData::Owned(v) => v,
        }
    }
    fn take(&self) -> Option<u32> {
        self.free.lock().unwrap().pop()
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        for &(p, n) in &self.bufs {
            // SAFETY: made by Box::into_raw of a boxed slice of this length in new()
            unsafe { drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n))) };
        }
    }
}

/// A batch's bytes: a pool buffer (to release when done) or, when the pool was all in use, its own.
pub enum BatchData {
    Pooled { index: u32, len: usize },
    Owned(Vec<u8>),
}

/// The batch being filled.
struct Fill {
    pooled: Option<(u32, *mut u8)>,
    owned: Vec<u8>,
    len: usize,
}

impl Fill {
    fn new(pool: &BufferPool, cap: usize) -> Fill {
        match pool.take() {
            Some(i) if pool.raw(i as usize).1 >= cap => Fill { pooled: Some((i, pool.raw(i as usize).0)), owned: Vec::new(), len: 0 },
            Some(i) => {
                let _ = pool.release(i);
                Fill { pooled: None, owned: Vec::with_capacity(cap), len: 0 }
            }
            None => Fill { pooled: None, owned: Vec::with_capacity(cap), len: 0 },
        }
    }
    fn extend(&mut self, d: &[u8]) {
        match self.pooled {
            // SAFETY: the pool buffer is ours until handed out, and callers never exceed its size (cap)
            Some((_, p)) => unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), p.add(self.len), d.len()) },
            None => self.owned.extend_from_slice(d),
        }
        self.len += d.len();
    }
    fn bytes(&self) -> &[u8] {
        match self.pooled {
            // SAFETY: as in extend
            Some((_, p)) => unsafe { std::slice::from_raw_parts(p, self.len) },
            None => &self.owned,
        }
    }
}

// SAFETY: a Fill's pool buffer belongs to the scan until handed out
unsafe impl Send for Fill {}

pub struct Batch {
    pub data: BatchData,
    /// Headers parsed while this batch filled, encoded back to back.
    pub headers: Vec<u8>,
    pub first_entry: u32,
    pub entries: u32,
    pub segs: Vec<Seg>,
    /// Chunks per segment, their lengths and digests (32 bytes each), in order.
    pub counts: Vec<u32>,
    pub lengths: Vec<u32>,
    pub digests: Vec<u8>,
}

struct Pending {
    headers: Vec<u8>,
    first_entry: u32,
    entries: u32,
    segs: Vec<Seg>,
    counts: Vec<u32>,
    lengths: Vec<u32>,
    rx: mpsc::Receiver<(BatchData, Vec<u8>)>,
}

/// Metadata records may be this large (a PAX header with big xattrs); more is refused.
const META_LIMIT: u64 = 16 << 20;
/// No sane layer holds a file this large; a header claiming more is refused before any data.
const SIZE_LIMIT: u64 = 1 << 50;
/// Batches waiting for their digests before a push blocks.
const MAX_PENDING: usize = 2;

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    File { remaining: u64 },
    Meta { flag: u8, remaining: u64 },
    Skip { remaining: u64 },
}

struct Parser {
    params: ChunkerParams,
    threads: usize,
    cap: usize,
    hdr: [u8; 512],
    hfill: usize,
    state: State,
    /// Padding to skip after the current data.
    pad: u64,
    offset: u64,
    meta: Vec<u8>,
    pax_local: Vec<(Vec<u8>, Vec<u8>)>,
    pax_global: Vec<(Vec<u8>, Vec<u8>)>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    /// The current file's name and size, for errors.
    cur_name: Vec<u8>,
    cur_size: u64,
    pool: Arc<BufferPool>,
    buf: Fill,
    segs: Vec<Seg>,
    headers: Vec<u8>,
    first_entry: u32,
    next_entry: u32,
    pending: VecDeque<Pending>,
    err: Option<Error>,
}

fn corrupt(m: String) -> Error {
    Error::Corrupt(m)
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

fn cstr(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// A numeric header field: octal (space/NUL padded) or GNU base-256 (high bit set, two's complement).
fn number(f: &[u8]) -> Option<i64> {
    if f[0] & 0x80 != 0 {
        let neg = f[0] & 0x40 != 0;
        let mut v: i128 = (f[0] & 0x3f) as i128;
        if neg {
            v -= 0x40;
        }
        for &b in &f[1..] {
            v = v.checked_mul(256)? + b as i128;
            if v.abs() > i64::MAX as i128 {
                return None;
            }
        }
        return Some(v as i64);
    }
    let mut v: i64 = 0;
    let mut seen = false;
    for &b in f {
        match b {
            b'0'..=b'7' => {
                v = v.checked_mul(8)?.checked_add((b - b'0') as i64)?;
                seen = true;
            }
            b' ' | 0 if !seen => continue,
            b' ' | 0 => break,
            _ => return None,
        }
    }
    Some(v)
}

fn parse_pax(data: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest.iter().position(|&b| b == b' ').filter(|&p| p > 0);
        let bad = || corrupt("malformed PAX extended header".into());
        let sp = sp.ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        if len <= sp + 1 || len > rest.len() {
            return Err(bad());
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec.iter().position(|&b| b == b'=').ok_or_else(|| corrupt("malformed PAX record (no \"=\")".into()))?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

fn put_u32(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_le_bytes());
}
fn put_f64(o: &mut Vec<u8>, v: f64) {
    o.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(o: &mut Vec<u8>, b: &[u8]) {
    put_u32(o, b.len() as u32);
    o.extend_from_slice(b);
}

/// Fields of one header as [`encode_header`] writes them.
pub struct Header<'a> {
    pub flag: u8,
    pub mode: u32,
    pub uid: f64,
    pub gid: f64,
    pub size: f64,
    pub mtime: f64,
    pub devmajor: u32,
    pub devminor: u32,
    pub name: &'a [u8],
    pub link: &'a [u8],
    pub pax: &'a [(&'a [u8], &'a [u8])],
}

/// Little endian: u8 type flag, u32 mode, f64 uid, gid, size, mtime (seconds), u32 devmajor,
/// devminor, then length-prefixed (u32) name and link, a u32 count of PAX records and each
/// record's key and value, length-prefixed.
pub fn encode_header(o: &mut Vec<u8>, h: &Header) {
    o.push(h.flag);
    put_u32(o, h.mode);
    for v in [h.uid, h.gid, h.size, h.mtime] {
        put_f64(o, v);
    }
    put_u32(o, h.devmajor);
    put_u32(o, h.devminor);
    put_bytes(o, h.name);
    put_bytes(o, h.link);
    put_u32(o, h.pax.len() as u32);
    for (k, v) in h.pax {
        put_bytes(o, k);
        put_bytes(o, v);
    }
}

impl Parser {
    fn new(params: ChunkerParams, batch_bytes: usize, threads: usize, pool: Arc<BufferPool>) -> Parser {
        let cap = batch_size(params, batch_bytes);
        Parser {
            buf: Fill::new(&pool, cap),
            pool,
            params,
            threads,
            cap,
            hdr: [0; 512],
            hfill: 0,
            state: State::Header,
            pad: 0,
            offset: 0,
            meta: Vec::new(),
            pax_local: Vec::new(),
            pax_global: Vec::new(),
            long_name: None,
            long_link: None,
            cur_name: Vec::new(),
            cur_size: 0,
            segs: Vec::new(),
            headers: Vec::new(),
            first_entry: 0,
            next_entry: 0,
            pending: VecDeque::new(),
            err: None,
        }
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            match self.state {
                State::Header => {
                    let n = (512 - self.hfill).min(data.len());
                    self.hdr[self.hfill..self.hfill + n].copy_from_slice(&data[..n]);
                    self.hfill += n;
                    data = &data[n..];
                    if self.hfill == 512 {
                        self.hfill = 0;
                        self.header()?;
                        self.offset += 512;
                    }
                }
                State::File { remaining } => {
                    let n = (remaining.min(data.len() as u64)) as usize;
                    self.file_data(&data[..n], remaining - n as u64 == 0)?;
                    data = &data[n..];
                    self.advance(remaining - n as u64, |r| State::File { remaining: r });
                }
                State::Meta { flag, remaining } => {
                    let n = (remaining.min(data.len() as u64)) as usize;
                    self.meta.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if remaining == n as u64 {
                        self.meta_done(flag)?;
                    }
                    self.advance(remaining - n as u64, |r| State::Meta { flag, remaining: r });
                }
                State::Skip { remaining } => {
                    let n = (remaining.min(data.len() as u64)) as usize;
                    data = &data[n..];
                    self.offset += n as u64;
                    self.state = if remaining == n as u64 { State::Header } else { State::Skip { remaining: remaining - n as u64 } };
                }
            }
        }
        Ok(())
    }

    /// After consuming data of an entry: stay, or go on to its padding.
    fn advance(&mut self, remaining: u64, stay: impl Fn(u64) -> State) {
        if remaining > 0 {
            self.state = stay(remaining);
            return;
        }
        self.state = if self.pad > 0 { State::Skip { remaining: self.pad } } else { State::Header };
    }

    fn header(&mut self) -> Result<()> {
        let h = self.hdr;
        if h.iter().all(|&b| b == 0) {
            return Ok(()); // end-of-archive blocks (and the zero padding after them)
        }
        let at = self.offset;
        let stored = number(&h[148..156]);
        let (mut unsigned, mut signed) = (0i64, 0i64);
        for (i, &b) in h.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { b };
            unsigned += b as i64;
            signed += b as i8 as i64;
        }
        if stored != Some(unsigned) && stored != Some(signed) {
            return Err(corrupt(format!("invalid tar header at byte {at} (bad checksum): corrupt, or not a tar")));
        }
        let field = |r: std::ops::Range<usize>, what: &str| {
            number(&h[r]).ok_or_else(|| corrupt(format!("tar header at byte {at}: invalid {what} field")))
        };
        let mut flag = h[156];
        let mut size = field(124..136, "size")?;
        let ustar = &h[257..263] == b"ustar\0";
        let mut name = cstr(&h[0..100]).to_vec();
        if ustar && h[345] != 0 {
            let mut p = cstr(&h[345..500]).to_vec();
            p.push(b'/');
            p.extend_from_slice(&name);
            name = p;
        }
        if flag == 0 && name.last() == Some(&b'/') {
            flag = b'5'; // old tars mark directories by a trailing slash
        }
        if size < 0 || size as u64 > SIZE_LIMIT {
            return Err(corrupt(format!("entry {} claims an absurd size ({size} bytes)", show(&name))));
        }
        if matches!(flag, b'x' | b'g' | b'L' | b'K') {
            if size as u64 > META_LIMIT {
                return Err(corrupt(format!("tar metadata record of {size} bytes at byte {at} is too large")));
            }
            self.meta.clear();
            self.pad = (512 - size as u64 % 512) % 512;
            self.state = if size == 0 { State::Header } else { State::Meta { flag, remaining: size as u64 } };
            if size == 0 {
                self.meta_done(flag)?;
            }
            return Ok(());
        }
        // PAX and GNU records apply to this entry
        if let Some(n) = self.long_name.take() {
            name = n;
        }
        let mut link = cstr(&h[157..257]).to_vec();
        if let Some(l) = self.long_link.take() {
            link = l;
        }
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = self.pax_global.clone();
        for (k, v) in std::mem::take(&mut self.pax_local) {
            if let Some(e) = pax.iter_mut().find(|e| e.0 == k) {
                e.1 = v;
            } else {
                pax.push((k, v));
            }
        }
        let mut shown = name.clone();
        for (k, v) in &pax {
            match k.as_slice() {
                b"path" => shown = v.clone(),
                b"size" => {
                    size = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .filter(|&s| s >= 0 && s as u64 <= SIZE_LIMIT)
                        .ok_or_else(|| corrupt(format!("entry {}: invalid PAX size", show(&shown))))?;
                }
                _ => {}
            }
        }
        let mode = field(100..108, "mode")?;
        let uid = field(108..116, "uid")?;
        let gid = field(116..124, "gid")?;
        let mtime = field(136..148, "mtime")?;
        let (devmajor, devminor) = if ustar || &h[257..263] == b"ustar " {
            (field(329..337, "devmajor").unwrap_or(0), field(337..345, "devminor").unwrap_or(0))
        } else {
            (0, 0)
        };
        let kv: Vec<(&[u8], &[u8])> = pax.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        encode_header(
            &mut self.headers,
            &Header {
                flag,
                mode: (mode & 0o7777_7777) as u32,
                uid: uid as f64,
                gid: gid as f64,
                size: size as f64,
                mtime: mtime as f64,
                devmajor: devmajor.clamp(0, u32::MAX as i64) as u32,
                devminor: devminor.clamp(0, u32::MAX as i64) as u32,
                name: &name,
                link: &link,
                pax: &kv,
            },
        );
        let entry = self.next_entry;
        self.next_entry = self.next_entry.checked_add(1).ok_or_else(|| corrupt("too many tar entries".into()))?;
        let size = size as u64;
        self.pad = (512 - size % 512) % 512;
        let is_file = matches!(flag, b'0' | 0 | b'7');
        if size == 0 {
            self.state = State::Header;
        } else if is_file {
            self.cur_name = shown;
            self.cur_size = size;
            self.segs.push(Seg { entry, start: self.buf.len as u32, len: 0, eof: false });
            self.state = State::File { remaining: size };
        } else {
            self.state = State::Skip { remaining: size + self.pad };
            self.pad = 0;
        }
        Ok(())
    }

    fn meta_done(&mut self, flag: u8) -> Result<()> {
        let data = std::mem::take(&mut self.meta);
        match flag {
            b'x' => self.pax_local = parse_pax(&data)?,
            b'g' => {
                for (k, v) in parse_pax(&data)? {
                    if let Some(e) = self.pax_global.iter_mut().find(|e| e.0 == k) {
                        e.1 = v;
                    } else {
                        self.pax_global.push((k, v));
                    }
                }
            }
            b'L' => self.long_name = Some(cstr(&data).to_vec()),
            _ => self.long_link = Some(cstr(&data).to_vec()),
        }
        self.offset += data.len() as u64;
        Ok(())
    }

    fn file_data(&mut self, mut data: &[u8], ends: bool) -> Result<()> {
        self.offset += data.len() as u64;
        while !data.is_empty() {
            let room = self.cap - self.buf.len;
            if room == 0 {
                self.close_batch()?;
                continue;
            }
            let n = room.min(data.len());
            self.buf.extend(&data[..n]);
            self.segs.last_mut().unwrap().len += n as u32;
            data = &data[n..];
        }
        if ends {
            self.segs.last_mut().unwrap().eof = true;
        }
        Ok(())
    }

    /// Cut the batch's segments, move an unfinished file's last chunk into a new batch and hash the
    /// chunks in the background.
    fn close_batch(&mut self) -> Result<()> {
        let segs = std::mem::take(&mut self.segs);
        let fill = std::mem::replace(&mut self.buf, Fill::new(&self.pool, self.cap));
        let data = fill.bytes();
        let params = self.params;
        let slices: Vec<(&[u8], bool)> = segs.iter().map(|s| (&data[s.start as usize..(s.start + s.len) as usize], s.eof)).collect();
        let pool = scan_pool(self.threads)?;
        let cuts: Vec<Vec<u32>> = pool.install(|| slices.par_iter().map(|&(s, eof)| cut(s, params, eof)).collect());
        drop(slices);
        if let Some(last) = segs.last().filter(|s| !s.eof) {
            let done: u32 = cuts.last().unwrap().iter().sum();
            let tail = &data[(last.start + done) as usize..(last.start + last.len) as usize];
            self.buf.extend(tail);
            self.segs.push(Seg { entry: last.entry, start: 0, len: tail.len() as u32, eof: false });
        }
        let mut ranges = Vec::new();
        for (s, c) in segs.iter().zip(&cuts) {
            let mut p = s.start as usize;
            for &l in c {
                ranges.push((p, l as usize));
                p += l as usize;
            }
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let keep = self.pool.clone();
        let job = move || {
            let data = fill.bytes();
            let digests: Vec<[u8; 32]> = ranges.par_iter().map(|&(o, l)| sha256(&data[o..o + l])).collect();
            let out = match fill.pooled {
                Some((index, _)) => BatchData::Pooled { index, len: fill.len },
                None => BatchData::Owned(fill.owned),
            };
            let _ = tx.send((out, digests.concat()));
            drop(keep);
        };
        pool.spawn(job);
        let entries = self.next_entry - self.first_entry;
        self.pending.push_back(Pending {
            headers: std::mem::take(&mut self.headers),
            first_entry: self.first_entry,
            entries,
            counts: cuts.iter().map(|c| c.len() as u32).collect(),
            lengths: cuts.into_iter().flatten().collect(),
            segs,
            rx,
        });
        self.first_entry = self.next_entry;
        Ok(())
    }

    /// Batches whose digests are ready, in order; with `all`, wait for every one.
    fn ready(&mut self, all: bool) -> Result<Vec<Batch>> {
        let mut out = Vec::new();
        while let Some(p) = self.pending.front() {
            let must = all || self.pending.len() > MAX_PENDING;
            let got = if must {
                p.rx.recv().map_err(|_| Error::Io("chunk hashing stopped".into()))?
            } else {
                match p.rx.try_recv() {
                    Ok(r) => r,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(_) => return Err(Error::Io("chunk hashing stopped".into())),
                }
            };
            let p = self.pending.pop_front().unwrap();
            out.push(Batch {
                data: got.0,
                headers: p.headers,
                first_entry: p.first_entry,
                entries: p.entries,
                segs: p.segs,
                counts: p.counts,
                lengths: p.lengths,
                digests: got.1,
            });
        }
        Ok(out)
    }

    fn end(&mut self) -> Result<()> {
        match self.state {
            State::Header if self.hfill == 0 => {}
            State::Header => return Err(corrupt(format!("tar stream ends inside a header (truncated at byte {})", self.offset + self.hfill as u64))),
            State::File { remaining } => {
                return Err(corrupt(format!(
                    "entry {} is truncated ({} of {} bytes)",
                    show(&self.cur_name),
                    self.cur_size - remaining,
                    self.cur_size
                )))
            }
            State::Meta { .. } => return Err(corrupt("tar stream truncated inside a metadata record".into())),
            // the padding of the last entry may be cut short by tar writers; its bytes carry nothing
            State::Skip { .. } => {}
        }
        if !self.segs.is_empty() || !self.headers.is_empty() {
            self.close_batch()?;
        }
        Ok(())
    }
}

impl Write for Parser {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.feed(data) {
            Ok(()) => Ok(data.len()),
            Err(e) => {
                self.err = Some(e);
                Err(io::Error::other("tar"))
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    Sniff(Parser, Vec<u8>),
    None(Parser),
    Gzip(Box<flate2::write::MultiGzDecoder<Parser>>),
    Zstd { parser: Parser, ctx: Box<zstd::stream::raw::Decoder<'static>>, out: Vec<u8>, in_frame: bool },
}

/// A layer being scanned: push its (compressed) bytes, take finished batches.
pub struct LayerScan {
    dec: Decoder,
    ended: bool,
}

enum Msg {
    Batches(Vec<Batch>),
    Failed(Error),
    /// The file is read: what it hashed to, and the end of the scan.
    End(FileDigest, Result<Vec<Batch>>),
}

/// A file being scanned on its own thread (see [`LayerScan::spawn_file`]); dropping it stops the thread.
pub struct FileScan {
    rx: mpsc::Receiver<Msg>,
    digest: Option<FileDigest>,
    last: Option<Result<Vec<Batch>>>,
}

impl FileScan {
    /// The next finished batches (waiting for at least one message); `true` once the file is read
    /// to its end: then [`FileScan::digest`] tells what it hashed to and [`FileScan::finish`] ends the scan.
    pub fn next(&mut self) -> Result<(Vec<Batch>, bool)> {
        if self.digest.is_some() {
            return Ok((Vec::new(), true));
        }
        let mut out = Vec::new();
        let mut msg = Some(self.rx.recv().map_err(|_| Error::Io("the scan thread stopped".into()))?);
        while let Some(m) = msg.take() {
            match m {
                Msg::Batches(b) => out.extend(b),
                Msg::Failed(e) => return Err(e),
                Msg::End(d, r) => {
                    self.digest = Some(d);
                    self.last = Some(r);
                    return Ok((out, true));
                }
            }
            msg = self.rx.try_recv().ok();
        }
        Ok((out, false))
    }

    pub fn digest(&self) -> Option<&FileDigest> {
        self.digest.as_ref()
    }

    /// The last batches, or why the layer's stream is incomplete.
    pub fn finish(&mut self) -> Result<Vec<Batch>> {
        match self.last.take() {
            Some(r) => r,
            None if self.digest.is_some() => Ok(Vec::new()),
            None => Err(Error::Invalid("finish before the file was read".into())),
        }
    }
}

/// What a file-backed scan read: the blob's digest ("sha256:<hex>") and size.
pub struct FileDigest {
    pub digest: String,
    pub size: u64,
}

fn decoder(c: Compression, parser: Parser) -> Result<Decoder> {
    Ok(match c {
        Compression::None => Decoder::None(parser),
        Compression::Gzip => Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(parser))),
        Compression::Zstd => Decoder::Zstd {
            parser,
            ctx: Box::new(zstd::stream::raw::Decoder::new().map_err(|e| Error::Io(format!("zstd init: {e}")))?),
            out: vec![0; 256 << 10],
            in_frame: false,
        },
        Compression::Sniff => Decoder::Sniff(parser, Vec::new()),
    })
}

fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Bytes a batch buffer needs for these settings.
pub fn batch_size(params: ChunkerParams, batch_bytes: usize) -> usize {
    batch_bytes.max(1 << 16).max(params.max_len()) + params.max_len()
}

impl LayerScan {
    /// `pool`: batch buffers of at least [`batch_size`] bytes (when it runs dry, batches get their own memory).
    pub fn new(compression: Compression, params: ChunkerParams, batch_bytes: usize, threads: usize, pool: Arc<BufferPool>) -> Result<LayerScan> {
        params.validate()?;
        let parser = Parser::new(params, batch_bytes, threads, pool);
        Ok(LayerScan { dec: decoder(compression, parser)?, ended: false })
    }

    /// Scan a file on a thread of its own, which reads, hashes (SHA-256) and parses it as fast as
    /// the batches are taken from the returned [`FileScan`] (a few batches ahead).
    pub fn spawn_file(mut self, path: &std::path::Path) -> Result<FileScan> {
        let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::Io(format!("ENOENT: {} is missing", path.display())),
            _ => Error::Io(format!("open {}: {e}", path.display())),
        })?;
        let (tx, rx) = mpsc::sync_channel::<Msg>(2);
        std::thread::Builder::new()
            .name("ocichunk-scan".into())
            .spawn(move || {
                use sha2::Digest;
                use std::io::Read;
                let mut hash = sha2::Sha256::new();
                let mut size = 0u64;
                let mut piece = vec![0u8; (1 << 20) - (64 << 10)];
                loop {
                    let n = match f.read(&mut piece) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = tx.send(Msg::Failed(Error::Io(format!("read: {e}"))));
                            return;
                        }
                    };
                    hash.update(&piece[..n]);
                    size += n as u64;
                    match self.push(&piece[..n]) {
                        Ok(b) if b.is_empty() => {}
                        Ok(b) => {
                            if tx.send(Msg::Batches(b)).is_err() {
                                return; // the caller is gone
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Msg::Failed(e));
                            return;
                        }
                    }
                }
                let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
                let digest = FileDigest { digest: format!("sha256:{hex}"), size };
                let _ = tx.send(Msg::End(digest, self.finish()));
            })
            .map_err(|e| Error::Io(format!("scan thread: {e}")))?;
        Ok(FileScan { rx, digest: None, last: None })
    }

    fn parser(&mut self) -> &mut Parser {
        match &mut self.dec {
            Decoder::Sniff(p, _) => p,
            Decoder::None(p) => p,
            Decoder::Gzip(g) => g.get_mut(),
            Decoder::Zstd { parser, .. } => parser,
        }
    }

    /// Feed the next bytes of the layer blob; returns the batches finished so far.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Batch>> {
        if self.ended {
            return Err(Error::Invalid("push after finish".into()));
        }
        if let Decoder::Sniff(_, head) = &mut self.dec {
            if head.len() + data.len() < 4 {
                head.extend_from_slice(data);
                return Ok(Vec::new());
            }
            let mut first = head.clone();
            first.extend_from_slice(&data[..4 - first.len()]);
            let early = self.decide(sniff(&first))?;
            self.feed(&early)?;
        }
        self.feed(data)?;
        self.parser().ready(false)
    }

    /// Replace the sniffing state by the decoder for `c`; returns the bytes held while sniffing.
    fn decide(&mut self, c: Compression) -> Result<Vec<u8>> {
        let placeholder = Decoder::Sniff(Parser::new(ChunkerParams::Fixed { size: 1 }, 0, 0, BufferPool::new(0, 0)), Vec::new());
        let Decoder::Sniff(parser, head) = std::mem::replace(&mut self.dec, placeholder) else { unreachable!() };
        self.dec = decoder(c, parser)?;
        Ok(head)
    }

    fn feed(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.dec {
            Decoder::Sniff(..) => unreachable!("decided before feeding"),
            Decoder::None(p) => p.feed(data)?,
            Decoder::Gzip(g) => {
                if let Err(e) = g.write_all(data) {
                    return Err(g.get_mut().err.take().unwrap_or_else(|| corrupt(format!("corrupt gzip stream: {e}"))));
                }
            }
            Decoder::Zstd { parser, ctx, out, in_frame } => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut input = InBuffer::around(data);
                while input.pos < data.len() {
                    let mut o = OutBuffer::around(&mut out[..]);
                    let hint = ctx.run(&mut input, &mut o).map_err(|e| corrupt(format!("corrupt zstd stream: {e}")))?;
                    let n = o.pos();
                    *in_frame = hint != 0;
                    parser.feed(&out[..n])?;
                }
                // drain what the decoder still holds for this input
                loop {
                    let mut o = OutBuffer::around(&mut out[..]);
                    let hint = ctx.run(&mut InBuffer::around(&[]), &mut o).map_err(|e| corrupt(format!("corrupt zstd stream: {e}")))?;
                    let n = o.pos();
                    if n == 0 {
                        break;
                    }
                    *in_frame = hint != 0;
                    parser.feed(&out[..n])?;
                }
            }
        }
        Ok(())
    }

    /// The layer's bytes are all pushed: check the stream is complete, return the remaining batches.
    pub fn finish(&mut self) -> Result<Vec<Batch>> {
        if self.ended {
            return Ok(Vec::new());
        }
        if let Decoder::Sniff(_, head) = &self.dec {
            let c = sniff(head);
            let early = self.decide(c)?;
            self.feed(&early)?;
        }
        self.ended = true;
        match &mut self.dec {
            Decoder::Sniff(..) | Decoder::None(_) => {}
            Decoder::Gzip(g) => {
                if let Err(e) = g.try_finish() {
                    return Err(g.get_mut().err.take().unwrap_or_else(|| corrupt(format!("gzip stream truncated or corrupt: {e}"))));
                }
            }
            Decoder::Zstd { in_frame, .. } => {
                if *in_frame {
                    return Err(corrupt("zstd stream truncated (unexpected end of a frame)".into()));
                }
            }
        }
        let p = self.parser();
        p.end()?;
        p.ready(true)
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::DEFAULT_CDC;

    fn header(name: &str, flag: u8, size: usize, gnu: bool) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0001750\0");
        h[116..124].copy_from_slice(b"0001750\0");
        if gnu && size > 0o77777777777 {
            h[124] = 0x80;
            h[124 + 4..136].copy_from_slice(&(size as u64).to_be_bytes());
        } else {
            h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        }
        h[136..148].copy_from_slice(b"00000000001\0");
        h[156] = flag;
        h[257..265].copy_from_slice(if gnu { b"ustar  \0" } else { b"ustar\x0000" });
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn entry(out: &mut Vec<u8>, name: &str, flag: u8, data: &[u8]) {
        out.extend(header(name, flag, data.len(), false));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn content(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 56) as u8 & 0x3f
            })
            .collect()
    }

    fn sample() -> (Vec<u8>, Vec<Vec<u8>>) {
        let files = vec![content(3 << 20, 1), b"hello\n".to_vec(), content(700 << 10, 2), Vec::new(), content(90_000, 3)];
        let mut t = Vec::new();
        entry(&mut t, "dir/", b'5', b"");
        for (i, f) in files.iter().enumerate() {
            entry(&mut t, &format!("dir/f{i}"), b'0', f);
        }
        // a PAX record naming the next entry, and a GNU long link target
        let pax = b"31 path=dir/a-much-longer-name\n";
        entry(&mut t, "PaxHeaders/x", b'x', pax);
        entry(&mut t, "short", b'2', b"");
        entry(&mut t, "././@LongLink", b'K', b"target/of/a/link\0");
        entry(&mut t, "l", b'2', b"");
        t.extend(vec![0u8; 1024]);
        (t, files)
    }

    struct Decoded {
        names: Vec<String>,
        links: Vec<String>,
        pax_path: Vec<Option<String>>,
        files: Vec<(u32, Vec<u8>)>,
        chunks: Vec<(u32, u32, [u8; 32])>,
    }

    fn run(t: &[u8], compression: Compression, piece: usize, batch: usize) -> Result<Decoded> {
        run_threads(t, compression, piece, batch, 2)
    }

    fn run_threads(t: &[u8], compression: Compression, piece: usize, batch: usize, threads: usize) -> Result<Decoded> {
        let pool = BufferPool::new(2, batch_size(DEFAULT_CDC, batch));
        let mut s = LayerScan::new(compression, DEFAULT_CDC, batch, threads, pool.clone())?;
        let mut batches = Vec::new();
        for p in t.chunks(piece) {
            batches.extend(s.push(p)?);
        }
        batches.extend(s.finish()?);
        let mut d = Decoded { names: vec![], links: vec![], pax_path: vec![], files: vec![], chunks: vec![] };
        let mut next = 0;
        for b in &batches {
            assert_eq!(b.first_entry, next);
            next += b.entries;
            let mut r = &b.headers[..];
            let take = |r: &mut &[u8], n: usize| {
                let (a, rest) = r.split_at(n);
                *r = rest;
                a.to_vec()
            };
            let u32_ = |r: &mut &[u8]| u32::from_le_bytes(take(r, 4).try_into().unwrap());
            for _ in 0..b.entries {
                take(&mut r, 1 + 4 + 32 + 8);
                let n = u32_(&mut r) as usize;
                d.names.push(String::from_utf8(take(&mut r, n)).unwrap());
                let n = u32_(&mut r) as usize;
                d.links.push(String::from_utf8(take(&mut r, n)).unwrap());
                let mut pp = None;
                for _ in 0..u32_(&mut r) {
                    let n = u32_(&mut r) as usize;
                    let k = take(&mut r, n);
                    let n = u32_(&mut r) as usize;
                    let v = take(&mut r, n);
                    if k == b"path" {
                        pp = Some(String::from_utf8(v).unwrap());
                    }
                }
                d.pax_path.push(pp);
            }
            assert!(r.is_empty());
            let mut ci = 0;
            for (si, s) in b.segs.iter().enumerate() {
                let mut p = s.start as usize;
                for _ in 0..b.counts[si] {
                    let l = b.lengths[ci] as usize;
                    let bytes = &pool.bytes(&b.data)[p..p + l];
                    let dg: [u8; 32] = b.digests[ci * 32..ci * 32 + 32].try_into().unwrap();
                    assert_eq!(sha256(bytes), dg);
                    match d.files.last_mut() {
                        Some((e, v)) if *e == s.entry => v.extend_from_slice(bytes),
                        _ => d.files.push((s.entry, bytes.to_vec())),
                    }
                    d.chunks.push((s.entry, l as u32, dg));
                    p += l;
                    ci += 1;
                }
            }
        }
        for b in &batches {
            if let BatchData::Pooled { index, .. } = b.data {
                pool.release(index).unwrap();
                assert!(pool.release(index).is_err());
            }
        }
        Ok(d)
    }

    #[test]
    fn parses_and_chunks_independent_of_piece_and_batch_sizes() {
        let (t, files) = sample();
        let a = run(&t, Compression::None, 1 << 20, 1 << 20).unwrap();
        assert_eq!(a.names, ["dir/", "dir/f0", "dir/f1", "dir/f2", "dir/f3", "dir/f4", "short", "l"]);
        assert_eq!(a.pax_path[6].as_deref(), Some("dir/a-much-longer-name"));
        assert_eq!(a.links[7], "target/of/a/link");
        let nonempty: Vec<&Vec<u8>> = files.iter().filter(|f| !f.is_empty()).collect();
        assert_eq!(a.files.iter().map(|f| &f.1).collect::<Vec<_>>(), nonempty);
        assert_eq!(a.files.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 2, 3, 5]);
        // the whole file at once gives the same chunks
        let whole = cut(&files[0], DEFAULT_CDC, true);
        assert_eq!(a.chunks.iter().filter(|c| c.0 == 1).map(|c| c.1).collect::<Vec<_>>(), whole);
        for (piece, batch) in [(1, 1 << 16), (513, 300_000), (7 << 20, 64 << 20)] {
            let b = run(&t, Compression::None, piece, batch).unwrap();
            assert_eq!((&a.names, &a.chunks), (&b.names, &b.chunks), "piece {piece} batch {batch}");
        }
        // and on any number of threads (0: the global pool)
        for threads in [0, 1, 4] {
            let b = run_threads(&t, Compression::None, 100_000, 1 << 16, threads).unwrap();
            assert_eq!((&a.names, &a.chunks), (&b.names, &b.chunks), "threads {threads}");
        }
    }

    #[test]
    fn undoes_gzip_and_zstd() {
        let (t, _) = sample();
        let a = run(&t, Compression::None, 1 << 20, 1 << 20).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&t[..1000]).unwrap();
        let mut two = gz.finish().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&t[1000..]).unwrap();
        two.extend(gz.finish().unwrap()); // two gzip members, as some tools write
        let g = run(&two, Compression::Gzip, 4096, 1 << 20).unwrap();
        assert_eq!((&a.names, &a.chunks), (&g.names, &g.chunks));
        let z = zstd::bulk::compress(&t, 3).unwrap();
        let zz = run(&z, Compression::Zstd, 10_000, 1 << 20).unwrap();
        assert_eq!((&a.names, &a.chunks), (&zz.names, &zz.chunks));
        // truncated streams are refused
        let e = run(&two[..two.len() / 2], Compression::Gzip, 4096, 1 << 20).err().unwrap();
        assert!(matches!(e, Error::Corrupt(_)), "{e}");
        let e = run(&z[..z.len() - 20], Compression::Zstd, 4096, 1 << 20).err().unwrap();
        assert!(e.to_string().contains("truncated"), "{e}");
        let mut bad = two.clone();
        for i in (40..bad.len() - 40).step_by(97) {
            bad[i] ^= 0x5a;
        }
        let e = run(&bad, Compression::Gzip, 4096, 1 << 20).err().unwrap();
        assert!(matches!(e, Error::Corrupt(_)), "{e}");
    }

    #[test]
    fn sniffs_compression_and_reads_files() {
        let (t, _) = sample();
        let a = run(&t, Compression::None, 1 << 20, 1 << 20).unwrap();
        let z = zstd::bulk::compress(&t, 3).unwrap();
        // sniffing, with pushes shorter than the magic numbers
        for (blob, piece) in [(&t, 1), (&t, 3000), (&z, 2), (&z, 5000)] {
            let b = run(blob, Compression::Sniff, piece, 1 << 20).unwrap();
            assert_eq!((&a.names, &a.chunks), (&b.names, &b.chunks));
        }
        assert!(run(b"", Compression::Sniff, 1, 1 << 20).unwrap().names.is_empty());
        // a file read by the scan: same batches, and the digest of the file
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("blob");
        std::fs::write(&f, &z).unwrap();
        let pool = BufferPool::new(4, batch_size(DEFAULT_CDC, 1 << 20));
        let s = LayerScan::new(Compression::Sniff, DEFAULT_CDC, 1 << 20, 2, pool.clone()).unwrap();
        let mut s = s.spawn_file(&f).unwrap();
        let mut n = 0;
        loop {
            let (b, eof) = s.next().unwrap();
            for x in &b {
                n += x.counts.iter().sum::<u32>() as usize;
                if let BatchData::Pooled { index, .. } = x.data {
                    pool.release(index).unwrap();
                }
            }
            if eof {
                break;
            }
        }
        n += s.finish().unwrap().iter().map(|x| x.counts.iter().sum::<u32>() as usize).sum::<usize>();
        assert_eq!(n, a.chunks.len());
        let d = s.digest().unwrap();
        let hex: String = sha256(&z).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!((d.digest.clone(), d.size), (format!("sha256:{hex}"), z.len() as u64));
        let s = LayerScan::new(Compression::Sniff, DEFAULT_CDC, 1 << 20, 2, pool).unwrap();
        assert!(s.spawn_file(&dir.path().join("missing")).err().unwrap().to_string().contains("ENOENT"));
    }

    #[test]
    fn refuses_bad_tars() {
        let (t, _) = sample();
        // truncated inside a file's data
        let e = run(&t[..2 << 20], Compression::None, 1 << 16, 1 << 20).err().unwrap();
        assert!(e.to_string().contains("\"dir/f0\" is truncated"), "{e}");
        // a flipped header byte breaks the checksum
        let mut bad = t.clone();
        bad[10] ^= 1;
        let e = run(&bad, Compression::None, 1 << 16, 1 << 20).err().unwrap();
        assert!(e.to_string().contains("checksum"), "{e}");
        // an absurd size is refused at the header
        let mut h = header("huge", b'0', 0, true);
        h[124..128].copy_from_slice(&[0x80, 0, 0, 0]);
        h[128..136].copy_from_slice(&(1u64 << 60).to_be_bytes());
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let e = run(&h, Compression::None, 512, 1 << 20).err().unwrap();
        assert!(e.to_string().contains("absurd size"), "{e}");
        // base-256 sizes within range are read
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(number(&[0xff; 8]), Some(-1));
        assert_eq!(number(b"0000644 \0"), Some(0o644));
        assert_eq!(number(b"12x"), None);
        // malformed PAX
        let mut p = Vec::new();
        entry(&mut p, "x", b'x', b"99 path=a\n");
        let e = run(&p, Compression::None, 512, 1 << 20).err().unwrap();
        assert!(e.to_string().contains("PAX"), "{e}");
    }
}
