//! Streaming layer scan: undoes gzip or zstd, parses tar headers (ustar, GNU long names and base-256
//! numbers, PAX records), gathers regular files' contents into batches, cuts them into chunks and
//! hashes the chunks on a rayon pool while the next batch fills.
//!
//! A batch carries the headers parsed while it filled (encoded, see [`encode_header`]), the file
//! segments it holds, and each segment's chunk lengths and SHA-256 digests. A file's unfinished last
//! chunk moves to the next batch, so chunk boundaries depend only on file contents, never on piece
//! or batch sizes. Batches live in a fixed [`BufferPool`]: when every buffer is in use the scan
//! waits for one to be released, so memory stays bounded whatever the input inflates to.
//!
//! Tar is read as Go's archive/tar (what containerd and Docker extract with) reads it: the archive
//! ends at two zero blocks, link/symlink/device/directory/fifo entries carry no data whatever their
//! size field says, a GNU long name wins over a PAX path, global PAX records are ignored, and a
//! `'\0'` type flag on a name ending in '/' is a directory.

use crate::batch::{scan_pool, sha256};
use crate::chunker::{cut, ChunkerParams};
use crate::format::canonical::{canonical, encode_entry, CanonOptions};
use crate::mem::Pages;
use crate::{Code, Error, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    Filling,
    HandedOut,
}

struct PoolState {
    slots: Vec<Slot>,
    closed: bool,
    /// Buffers whose pages went back to the system (after closing).
    dropped: Vec<bool>,
}

/// Batch buffers allocated once per scan and shared with the caller (the binding hands them to
/// JavaScript once). A buffer is Free, being Filled by the scan, or HandedOut in a batch until the
/// caller releases it; the scan writes only the buffer it fills. The address space lives until
/// every holder drops its `Arc` (JavaScript's Buffers: when they are collected), but the memory
/// does not: buffers are anonymous mappings, touched only when filled, and once the pool is closed
/// every free buffer gives its pages back at once (a buffer handed out, when it is released).
/// Without that a conversion kept every layer scan's buffers (six batches each) until V8 collected
/// the Buffers over them, which it has no reason to do (it does not count that memory).
pub struct BufferPool {
    bufs: Vec<Pages>,
    state: Mutex<PoolState>,
    freed: Condvar,
}

impl BufferPool {
    pub fn new(count: usize, size: usize) -> Result<Arc<BufferPool>> {
        let bufs = (0..count).map(|_| Pages::new(size)).collect::<Result<Vec<_>>>()?;
        let state = PoolState { slots: vec![Slot::Free; count], closed: false, dropped: vec![false; count] };
        Ok(Arc::new(BufferPool { bufs, state: Mutex::new(state), freed: Condvar::new() }))
    }
    /// A closed pool's free buffer gives its pages back (it reads as zeros from then on).
    fn give_back(&self, st: &mut PoolState, i: usize) {
        if st.closed && st.slots[i] == Slot::Free && !st.dropped[i] {
            st.dropped[i] = true;
            // nobody fills or reads a free buffer of a closed pool
            self.bufs[i].release();
        }
    }
    /// Pointer and length of buffer `i`, for a caller that exposes it (without copying) elsewhere.
    pub fn raw(&self, i: usize) -> (*mut u8, usize) {
        (self.bufs[i].as_ptr(), self.bufs[i].len())
    }
    pub fn len(&self) -> usize {
        self.bufs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }
    /// The caller is done with buffer `i`, which a batch handed out.
    pub fn release(&self, i: u32) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        match st.slots.get(i as usize) {
            Some(Slot::HandedOut) => {
                st.slots[i as usize] = Slot::Free;
                self.give_back(&mut st, i as usize);
                self.freed.notify_all();
                Ok(())
            }
            _ => Err(Error::invalid(format!("buffer {i} is not handed out"))),
        }
    }
    /// Nobody will release buffers any more: a scan waiting for one gives up.
    pub fn close(&self) {
        let mut st = self.state.lock().unwrap();
        st.closed = true;
        for i in 0..self.bufs.len() {
            self.give_back(&mut st, i);
        }
        self.freed.notify_all();
    }
    /// A free buffer of at least `size` bytes, waiting for one to be released if need be.
    fn take(&self, size: usize) -> Result<(u32, *mut u8)> {
        loop {
            if let Some(t) = self.take_or_wait(size, true)? {
                return Ok(t);
            }
        }
    }
    /// A free buffer if there is one now.
    fn try_take(&self, size: usize) -> Result<Option<(u32, *mut u8)>> {
        self.take_or_wait(size, false)
    }
    fn take_or_wait(&self, size: usize, wait: bool) -> Result<Option<(u32, *mut u8)>> {
        if self.bufs.iter().any(|b| b.len() < size) || self.bufs.is_empty() {
            return Err(Error::invalid(format!("batch buffers must hold {size} bytes")));
        }
        let mut st = self.state.lock().unwrap();
        if st.closed {
            return Err(Error::new(Code::Io, "the layer scan was stopped"));
        }
        if let Some(i) = st.slots.iter().position(|&s| s == Slot::Free) {
            st.slots[i] = Slot::Filling;
            return Ok(Some((i as u32, self.bufs[i].as_ptr())));
        }
        if wait {
            drop(self.freed.wait(st).unwrap());
        }
        Ok(None)
    }
    /// A buffer being filled by a scan that ends without handing it out.
    fn put_back(&self, i: u32) {
        let mut st = self.state.lock().unwrap();
        if st.slots.get(i as usize) == Some(&Slot::Filling) {
            st.slots[i as usize] = Slot::Free;
            self.give_back(&mut st, i as usize);
            self.freed.notify_all();
        }
    }
    fn hand_out(&self, i: u32) {
        let mut st = self.state.lock().unwrap();
        debug_assert_eq!(st.slots[i as usize], Slot::Filling);
        st.slots[i as usize] = Slot::HandedOut;
    }
    #[cfg(test)]
    fn bytes(&self, b: &Batch) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.bufs[b.buffer as usize].as_ptr(), b.len) }
    }
}

/// The pool buffer being filled.
struct Fill {
    index: u32,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a Fill's buffer belongs to the scan (slot Filling) until handed out
unsafe impl Send for Fill {}

impl Fill {
    fn new(pool: &BufferPool, cap: usize) -> Result<Fill> {
        let (index, ptr) = pool.take(cap)?;
        Ok(Fill { index, ptr, len: 0 })
    }
    fn extend(&mut self, d: &[u8]) {
        // SAFETY: the buffer is ours (Filling) and callers never exceed its size (cap)
        unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), self.ptr.add(self.len), d.len()) };
        self.len += d.len();
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: as in extend
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

pub struct Batch {
    /// The pool buffer holding the batch's bytes (release it when done) and how many it holds.
    pub buffer: u32,
    pub len: usize,
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
    buffer: u32,
    len: usize,
    headers: Vec<u8>,
    first_entry: u32,
    entries: u32,
    segs: Vec<Seg>,
    counts: Vec<u32>,
    lengths: Vec<u32>,
    rx: mpsc::Receiver<Vec<u8>>,
}

/// PAX and GNU long-name records may be this large (Go's archive/tar limit); more is refused.
const META_LIMIT: u64 = 1 << 20;
/// No sane layer holds a file this large; a header claiming more is refused before any data.
const SIZE_LIMIT: u64 = 1 << 50;
/// Batches waiting for their digests before the scan waits for the oldest.
const MAX_PENDING: usize = 2;
/// A batch is closed once its encoded headers reach this size, data or not.
const HEADERS_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    File {
        remaining: u64,
    },
    Meta {
        flag: u8,
        remaining: u64,
    },
    /// Data of an entry that is not kept: it must be complete.
    Skip {
        remaining: u64,
    },
    /// Padding to the next block: a writer may cut the very last one short.
    Pad {
        remaining: u64,
    },
    /// After the two zero blocks that end the archive: the rest is ignored.
    End,
}

/// Finished batches go to the sink as they are ready (a thread's channel), else to `Parser::out`.
type Sink = Box<dyn FnMut(Vec<Batch>) -> Result<()> + Send>;

struct Parser {
    params: ChunkerParams,
    threads: usize,
    cap: usize,
    hdr: [u8; 512],
    hfill: usize,
    state: State,
    /// Padding after the current data.
    pad: u64,
    offset: u64,
    /// One zero block seen: the next must be zero too (the end of the archive).
    zero: bool,
    meta: Vec<u8>,
    pax_local: Option<BTreeMap<Vec<u8>, Vec<u8>>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    /// The current entry's name and size, for errors.
    cur_name: Vec<u8>,
    cur_size: u64,
    pool: Arc<BufferPool>,
    buf: Fill,
    segs: Vec<Seg>,
    headers: Vec<u8>,
    first_entry: u32,
    next_entry: u32,
    pending: VecDeque<Pending>,
    out: Vec<Batch>,
    sink: Option<Sink>,
    err: Option<Error>,
    /// A batch change failed half way: nothing more can be done.
    broken: bool,
    /// Some: headers become canonical entries (what a conversion takes); None: raw headers
    canon: Option<CanonOptions>,
}

fn corrupt(m: String) -> Error {
    Error::corrupt(m)
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

/// PAX records ("<len> <key>=<value>\n"); a later record of a key replaces an earlier one.
fn parse_pax(data: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut rest = data;
    let bad = || corrupt("malformed PAX extended header".into());
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest.iter().position(|&b| b == b' ').filter(|&p| p > 0 && p <= 20).ok_or_else(bad)?;
        if !rest[..sp].iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let len: usize = std::str::from_utf8(&rest[..sp]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec.iter().position(|&b| b == b'=').ok_or_else(|| corrupt("malformed PAX record (no \"=\")".into()))?;
        out.insert(rec[..eq].to_vec(), rec[eq + 1..].to_vec());
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
/// devminor, then length-prefixed (u32) name and link (final: long names and PAX path/linkpath
/// applied), a u32 count of PAX records and each record's key and value, length-prefixed.
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
    fn new(params: ChunkerParams, batch_bytes: usize, threads: usize, pool: Arc<BufferPool>, canon: Option<CanonOptions>) -> Result<Parser> {
        let cap = batch_size(params, batch_bytes);
        if cap > u32::MAX as usize {
            return Err(Error::invalid(format!("batches of {cap} bytes are too large")));
        }
        let (index, ptr) = pool.try_take(cap)?.ok_or_else(|| Error::invalid("no free batch buffer to start a scan"))?;
        Ok(Parser {
            buf: Fill { index, ptr, len: 0 },
            pool,
            params,
            threads,
            cap,
            hdr: [0; 512],
            hfill: 0,
            state: State::Header,
            pad: 0,
            offset: 0,
            zero: false,
            meta: Vec::new(),
            pax_local: None,
            long_name: None,
            long_link: None,
            cur_name: Vec::new(),
            cur_size: 0,
            segs: Vec::new(),
            headers: Vec::new(),
            first_entry: 0,
            next_entry: 0,
            pending: VecDeque::new(),
            out: Vec::new(),
            sink: None,
            err: None,
            broken: false,
            canon,
        })
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<()> {
        if self.broken {
            return Err(Error::new(Code::Io, "the layer scan failed earlier"));
        }
        while !data.is_empty() {
            match self.state {
                State::End => return Ok(()),
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
                    let n = remaining.min(data.len() as u64) as usize;
                    self.file_data(&data[..n], remaining == n as u64)?;
                    data = &data[n..];
                    self.after(remaining - n as u64, |r| State::File { remaining: r });
                }
                State::Meta { flag, remaining } => {
                    let n = remaining.min(data.len() as u64) as usize;
                    self.meta.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if remaining == n as u64 {
                        self.meta_done(flag)?;
                    }
                    self.after(remaining - n as u64, |r| State::Meta { flag, remaining: r });
                }
                State::Skip { remaining } => {
                    let n = remaining.min(data.len() as u64) as usize;
                    data = &data[n..];
                    self.offset += n as u64;
                    self.after(remaining - n as u64, |r| State::Skip { remaining: r });
                }
                State::Pad { remaining } => {
                    let n = remaining.min(data.len() as u64) as usize;
                    data = &data[n..];
                    self.offset += n as u64;
                    self.state = if remaining == n as u64 { State::Header } else { State::Pad { remaining: remaining - n as u64 } };
                }
            }
        }
        Ok(())
    }

    /// After consuming an entry's data: stay, or go on to its padding.
    fn after(&mut self, remaining: u64, stay: impl Fn(u64) -> State) {
        if remaining > 0 {
            self.state = stay(remaining);
            return;
        }
        self.state = if self.pad > 0 { State::Pad { remaining: self.pad } } else { State::Header };
    }

    /// Enter an entry's data (or its padding, or the next header).
    fn data(&mut self, size: u64, state: State) {
        self.pad = (512 - size % 512) % 512;
        self.state = if size > 0 { state } else { State::Header };
    }

    fn header(&mut self) -> Result<()> {
        let h = self.hdr;
        let at = self.offset;
        if h.iter().all(|&b| b == 0) {
            if self.zero {
                self.state = State::End;
            }
            self.zero = true;
            return Ok(());
        }
        if self.zero {
            return Err(corrupt(format!("tar header at byte {at} follows a zero block: corrupt, or two archives run together")));
        }
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
        let field = |r: std::ops::Range<usize>, what: &str| number(&h[r]).ok_or_else(|| corrupt(format!("tar header at byte {at}: invalid {what} field")));
        let mut flag = h[156];
        let raw_size = field(124..136, "size")?;
        let ustar = &h[257..263] == b"ustar\0";
        let mut name = cstr(&h[0..100]).to_vec();
        if ustar && h[345] != 0 {
            let mut p = cstr(&h[345..500]).to_vec();
            p.push(b'/');
            p.extend_from_slice(&name);
            name = p;
        }
        if raw_size < 0 || raw_size as u64 > SIZE_LIMIT {
            return Err(corrupt(format!("entry {} claims an absurd size ({raw_size} bytes)", show(&name))));
        }
        if matches!(flag, b'x' | b'g' | b'L' | b'K') {
            if raw_size as u64 > META_LIMIT {
                return Err(corrupt(format!("tar metadata record of {raw_size} bytes at byte {at} is too large")));
            }
            self.meta.clear();
            if flag == b'g' {
                // global records: ignored, as containerd and Docker ignore them
                self.data(raw_size as u64, State::Skip { remaining: raw_size as u64 });
            } else if raw_size == 0 {
                self.meta_done(flag)?;
            } else {
                self.data(raw_size as u64, State::Meta { flag, remaining: raw_size as u64 });
            }
            return Ok(());
        }
        // this entry's PAX records, minus empty values (which leave the header's own fields)
        let mut pax = self.pax_local.take().unwrap_or_default();
        pax.retain(|k, v| !v.is_empty() || k.starts_with(b"SCHILY.xattr."));
        let mut link = cstr(&h[157..257]).to_vec();
        // Go's archive/tar order: PAX path/linkpath, then GNU long names over them
        if let Some(p) = pax.remove(b"path".as_slice()) {
            name = p;
        }
        if let Some(l) = pax.remove(b"linkpath".as_slice()) {
            link = l;
        }
        if let Some(n) = self.long_name.take() {
            name = n;
        }
        if let Some(l) = self.long_link.take() {
            link = l;
        }
        if flag == 0 && name.last() == Some(&b'/') {
            flag = b'5'; // old tars mark directories by a trailing slash
        }
        let mut size = raw_size as u64;
        if let Some(v) = pax.get(b"size".as_slice()) {
            size = std::str::from_utf8(v)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|&s| s <= SIZE_LIMIT)
                .ok_or_else(|| corrupt(format!("entry {}: invalid PAX size", show(&name))))?;
        }
        // entries of these types hold no data, whatever their size field says (as Go reads them)
        if matches!(flag, b'1'..=b'6') {
            size = 0;
        }
        let mode = field(100..108, "mode")?;
        let uid = field(108..116, "uid")?;
        let gid = field(116..124, "gid")?;
        let mtime = field(136..148, "mtime")?;
        let (devmajor, devminor) =
            if ustar || &h[257..263] == b"ustar " { (field(329..337, "devmajor").unwrap_or(0), field(337..345, "devminor").unwrap_or(0)) } else { (0, 0) };
        let kv: Vec<(&[u8], &[u8])> = pax.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        let header = Header {
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
        };
        match &self.canon {
            // what the converter takes: canonical entries (format::canonical)
            Some(o) => encode_entry(&mut self.headers, canonical(&header, o)?.as_ref()),
            // the raw headers (the tar reader's own tests)
            None => encode_header(&mut self.headers, &header),
        }
        let entry = self.next_entry;
        self.next_entry = self.next_entry.checked_add(1).ok_or_else(|| corrupt("too many tar entries".into()))?;
        self.cur_name = name;
        self.cur_size = size;
        if matches!(flag, b'0' | 0 | b'7') {
            if size > 0 {
                self.segs.push(Seg { entry, start: self.buf.len as u32, len: 0, eof: false });
            }
            self.data(size, State::File { remaining: size });
        } else {
            self.data(size, State::Skip { remaining: size });
        }
        if self.headers.len() >= HEADERS_LIMIT {
            self.close_batch()?;
        }
        Ok(())
    }

    fn meta_done(&mut self, flag: u8) -> Result<()> {
        let data = std::mem::take(&mut self.meta);
        match flag {
            b'x' => self.pax_local = Some(parse_pax(&data)?),
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
            self.segs.last_mut().expect("a file's data has its segment").len += n as u32;
            data = &data[n..];
        }
        if ends {
            self.segs.last_mut().expect("a file's data has its segment").eof = true;
        }
        Ok(())
    }

    /// Cut the batch's segments, hash the chunks in the background, hand over the batches that are
    /// ready, and start the next batch with an unfinished file's last chunk.
    fn close_batch(&mut self) -> Result<()> {
        if self.broken {
            return Err(Error::new(Code::Io, "the layer scan failed earlier"));
        }
        let segs = std::mem::take(&mut self.segs);
        let params = self.params;
        let pool = scan_pool(self.threads)?;
        let data = self.buf.bytes();
        let slices: Vec<(&[u8], bool)> = segs.iter().map(|s| (&data[s.start as usize..(s.start + s.len) as usize], s.eof)).collect();
        let cuts: Vec<Vec<u32>> = pool.install(|| slices.par_iter().map(|&(s, eof)| cut(s, params, eof)).collect());
        drop(slices);
        // the unfinished file's last chunk (shorter than the largest chunk) starts the next batch
        let tail = segs.last().filter(|s| !s.eof).map(|last| {
            let done: u32 = cuts.last().unwrap().iter().sum();
            (last.entry, data[(last.start + done) as usize..(last.start + last.len) as usize].to_vec())
        });
        let mut ranges = Vec::new();
        for (s, c) in segs.iter().zip(&cuts) {
            let mut p = s.start as usize;
            for &l in c {
                ranges.push((p, l as usize));
                p += l as usize;
            }
        }
        let fill = std::mem::replace(&mut self.buf, Fill { index: u32::MAX, ptr: std::ptr::null_mut(), len: 0 });
        self.broken = true; // until the next buffer is in place
        let (tx, rx) = mpsc::sync_channel(1);
        let keep = self.pool.clone();
        let (buffer, len) = (fill.index, fill.len);
        pool.spawn(move || {
            let data = fill.bytes();
            let digests: Vec<[u8; 32]> = ranges.par_iter().map(|&(o, l)| sha256(&data[o..o + l])).collect();
            let _ = tx.send(digests.concat());
            drop(keep);
        });
        let entries = self.next_entry - self.first_entry;
        self.pending.push_back(Pending {
            buffer,
            len,
            headers: std::mem::take(&mut self.headers),
            first_entry: self.first_entry,
            entries,
            counts: cuts.iter().map(|c| c.len() as u32).collect(),
            lengths: cuts.into_iter().flatten().collect(),
            segs,
            rx,
        });
        self.first_entry = self.next_entry;
        let ready = self.ready(false)?;
        self.deliver(ready)?;
        // the next buffer: a free one, else hand over the batches still hashing so that their
        // buffers come back, else wait for the caller to release one
        self.buf = loop {
            if let Some((index, ptr)) = self.pool.try_take(self.cap)? {
                break Fill { index, ptr, len: 0 };
            }
            if let Some(p) = self.pending.pop_front() {
                let digests = p.rx.recv().map_err(|_| Error::new(Code::Io, "chunk hashing stopped"))?;
                let b = self.hand_over(p, digests);
                self.deliver(vec![b])?;
                continue;
            }
            if self.sink.is_none() {
                return Err(Error::invalid("every batch buffer is held: release some before pushing more"));
            }
            break Fill::new(&self.pool, self.cap)?;
        };
        self.broken = false;
        if let Some((entry, t)) = tail {
            self.buf.extend(&t);
            self.segs.push(Seg { entry, start: 0, len: t.len() as u32, eof: false });
        }
        Ok(())
    }

    fn hand_over(&mut self, p: Pending, digests: Vec<u8>) -> Batch {
        self.pool.hand_out(p.buffer);
        Batch {
            buffer: p.buffer,
            len: p.len,
            headers: p.headers,
            first_entry: p.first_entry,
            entries: p.entries,
            segs: p.segs,
            counts: p.counts,
            lengths: p.lengths,
            digests,
        }
    }

    fn deliver(&mut self, batches: Vec<Batch>) -> Result<()> {
        if batches.is_empty() {
            return Ok(());
        }
        match &mut self.sink {
            Some(s) => s(batches),
            None => {
                self.out.extend(batches);
                Ok(())
            }
        }
    }

    /// Batches whose digests are ready, in order; with `all`, wait for every one.
    fn ready(&mut self, all: bool) -> Result<Vec<Batch>> {
        let mut out = Vec::new();
        while let Some(p) = self.pending.front() {
            let must = all || self.pending.len() > MAX_PENDING;
            let digests = if must {
                p.rx.recv().map_err(|_| Error::new(Code::Io, "chunk hashing stopped"))?
            } else {
                match p.rx.try_recv() {
                    Ok(r) => r,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(_) => return Err(Error::new(Code::Io, "chunk hashing stopped")),
                }
            };
            let p = self.pending.pop_front().unwrap();
            out.push(self.hand_over(p, digests));
        }
        Ok(out)
    }

    fn end(&mut self) -> Result<Vec<Batch>> {
        if self.broken {
            return Err(Error::new(Code::Io, "the layer scan failed earlier"));
        }
        let dangling = self.pax_local.is_some() || self.long_name.is_some() || self.long_link.is_some();
        match self.state {
            State::Header | State::End if self.hfill == 0 && !dangling => {}
            State::Header | State::End if self.hfill == 0 => return Err(corrupt("tar stream ends after a PAX or long-name record, before its entry".into())),
            State::Header | State::End => {
                return Err(corrupt(format!("tar stream ends inside a header (truncated at byte {})", self.offset + self.hfill as u64)))
            }
            State::File { remaining } | State::Skip { remaining } => {
                return Err(corrupt(format!("entry {} is truncated ({} of {} bytes)", show(&self.cur_name), self.cur_size - remaining, self.cur_size)))
            }
            State::Meta { .. } => return Err(corrupt("tar stream truncated inside a metadata record".into())),
            // the padding after the last entry may be cut short by tar writers; its bytes carry nothing
            State::Pad { .. } => {}
        }
        if !self.segs.is_empty() || !self.headers.is_empty() {
            self.close_batch()?;
        }
        let rest = self.ready(true)?;
        let mut out = std::mem::take(&mut self.out);
        out.extend(rest);
        Ok(out)
    }
}

impl Drop for Parser {
    fn drop(&mut self) {
        if self.buf.index != u32::MAX {
            self.pool.put_back(self.buf.index);
        }
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
    Sniff(Box<Parser>, Vec<u8>),
    None(Box<Parser>),
    Gzip(Box<flate2::write::MultiGzDecoder<Parser>>),
    Zstd {
        parser: Box<Parser>,
        ctx: Box<zstd::stream::raw::Decoder<'static>>,
        out: Vec<u8>,
        in_frame: bool,
    },
    /// Between decoders (only while one is being chosen).
    Gone,
}

/// A layer being scanned: push its (compressed) bytes, take finished batches.
pub struct LayerScan {
    dec: Decoder,
    ended: bool,
}

#[allow(clippy::large_enum_variant)]
enum Msg {
    Batches(Vec<Batch>),
    Failed(Error),
    /// The input is all read: the file's digest (file mode) and the end of the scan.
    End(Option<FileDigest>, Result<Vec<Batch>>),
}

/// What a file-backed scan read: the blob's digest ("sha256:<hex>") and size.
pub struct FileDigest {
    pub digest: String,
    pub size: u64,
}

fn zstd_ctx() -> Result<Box<zstd::stream::raw::Decoder<'static>>> {
    Ok(Box::new(zstd::stream::raw::Decoder::new().map_err(|e| Error::io("zstd init", &e))?))
}

/// The decoder for `c` (`ctx`: made beforehand for zstd, so that this cannot fail).
fn decoder(c: Compression, parser: Box<Parser>, ctx: Option<Box<zstd::stream::raw::Decoder<'static>>>) -> Decoder {
    match (c, ctx) {
        (Compression::Zstd, Some(ctx)) => Decoder::Zstd { parser, ctx, out: vec![0; 256 << 10], in_frame: false },
        (Compression::Gzip, _) => Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(*parser))),
        (Compression::Sniff, _) => Decoder::Sniff(parser, Vec::new()),
        _ => Decoder::None(parser),
    }
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

/// What a scan thread and its caller share: pieces in, messages out. Memory stays bounded by the
/// batch pool (every batch holds a pool buffer), so messages queue freely; pieces queue two deep.
struct Link {
    st: Mutex<LinkState>,
    moved: Condvar,
}

struct LinkState {
    pieces: VecDeque<Option<Vec<u8>>>,
    msgs: VecDeque<Msg>,
    /// The caller is gone.
    closed: bool,
}

const PIECES_AHEAD: usize = 2;

impl Link {
    fn send(&self, m: Msg) -> Result<()> {
        let mut st = self.st.lock().unwrap();
        if st.closed {
            return Err(Error::new(Code::Io, "the layer scan was stopped"));
        }
        st.msgs.push_back(m);
        self.moved.notify_all();
        Ok(())
    }
    fn piece(&self) -> Result<Option<Vec<u8>>> {
        let mut st = self.st.lock().unwrap();
        loop {
            if st.closed {
                return Err(Error::new(Code::Io, "the layer scan was stopped"));
            }
            if let Some(p) = st.pieces.pop_front() {
                self.moved.notify_all();
                return Ok(p);
            }
            st = self.moved.wait(st).unwrap();
        }
    }
}

/// A scan running on a thread of its own (see [`LayerScan::spawn_file`] and
/// [`LayerScan::spawn_stream`]). Dropping it stops the thread.
pub struct Threaded {
    link: Arc<Link>,
    stream: bool,
    pool: Arc<BufferPool>,
    eof: bool,
    digest: Option<FileDigest>,
    last: Option<Result<Vec<Batch>>>,
}

impl Drop for Threaded {
    fn drop(&mut self) {
        self.link.st.lock().unwrap().closed = true;
        self.link.moved.notify_all();
        self.pool.close();
    }
}

impl Threaded {
    /// Take the queued messages: batches into `out`; false if there were none.
    fn drain(&mut self, st: &mut LinkState, out: &mut Vec<Batch>) -> Result<bool> {
        let any = !st.msgs.is_empty();
        while let Some(m) = st.msgs.pop_front() {
            match m {
                Msg::Batches(b) => out.extend(b),
                Msg::Failed(e) => return Err(e),
                Msg::End(d, r) => {
                    self.eof = true;
                    self.digest = d;
                    self.last = Some(r);
                }
            }
        }
        Ok(any)
    }

    /// The next finished batches, waiting for at least one message; `true` once the input is all
    /// read: then [`Threaded::digest`] tells what a file hashed to and [`Threaded::finish`] ends the scan.
    pub fn next_batches(&mut self) -> Result<(Vec<Batch>, bool)> {
        let mut out = Vec::new();
        let link = self.link.clone();
        let mut st = link.st.lock().unwrap();
        while !self.eof && !self.drain(&mut st, &mut out)? {
            st = link.moved.wait(st).unwrap();
        }
        Ok((out, self.eof))
    }

    /// Stream mode: hand over the next piece (None: the end of the input). Returns the batches
    /// finished meanwhile and whether the piece was taken; when it was not (the scan waits for
    /// the batches returned to be released), offer it again.
    pub fn offer(&mut self, piece: Option<Vec<u8>>) -> Result<(Vec<Batch>, bool)> {
        if !self.stream {
            return Err(Error::invalid("this scan reads a file"));
        }
        let mut out = Vec::new();
        let mut piece = Some(piece);
        let link = self.link.clone();
        let mut st = link.st.lock().unwrap();
        loop {
            if st.pieces.len() < PIECES_AHEAD {
                if let Some(p) = piece.take() {
                    st.pieces.push_back(p);
                    link.moved.notify_all();
                }
            }
            self.drain(&mut st, &mut out)?;
            if piece.is_none() || !out.is_empty() || self.eof {
                return Ok((out, piece.is_none()));
            }
            st = link.moved.wait(st).unwrap();
        }
    }

    pub fn digest(&self) -> Option<&FileDigest> {
        self.digest.as_ref()
    }

    /// The last batches, or why the layer's stream is incomplete.
    pub fn finish(&mut self) -> Result<Vec<Batch>> {
        match self.last.take() {
            Some(r) => r,
            None if self.eof => Ok(Vec::new()),
            None => Err(Error::invalid("finish before the input was read")),
        }
    }
}

impl LayerScan {
    /// `pool`: batch buffers of at least [`batch_size`] bytes; the scan waits for a free one.
    /// `canon`: hand over canonical entries ([`crate::format::canonical`]) instead of raw headers.
    pub fn new(
        compression: Compression,
        params: ChunkerParams,
        batch_bytes: usize,
        threads: usize,
        pool: Arc<BufferPool>,
        canon: Option<CanonOptions>,
    ) -> Result<LayerScan> {
        params.validate()?;
        let ctx = if compression == Compression::Zstd { Some(zstd_ctx()?) } else { None };
        let parser = Box::new(Parser::new(params, batch_bytes, threads, pool, canon)?);
        Ok(LayerScan { dec: decoder(compression, parser, ctx), ended: false })
    }

    fn spawn(mut self, stream: bool, run: impl FnOnce(&mut LayerScan, &Link) -> Result<Option<FileDigest>> + Send + 'static) -> Result<Threaded> {
        let link = Arc::new(Link { st: Mutex::new(LinkState { pieces: VecDeque::new(), msgs: VecDeque::new(), closed: false }), moved: Condvar::new() });
        let pool = self.parser().pool.clone();
        let sink = link.clone();
        self.parser().sink = Some(Box::new(move |b| sink.send(Msg::Batches(b))));
        let mine = link.clone();
        std::thread::Builder::new()
            .name("ocichunk-scan".into())
            .spawn(move || {
                let msg = match run(&mut self, &mine) {
                    Ok(d) => Msg::End(d, self.finish()),
                    Err(e) => Msg::Failed(e),
                };
                let _ = mine.send(msg);
            })
            .map_err(|e| Error::io("scan thread", &e))?;
        Ok(Threaded { link, stream, pool, eof: false, digest: None, last: None })
    }

    /// Scan a file on a thread of its own, which parses it a few batches ahead of the caller; a
    /// second thread reads the file and hashes it (SHA-256) a few pieces ahead of the scan, so that
    /// neither the reads nor the blob's digest take the scan's time (its inflate and parse are the
    /// serial part of a conversion).
    pub fn spawn_file(self, path: &std::path::Path) -> Result<Threaded> {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(format_args!("open {}", path.display()), &e))?;
        self.spawn(false, move |scan, _| {
            const PIECE: usize = (1 << 20) - (64 << 10);
            // pieces read, and pieces the scan is done with (to be read into again)
            let (full, pieces) = mpsc::sync_channel::<Vec<u8>>(2);
            let (empty, spare) = mpsc::channel::<Vec<u8>>();
            let reader = std::thread::Builder::new()
                .name("ocichunk-read".into())
                .spawn(move || -> Result<FileDigest> {
                    use sha2::Digest;
                    use std::io::Read;
                    let mut hash = sha2::Sha256::new();
                    let mut size = 0u64;
                    loop {
                        let mut piece = spare.try_recv().unwrap_or_default();
                        piece.resize(PIECE, 0);
                        let n = loop {
                            match f.read(&mut piece) {
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                                r => break r.map_err(|e| Error::io("read", &e))?,
                            }
                        };
                        if n == 0 {
                            break;
                        }
                        piece.truncate(n);
                        hash.update(&piece);
                        size += n as u64;
                        if full.send(piece).is_err() {
                            return Err(Error::new(Code::Io, "the layer scan was stopped"));
                        }
                    }
                    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
                    Ok(FileDigest { digest: format!("sha256:{hex}"), size })
                })
                .map_err(|e| Error::io("read thread", &e))?;
            // a failed scan drops `pieces`: the reader stops at its next piece
            for piece in pieces {
                scan.push(&piece)?;
                let _ = empty.send(piece);
            }
            let digest = reader.join().map_err(|_| Error::new(Code::Io, "the read thread panicked"))??;
            Ok(Some(digest))
        })
    }

    /// Scan pieces the caller offers ([`Threaded::offer`]) on a thread of its own.
    pub fn spawn_stream(self) -> Result<Threaded> {
        self.spawn(true, move |scan, link| {
            while let Some(p) = link.piece()? {
                scan.push(&p)?;
            }
            Ok(None)
        })
    }

    fn parser(&mut self) -> &mut Parser {
        match &mut self.dec {
            Decoder::Sniff(p, _) => p,
            Decoder::None(p) => p,
            Decoder::Gzip(g) => g.get_mut(),
            Decoder::Zstd { parser, .. } => parser,
            Decoder::Gone => unreachable!("a decoder is always chosen"),
        }
    }

    /// Feed the next bytes of the layer blob; returns the batches finished so far (none when a
    /// thread's sink takes them).
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Batch>> {
        if self.ended {
            return Err(Error::invalid("push after finish"));
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
        Ok(std::mem::take(&mut self.parser().out))
    }

    /// Replace the sniffing state by the decoder for `c`; returns the bytes held while sniffing.
    fn decide(&mut self, c: Compression) -> Result<Vec<u8>> {
        let ctx = if c == Compression::Zstd { Some(zstd_ctx()?) } else { None };
        let Decoder::Sniff(parser, head) = std::mem::replace(&mut self.dec, Decoder::Gone) else { unreachable!() };
        self.dec = decoder(c, parser, ctx);
        Ok(head)
    }

    fn feed(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.dec {
            Decoder::Sniff(..) | Decoder::Gone => unreachable!("decided before feeding"),
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
            Decoder::Gzip(g) => {
                if let Err(e) = g.try_finish() {
                    return Err(g.get_mut().err.take().unwrap_or_else(|| corrupt(format!("gzip stream truncated or corrupt: {e}"))));
                }
            }
            Decoder::Zstd { in_frame: true, .. } => return Err(corrupt("zstd stream truncated (unexpected end of a frame)".into())),
            _ => {}
        }
        self.parser().end()
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

    fn absorb(b: &Batch, pool: &BufferPool, d: &mut Decoded) {
        assert_eq!(b.first_entry as usize, d.names.len());
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
                let bytes = &pool.bytes(b)[p..p + l];
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

    /// The scan as the binding runs it: a thread fed with pieces, batches released as they come.
    fn run_threads(t: &[u8], compression: Compression, piece: usize, batch: usize, threads: usize) -> Result<Decoded> {
        let pool = BufferPool::new(3, batch_size(DEFAULT_CDC, batch)).unwrap();
        let mut th = LayerScan::new(compression, DEFAULT_CDC, batch, threads, pool.clone(), None)?.spawn_stream()?;
        let mut d = Decoded { names: vec![], links: vec![], pax_path: vec![], files: vec![], chunks: vec![] };
        let take = |bs: Vec<Batch>, d: &mut Decoded| {
            for b in bs {
                absorb(&b, &pool, d);
                pool.release(b.buffer).unwrap();
                assert!(pool.release(b.buffer).is_err(), "a buffer is released once");
            }
        };
        // tiny pieces (a byte or two) cut only the first 64 bytes: what they test happens there, and
        // a thread hand-off per byte of a whole layer would take minutes
        let (head, rest) = if piece < 16 { t.split_at(t.len().min(64)) } else { (t, &t[t.len()..]) };
        let pieces: Vec<Option<Vec<u8>>> = head.chunks(piece).chain(rest.chunks(1 << 20)).map(|p| Some(p.to_vec())).chain([None]).collect();
        for p in pieces {
            loop {
                let (bs, taken) = th.offer(p.clone())?;
                take(bs, &mut d);
                if taken {
                    break;
                }
            }
        }
        loop {
            let (bs, eof) = th.next_batches()?;
            take(bs, &mut d);
            if eof {
                break;
            }
        }
        take(th.finish()?, &mut d);
        Ok(d)
    }

    #[test]
    fn parses_and_chunks_independent_of_piece_and_batch_sizes() {
        let (t, files) = sample();
        let a = run(&t, Compression::None, 1 << 20, 1 << 20).unwrap();
        // the PAX path is the entry's name (and no longer among its records)
        assert_eq!(a.names, ["dir/", "dir/f0", "dir/f1", "dir/f2", "dir/f3", "dir/f4", "dir/a-much-longer-name", "l"]);
        assert_eq!(a.pax_path[6], None);
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
        assert_eq!(e.code(), Code::Corrupt, "{e}");
        let e = run(&z[..z.len() - 20], Compression::Zstd, 4096, 1 << 20).err().unwrap();
        assert!(e.to_string().contains("truncated"), "{e}");
        let mut bad = two.clone();
        for i in (40..bad.len() - 40).step_by(97) {
            bad[i] ^= 0x5a;
        }
        let e = run(&bad, Compression::Gzip, 4096, 1 << 20).err().unwrap();
        assert_eq!(e.code(), Code::Corrupt, "{e}");
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
        let pool = BufferPool::new(2, batch_size(DEFAULT_CDC, 1 << 20)).unwrap();
        let s = LayerScan::new(Compression::Sniff, DEFAULT_CDC, 1 << 20, 2, pool.clone(), None).unwrap();
        let mut s = s.spawn_file(&f).unwrap();
        let mut n = 0;
        loop {
            let (b, eof) = s.next_batches().unwrap();
            for x in &b {
                n += x.counts.iter().sum::<u32>() as usize;
                pool.release(x.buffer).unwrap();
            }
            if eof {
                break;
            }
        }
        for x in s.finish().unwrap() {
            n += x.counts.iter().sum::<u32>() as usize;
            pool.release(x.buffer).unwrap();
        }
        assert_eq!(n, a.chunks.len());
        let d = s.digest().unwrap();
        let hex: String = sha256(&z).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!((d.digest.clone(), d.size), (format!("sha256:{hex}"), z.len() as u64));
        let s = LayerScan::new(Compression::Sniff, DEFAULT_CDC, 1 << 20, 2, pool, None).unwrap();
        let e = s.spawn_file(&dir.path().join("missing")).err().unwrap();
        assert_eq!((e.code(), e.io_cause().map(|c| c.errno)), (Code::NotFound, Some(Some(libc::ENOENT))), "{e}");
        assert!(e.message().starts_with("open ") && e.message().ends_with("missing: No such file or directory (os error 2)"), "{e}");
    }

    fn blocks(n: usize) -> Vec<u8> {
        vec![0u8; 512 * n]
    }

    #[test]
    fn memory_stays_bounded_whatever_the_input_inflates_to() {
        // 64 MiB of zeros in a few KiB of zstd, pushed at once: 3 batch buffers suffice
        let mut t = Vec::new();
        entry(&mut t, "zeros", b'0', &vec![0u8; 64 << 20]);
        t.extend(blocks(2));
        let z = zstd::bulk::compress(&t, 19).unwrap();
        assert!(z.len() < 64 << 10);
        let d = run(&z, Compression::Zstd, z.len(), 1 << 20).unwrap();
        assert_eq!(d.files[0].1.len(), 64 << 20);
        // 50,000 entries without data: batches close on their headers' size
        let mut t = Vec::new();
        for i in 0..50_000 {
            entry(&mut t, &format!("d/{i:06}"), b'0', b"");
        }
        t.extend(blocks(2));
        let pool = BufferPool::new(3, batch_size(DEFAULT_CDC, 1 << 20)).unwrap();
        let mut th = LayerScan::new(Compression::None, DEFAULT_CDC, 1 << 20, 2, pool.clone(), None).unwrap().spawn_stream().unwrap();
        let mut sizes = Vec::new();
        for p in [Some(t), None] {
            loop {
                let (bs, ok) = th.offer(p.clone()).unwrap();
                for b in bs {
                    sizes.push(b.headers.len());
                    pool.release(b.buffer).unwrap();
                }
                if ok {
                    break;
                }
            }
        }
        loop {
            let (bs, eof) = th.next_batches().unwrap();
            sizes.extend(bs.iter().map(|b| b.headers.len()));
            bs.iter().for_each(|b| pool.release(b.buffer).unwrap());
            if eof {
                break;
            }
        }
        sizes.extend(th.finish().unwrap().iter().map(|b| b.headers.len()));
        assert!(sizes.len() > 1 && sizes.iter().all(|&s| s <= HEADERS_LIMIT + 4096), "{sizes:?}");
        // a buffer that was not handed out cannot be released
        let pool = BufferPool::new(2, 1 << 16).unwrap();
        assert!(pool.release(0).is_err() && pool.release(7).is_err());
    }

    #[test]
    fn reads_tar_as_go_does() {
        // a symlink whose size field claims data: none follows, the next block is a header
        let mut t = header("l", b'2', 1024, false);
        entry(&mut t, "hidden", b'0', b"x");
        entry(&mut t, "visible", b'0', b"y");
        t.extend(blocks(2));
        // after the two zero blocks that end the archive, nothing counts
        entry(&mut t, "after-end", b'0', b"z");
        let d = run(&t, Compression::None, 4096, 1 << 20).unwrap();
        assert_eq!(d.names, ["l", "hidden", "visible"]);
        // one zero block, then a header: corrupt
        let mut t = Vec::new();
        entry(&mut t, "a", b'0', b"1");
        t.extend(blocks(1));
        entry(&mut t, "b", b'0', b"2");
        assert!(run(&t, Compression::None, 4096, 1 << 20).err().unwrap().to_string().contains("zero block"));
        // global PAX records are ignored; a GNU long name wins over a PAX path; '\0' + '/' is a directory
        let mut t = Vec::new();
        entry(&mut t, "g", b'g', b"12 size=512\n");
        entry(&mut t, "a", b'0', b"");
        entry(&mut t, "x", b'x', b"15 path=pax-nm\n");
        entry(&mut t, "././@LongLink", b'L', b"gnu-name\0");
        entry(&mut t, "short", b'0', b"abc");
        entry(&mut t, "olddir/", 0, b"");
        t.extend(blocks(2));
        let d = run(&t, Compression::None, 4096, 1 << 20).unwrap();
        assert_eq!(d.names, ["a", "gnu-name", "olddir/"]);
        assert_eq!(d.files, [(1, b"abc".to_vec())]);
        // truncated data of an entry that is not kept is still truncation
        let mut t = header("dev", b'V', 4096, false);
        t.extend(vec![1u8; 1000]);
        assert!(run(&t, Compression::None, 4096, 1 << 20).err().unwrap().to_string().contains("truncated"));
        // a PAX record with no entry after it
        let mut t = Vec::new();
        entry(&mut t, "x", b'x', b"15 path=pax-nm\n");
        assert!(run(&t, Compression::None, 4096, 1 << 20).err().unwrap().to_string().contains("before its entry"));
        // PAX lengths must be plain digits and records end in a newline
        for bad in [&b"+15 path=pax-nm\n"[..], b"15 path=pax-nmX"] {
            let mut t = Vec::new();
            entry(&mut t, "x", b'x', bad);
            entry(&mut t, "a", b'0', b"");
            assert!(run(&t, Compression::None, 4096, 1 << 20).err().unwrap().to_string().contains("PAX"));
        }
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

    /// Seeds for the fuzz run: every header kind the scan knows (ustar, GNU long names and links,
    /// base-256 numbers, PAX with xattrs, paths and sizes, hardlinks, devices, fifos), raw and
    /// wrapped in gzip and zstd.
    fn fuzz_seeds() -> Vec<Vec<u8>> {
        let mut t = Vec::new();
        entry(&mut t, "dir/", b'5', b"");
        for (i, n) in [100_000, 5, 0, 70_000].into_iter().enumerate() {
            entry(&mut t, &format!("dir/f{i}"), b'0', &content(n, i as u64));
        }
        entry(&mut t, "PaxHeaders/x", b'x', b"31 path=dir/a-much-longer-name\n19 linkpath=dir/f1\n");
        entry(&mut t, "short", b'2', b"");
        entry(&mut t, "././@LongLink", b'K', b"target/of/a/link\0");
        entry(&mut t, "l", b'2', b"");
        t.extend(vec![0u8; 1024]);
        let mut u = Vec::new();
        let pax = b"26 SCHILY.xattr.user.k=\x00\xff\n16 path=p/\xc3\xa9t\xc3\xa9\n11 size=30\n15 mtime=-1.25\n";
        entry(&mut u, "PaxHeaders/e", b'x', pax);
        entry(&mut u, "e", b'0', &content(30, 9));
        entry(&mut u, "././@LongLink", b'K', b"p/\xc3\xa9t\xc3\xa9\0");
        entry(&mut u, "h", b'1', b"");
        entry(&mut u, "c", b'3', b"");
        entry(&mut u, "f", b'6', b"");
        entry(&mut u, "././@LongLink", b'L', &[b'n'; 300]);
        entry(&mut u, "x", b'0', &content(5000, 4));
        u.extend(vec![0u8; 1024]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&u).unwrap();
        let g = gz.finish().unwrap();
        let z = zstd::bulk::compress(&t, 1).unwrap();
        vec![t, u, g, z]
    }

    /// One scan of `t` in pieces of `piece` bytes, canonical entries, batches released as they come.
    fn fuzz_one(t: &[u8], piece: usize, keep_mtime: bool) -> Result<()> {
        let pool = BufferPool::new(4, batch_size(DEFAULT_CDC, 1 << 16)).unwrap();
        let canon = CanonOptions { source_date_epoch: 0, keep_mtime };
        let mut scan = LayerScan::new(Compression::Sniff, DEFAULT_CDC, 1 << 16, 1, pool.clone(), Some(canon))?;
        for p in t.chunks(piece) {
            for b in scan.push(p)? {
                pool.release(b.buffer)?;
            }
        }
        for b in scan.finish()? {
            pool.release(b.buffer)?;
        }
        Ok(())
    }

    /// Mutated tar, PAX, gzip and zstd input: every outcome is batches or an error with a code
    /// (corrupt, unsupported, unsafe), never a panic or a hang, and the scan's buffers stay bounded.
    /// Bounded by OCICHUNK_FUZZ_SECS (default 5).
    #[test]
    fn fuzz_tar_scan() {
        let secs: u64 = std::env::var("OCICHUNK_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
        let seeds = fuzz_seeds();
        let mut rng: u64 = 0x2545f4914f6cdd1d;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n.max(1) as u64) as usize
        };
        let fields: [(usize, usize); 8] = [(0, 100), (100, 8), (108, 8), (124, 12), (136, 12), (156, 1), (157, 100), (329, 16)];
        let junk: [&[u8]; 10] = [b"0", b"7777777", b"\x80\xff\xff\xff\xff\xff\xff\xff", b"-1", b" ", b"\0", b"99999999999", b"x", b"L", b"../../e"];
        let start = std::time::Instant::now();
        let (mut runs, mut failed) = (0u64, 0u64);
        // the seeds themselves scan cleanly
        for t in &seeds {
            if let Err(e) = fuzz_one(t, 4096, false) {
                panic!("seed: {e}");
            }
        }
        while start.elapsed().as_secs() < secs {
            let mut t = seeds[next(seeds.len())].clone();
            for _ in 0..1 + next(3) {
                match next(5) {
                    // a header field of a random block overwritten
                    0 | 1 => {
                        let blocks = t.len() / 512;
                        let b = next(blocks.min(64)) * 512;
                        let (off, len) = fields[next(fields.len())];
                        let j = junk[next(junk.len())];
                        for (k, &c) in j.iter().take(len).enumerate() {
                            if b + off + k < t.len() {
                                t[b + off + k] = c;
                            }
                        }
                    }
                    // a byte flipped anywhere (compressed streams too)
                    2 => {
                        let i = next(t.len());
                        t[i] ^= 1 << next(8);
                    }
                    // cut short
                    3 => t.truncate(next(t.len() + 1)),
                    // a PAX length digit changed
                    _ => {
                        if let Some(i) = t.iter().position(|&c| c == b' ') {
                            if i > 0 && t[i - 1].is_ascii_digit() {
                                t[i - 1] = b'0' + next(10) as u8;
                            }
                        }
                    }
                }
            }
            let piece = 1 + next(16384);
            if let Err(e) = fuzz_one(&t, piece, next(2) == 0) {
                failed += 1;
                assert!(matches!(e.code(), Code::Corrupt | Code::Unsupported | Code::Unsafe), "{:?}: {e}", e.code());
            }
            runs += 1;
        }
        eprintln!("fuzz_tar_scan: {runs} inputs in {secs} s, {failed} refused");
        assert!(runs > 0);
    }
}
