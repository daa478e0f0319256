//! A read-only FUSE filesystem over a chunked image's merged tree (`ocichunk mount`).
//!
//! Metadata (inodes, directories, symlinks, xattrs, sizes) is all in memory: the merged view of
//! the format module (`format::Tree::view`); where a file's bytes are is its `format::FileMap`.
//! File bytes come from the content-addressed chunk cache (`crate::cache`), verified by SHA-256 when read from it (then kept in memory, within a
//! budget); chunks missing from it are asked for through a [`Fetcher`]
//! (the caller fetches them from the registry into the cache) from a worker thread, so metadata
//! and cached reads never wait for the fetcher, and a slow fetch blocks only its own read.

use crate::batch::sha256;
use crate::format::{Checked, FileMap};
use crate::{Error, Result};
use fuser::{FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Node {
    attr: FileAttr,
    link: Option<Vec<u8>>,
    xattrs: Vec<(String, Vec<u8>)>,
    /// regular files: where their bytes are
    file: Option<Arc<FileMap>>,
    children: Vec<(Vec<u8>, u64)>,
    index: HashMap<Vec<u8>, u64>,
    /// read before (regular files): the first read asks for the rest of the file in the background
    touched: AtomicBool,
    /// directories: how many of their files were read
    files_read: AtomicU32,
}

/// Asks for chunks to be put into the cache; `done` must be called once, from any thread.
pub trait Fetcher: Send + Sync {
    fn fetch(&self, chunks: Vec<u32>, done: Box<dyn FnOnce(std::result::Result<(), String>) + Send>);
    /// A hint: these chunks are likely read soon; fetch them into the cache in the background
    /// (after the reads waiting for [`Fetcher::fetch`]). Nobody waits for it; it may be ignored.
    fn prefetch(&self, _chunks: Vec<u32>) {}
}

#[derive(Default)]
pub struct FsStats {
    pub reads: AtomicU64,
    pub bytes_read: AtomicU64,
    pub fetch_requests: AtomicU64,
    pub chunks_requested: AtomicU64,
    pub cache_reads: AtomicU64,
    /// chunks read from the cache and hashed (once per chunk while it stays in the verified set)
    pub chunks_hashed: AtomicU64,
    /// chunks handed over verified by the fetcher ([`Shared::provide`]) and not held already: kept in memory, not hashed here
    pub chunks_provided: AtomicU64,
    pub errors: AtomicU64,
    /// background fetches asked for (a file's first read: the rest of it), and their chunks
    pub prefetch_hints: AtomicU64,
    pub chunks_hinted: AtomicU64,
}

/// Chunks read from the cache and verified, kept in memory up to a byte budget (least recently
/// used out first): a file read 128 KiB at a time reads and hashes each chunk once, not per read.
struct Verified {
    map: HashMap<u32, (Arc<Vec<u8>>, u64)>,
    bytes: usize,
    /// at most this many bytes kept (but always the last chunk, whatever its size)
    budget: usize,
    tick: u64,
}

/// Bytes of verified chunks a mount keeps in memory unless told otherwise ([`Shared::verified_budget`]).
pub const VERIFIED_BYTES: usize = 64 << 20;

impl Verified {
    fn get(&mut self, c: u32) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(&c).map(|e| {
            e.1 = t;
            e.0.clone()
        })
    }

    fn put(&mut self, c: u32, b: Arc<Vec<u8>>) {
        self.tick += 1;
        self.bytes += b.len();
        if let Some((old, _)) = self.map.insert(c, (b, self.tick)) {
            self.bytes -= old.len();
        }
        while self.bytes > self.budget && self.map.len() > 1 {
            let (&oldest, _) = self.map.iter().min_by_key(|(_, e)| e.1).unwrap();
            let (b, _) = self.map.remove(&oldest).unwrap();
            self.bytes -= b.len();
        }
    }
}

pub struct Shared {
    nodes: HashMap<u64, Node>,
    img: Arc<Checked>,
    cache: PathBuf,
    fetcher: Box<dyn Fetcher>,
    verified: Mutex<Verified>,
    /// chunks being read from the cache and verified now: a concurrent read of the same chunk
    /// (the kernel reads ahead in parallel) waits for that one instead of hashing it again
    loading: Mutex<HashMap<u32, Arc<Mutex<()>>>>,
    pub stats: FsStats,
    /// (ino, offset, length) of every read, when recording
    pub trace: Option<Mutex<Vec<(u64, u64, u32)>>>,
    /// files of at most this many bytes are fetched whole (in the background) when first read
    whole_file: u64,
    /// a directory's files are fetched (in the background) when a second one is read, if they add up to at most this
    whole_dir: u64,
    /// the directory of each inode (its first name's)
    parents: HashMap<u64, u64>,
}

pub struct LazyFs {
    shared: Arc<Shared>,
    pool: ReadPool,
}

/// Reads served by a fixed set of worker threads (a read that waits for the network holds up one
/// worker, not the FUSE session; a burst of reads queues instead of starting a thread each).
pub const READ_WORKERS: usize = 16;

type Job = Box<dyn FnOnce() + Send>;

/// A bounded pool of worker threads taking jobs from one queue. Dropping it closes the queue: the
/// workers finish the job in hand and end (nobody waits for them, so an unmount never hangs on a
/// read that waits for a fetch).
pub struct ReadPool {
    tx: Option<mpsc::Sender<Job>>,
}

impl ReadPool {
    pub fn new(workers: usize) -> ReadPool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("ocichunk-read-{i}")).spawn(move || loop {
                // the lock is held only while taking a job
                let job = match rx.lock() {
                    Ok(r) => r.recv(),
                    Err(_) => return,
                };
                match job {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            });
            if spawned.is_err() && i == 0 {
                // no worker at all: jobs run where they are queued (see `run`)
                return ReadPool { tx: None };
            }
        }
        ReadPool { tx: Some(tx) }
    }

    /// Queue a job (run in place if the pool has no workers).
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        match &self.tx {
            Some(tx) => {
                if let Err(mpsc::SendError(job)) = tx.send(Box::new(job)) {
                    job();
                }
            }
            None => job(),
        }
    }
}

const TTL: Duration = Duration::from_secs(3600);
/** Bytes of a file past a read whose missing chunks are fetched along with the read's own. */
const FETCH_AHEAD: u64 = 256 << 10;
/// Files up to this size are fetched whole, in the background, when first read ([`Shared::whole_file`]):
/// programs go on reading (and page faults of mapped binaries and libraries land all over) the
/// files they opened, and a frame's neighbours come along anyway, so the whole file costs few
/// more bytes than the pieces read, and saves a round trip per later miss. Off by default (0): on
/// a cold python start it saved 0.9 s of 3.3 s but fetched 2.0 MiB more (7.6 MiB against 5.6),
/// more than the formats ocichunk is measured against (`ocichunk mount --read-ahead-file 16m`).
pub const WHOLE_FILE_BYTES: u64 = 0;
/// When a second file of a directory is read, the directory's other files are fetched in the
/// background if they add up to at most this ([`Shared::whole_dir`]): a program that reads
/// several files of a directory (modules of a package, say) is likely to read more of them, and
/// one round trip for all of them beats one per file. Off by default, as [`WHOLE_FILE_BYTES`]
/// (`ocichunk mount --read-ahead-dir 8m`).
pub const WHOLE_DIR_BYTES: u64 = 0;

fn kind_of(s: &str) -> Result<FileType> {
    Ok(match s {
        "reg" => FileType::RegularFile,
        "dir" => FileType::Directory,
        "symlink" => FileType::Symlink,
        "char" => FileType::CharDevice,
        "block" => FileType::BlockDevice,
        "fifo" => FileType::NamedPipe,
        other => return Err(Error::invalid(format!("unknown inode kind {other:?}"))),
    })
}

/// An mtime of the TOC (whole seconds since the epoch, before it too) as the mount shows it.
fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

impl Shared {
    /// `img`: a checked TOC; the mount serves its merged view, or (`layers`) each layer as an
    /// overlayfs layer directory (`format::layers`).
    pub fn new(img: Arc<Checked>, cache: PathBuf, fetcher: Box<dyn Fetcher>, record: bool, layers: bool) -> Result<Shared> {
        let view = if layers {
            crate::format::layers::layer_views(&img.toc).map_err(|r| match r.violations.first() {
                Some(v) => Error::new(v.class.error_code(), v.to_string()),
                None => Error::invalid("layer view"),
            })?
        } else {
            img.tree.view(&img.toc)
        };
        let mut nodes = HashMap::with_capacity(view.inodes.len());
        for i in view.inodes {
            let kind = kind_of(i.kind)?;
            let file = match kind {
                FileType::RegularFile => Some(i.node.and_then(|id| img.file_of(id)).ok_or_else(|| Error::invalid(format!("inode {}: no chunk map", i.ino)))?),
                _ => None,
            };
            let t = system_time(i.mtime);
            let attr = FileAttr {
                ino: i.ino,
                size: i.size,
                blocks: i.size.div_ceil(512),
                atime: t,
                mtime: t,
                ctime: t,
                crtime: t,
                kind,
                perm: (i.mode & 0o7777) as u16,
                nlink: i.nlink.max(1),
                uid: i.uid,
                gid: i.gid,
                rdev: i.rdev,
                blksize: 4096,
                flags: 0,
            };
            let children: Vec<(Vec<u8>, u64)> = i.children.into_iter().map(|(n, c)| (n.into_bytes(), c)).collect();
            let index = children.iter().cloned().collect();
            nodes.insert(
                i.ino,
                Node {
                    attr,
                    link: i.link.map(|l| l.into_bytes()),
                    xattrs: i.xattrs,
                    file,
                    children,
                    index,
                    touched: AtomicBool::new(false),
                    files_read: AtomicU32::new(0),
                },
            );
        }
        let mut parents = HashMap::with_capacity(nodes.len());
        for (&ino, n) in &nodes {
            for (_, c) in &n.children {
                parents.entry(*c).or_insert(ino);
            }
        }
        if !nodes.get(&1).map(|n| n.attr.kind == FileType::Directory).unwrap_or(false) {
            return Err(Error::invalid("inode 1 must be the root directory"));
        }
        Ok(Shared {
            nodes,
            img,
            cache,
            fetcher,
            verified: Mutex::new(Verified { map: HashMap::new(), bytes: 0, budget: VERIFIED_BYTES, tick: 0 }),
            loading: Mutex::new(HashMap::new()),
            stats: FsStats::default(),
            trace: if record { Some(Mutex::new(Vec::new())) } else { None },
            whole_file: WHOLE_FILE_BYTES,
            whole_dir: WHOLE_DIR_BYTES,
            parents,
        })
    }

    /// Fetch files of at most `bytes` whole, in the background, when they are first read (default
    /// [`WHOLE_FILE_BYTES`]; 0: only what reads need, and [`FETCH_AHEAD`] past them).
    pub fn whole_file(mut self, bytes: u64) -> Shared {
        self.whole_file = bytes;
        self
    }

    /// Keep at most `bytes` of verified chunks in memory (default [`VERIFIED_BYTES`]; the last one
    /// read is kept whatever its size). Reads through the kernel's page cache seldom come back for a
    /// chunk: the budget only spares hashing a chunk again while reads of its pieces go on.
    pub fn verified_budget(self, bytes: usize) -> Shared {
        self.verified.lock().unwrap().budget = bytes;
        self
    }

    /// Where chunk `c` is cached; None while its digest is not loaded (the fetcher loads it).
    fn chunk_path(&self, c: u32) -> Option<PathBuf> {
        Some(crate::cache::chunk_path(&self.cache, &self.img.toc.digests.hex(c)?))
    }

    /// A chunk verified before, or from the cache if present and intact (a damaged entry is removed).
    fn cached(&self, c: u32) -> Option<Arc<Vec<u8>>> {
        if let Some(b) = self.verified.lock().unwrap().get(c) {
            return Some(b);
        }
        let slot = self.loading.lock().unwrap().entry(c).or_default().clone();
        let r = {
            let _one = slot.lock().unwrap();
            // verified meanwhile by the read this one waited for?
            let kept = self.verified.lock().unwrap().get(c);
            kept.or_else(|| self.load(c))
        };
        // the last one out removes the slot (clones are made under this lock: the count is exact)
        let mut loading = self.loading.lock().unwrap();
        if Arc::strong_count(&slot) == 2 && loading.get(&c).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            loading.remove(&c);
        }
        r
    }

    /// Read a chunk from the cache and verify it (kept in memory if intact, removed if not).
    fn load(&self, c: u32) -> Option<Arc<Vec<u8>>> {
        let p = self.chunk_path(c)?;
        let b = std::fs::read(&p).ok()?;
        self.stats.chunks_hashed.fetch_add(1, Ordering::Relaxed);
        let want = &self.img.toc.chunks[c as usize];
        if b.len() as u64 != want.len || Some(sha256(&b)) != self.img.toc.digests.get(c) {
            let _ = std::fs::remove_file(&p);
            return None;
        }
        self.stats.cache_reads.fetch_add(1, Ordering::Relaxed);
        let b = Arc::new(b);
        self.verified.lock().unwrap().put(c, b.clone());
        Some(b)
    }

    /// Chunk `c`'s bytes, fetched and verified against its digest by the fetcher: kept with the
    /// chunks verified here, so that reads need not wait for its cache file to be written.
    pub fn provide(&self, c: u32, bytes: Vec<u8>) -> Result<()> {
        let Some(want) = self.img.toc.chunks.get(c as usize) else { return Err(Error::invalid(format!("no chunk {c}"))) };
        if bytes.len() as u64 != want.len {
            return Err(Error::invalid(format!("chunk {c}: {} bytes provided, its length is {}", bytes.len(), want.len)));
        }
        let mut verified = self.verified.lock().unwrap();
        // held already (handed over twice: a read asked for it while it was on its way): kept, not counted again
        if verified.get(c).is_none() {
            verified.put(c, Arc::new(bytes));
            self.stats.chunks_provided.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Ask the fetcher for chunks; the answer comes on the receiver.
    fn fetch_start(&self, chunks: Vec<u32>) -> mpsc::Receiver<std::result::Result<(), String>> {
        let (tx, rx) = mpsc::channel();
        self.stats.fetch_requests.fetch_add(1, Ordering::Relaxed);
        self.stats.chunks_requested.fetch_add(chunks.len() as u64, Ordering::Relaxed);
        self.fetcher.fetch(
            chunks,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx
    }

    fn fetch_wait(rx: mpsc::Receiver<std::result::Result<(), String>>) -> std::result::Result<(), String> {
        match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(r) => r,
            Err(_) => Err("no answer from the fetcher in 600 s".into()),
        }
    }

    /// When a second file of a directory is first read, fetch the directory's other files in the
    /// background (if they add up to at most `whole_dir` bytes): after `hint_whole_file`, which
    /// asks for the file being read first.
    pub fn whole_dir(mut self, bytes: u64) -> Shared {
        self.whole_dir = bytes;
        self
    }

    /// Whether chunk `c` is at hand: verified in memory (provided by the fetcher, its cache file
    /// perhaps still being written), or in the cache (false while its digest is not loaded).
    fn at_hand(&self, c: u32) -> bool {
        self.verified.lock().unwrap().map.contains_key(&c) || self.chunk_path(c).is_some_and(|p| p.exists())
    }

    /// A file's first read: the rest of the file (if at most `whole_file` bytes) is asked for in the
    /// background, but for `asked` (fetched for the read itself) and what the cache holds.
    fn hint_whole_file(&self, ino: u64, n: &Node, file: &FileMap, asked: &[u32]) {
        if n.touched.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut seen: std::collections::HashSet<u32> = asked.iter().copied().collect();
        if n.attr.size <= self.whole_file {
            let rest: Vec<u32> = file.chunks.iter().copied().filter(|&c| seen.insert(c) && !self.at_hand(c)).collect();
            self.hint(rest);
        }
        self.hint_dir(ino, &mut seen);
    }

    /// A file of a directory read for the first time: at the second one, the directory's other
    /// files (if they add up to at most `whole_dir` bytes) are asked for in the background.
    fn hint_dir(&self, ino: u64, seen: &mut std::collections::HashSet<u32>) {
        let Some(dir) = self.parents.get(&ino).and_then(|p| self.nodes.get(p)) else { return };
        if self.whole_dir == 0 || dir.files_read.fetch_add(1, Ordering::Relaxed) != 1 {
            return;
        }
        let files: Vec<&Node> =
            dir.children.iter().filter_map(|(_, c)| self.nodes.get(c)).filter(|c| c.file.is_some() && !c.touched.load(Ordering::Relaxed)).collect();
        if files.iter().map(|c| c.attr.size).sum::<u64>() > self.whole_dir {
            return;
        }
        let rest: Vec<u32> =
            files.iter().flat_map(|c| c.file.as_ref().unwrap().chunks.iter().copied()).filter(|&c| seen.insert(c) && !self.at_hand(c)).collect();
        self.hint(rest);
    }

    fn hint(&self, chunks: Vec<u32>) {
        if chunks.is_empty() {
            return;
        }
        self.stats.prefetch_hints.fetch_add(1, Ordering::Relaxed);
        self.stats.chunks_hinted.fetch_add(chunks.len() as u64, Ordering::Relaxed);
        self.fetcher.prefetch(chunks);
    }

    /// Bytes [off, off+size) of a regular file.
    pub fn read(&self, ino: u64, off: u64, size: u32) -> std::result::Result<Vec<u8>, (i32, String)> {
        let n = self.nodes.get(&ino).ok_or((libc::ENOENT, format!("inode {ino}")))?;
        if n.attr.kind != FileType::RegularFile {
            return Err((libc::EISDIR, format!("inode {ino} is not a file")));
        }
        if let Some(t) = &self.trace {
            t.lock().unwrap().push((ino, off, size));
        }
        let end = n.attr.size.min(off.saturating_add(size as u64));
        if off >= end {
            return Ok(Vec::new());
        }
        let Some(file) = &n.file else { return Err((libc::EISDIR, format!("inode {ino} is not a file"))) };
        let pieces: Vec<_> = file.pieces(off, size as u64).collect();
        let mut got: Vec<Option<Arc<Vec<u8>>>> = pieces.iter().map(|p| self.cached(p.chunk)).collect();
        for attempt in 0..3 {
            // handed over meanwhile (a fetch already under way)? then not asked for again
            for (k, p) in pieces.iter().enumerate() {
                if got[k].is_none() {
                    got[k] = self.verified.lock().unwrap().get(p.chunk);
                }
            }
            let missing: Vec<u32> = pieces.iter().zip(&got).filter(|(_, g)| g.is_none()).map(|(p, _)| p.chunk).collect();
            if missing.is_empty() {
                if attempt == 0 {
                    self.hint_whole_file(ino, n, file, &[]);
                }
                break;
            }
            if attempt == 2 {
                return Err((libc::EIO, format!("{} chunks still missing from the cache after fetching", missing.len())));
            }
            // fetch ahead: the file's next chunks not cached yet, up to FETCH_AHEAD bytes past this
            // read, in the same request (files are mostly read on; one round trip instead of many)
            let mut want = missing;
            if attempt == 0 {
                for pos in file.span(end, FETCH_AHEAD) {
                    let c = file.chunks[pos];
                    if pieces.last().is_some_and(|p| p.pos >= pos) {
                        continue; // the read's own last chunk
                    }
                    if !self.at_hand(c) {
                        want.push(c);
                    }
                }
            }
            // the read's own chunks are asked for first, then (first read) the rest of the file
            let asked = (attempt == 0).then(|| want.clone());
            let rx = self.fetch_start(want);
            if let Some(asked) = asked {
                self.hint_whole_file(ino, n, file, &asked);
            }
            Self::fetch_wait(rx).map_err(|m| (libc::EIO, m))?;
            for (k, p) in pieces.iter().enumerate() {
                if got[k].is_none() {
                    got[k] = self.cached(p.chunk);
                }
            }
        }
        let mut out = Vec::with_capacity((end - off) as usize);
        for (k, p) in pieces.iter().enumerate() {
            let b = got[k].as_ref().unwrap();
            out.extend_from_slice(&b[p.from as usize..p.to as usize]);
        }
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_read.fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }
}

impl LazyFs {
    pub fn new(shared: Arc<Shared>) -> LazyFs {
        LazyFs { shared, pool: ReadPool::new(READ_WORKERS) }
    }
}

fn xattr_reply(data: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() <= size as usize {
        reply.data(data);
    } else {
        reply.error(libc::ERANGE);
    }
}

impl Filesystem for LazyFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let s = &self.shared;
        match s.nodes.get(&parent).and_then(|p| p.index.get(name.as_bytes())).and_then(|c| s.nodes.get(c)) {
            Some(n) => reply.entry(&TTL, &n.attr, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.shared.nodes.get(&ino) {
            Some(n) => reply.attr(&TTL, &n.attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.shared.nodes.get(&ino).and_then(|n| n.link.as_ref()) {
            Some(l) => reply.data(l),
            None => reply.error(libc::EINVAL),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            reply.error(libc::EROFS);
        } else if self.shared.nodes.contains_key(&ino) {
            // contents never change: the kernel may keep its page cache across opens
            reply.opened(0, fuser::consts::FOPEN_KEEP_CACHE);
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn read(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, size: u32, _flags: i32, _lock: Option<u64>, reply: ReplyData) {
        let s = self.shared.clone();
        // off the session thread: a read that waits for the network holds up no other request
        self.pool.run(move || match s.read(ino, offset.max(0) as u64, size) {
            Ok(b) => reply.data(&b),
            Err((errno, msg)) => {
                s.stats.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("ocichunk mount: read of inode {ino} failed: {msg}");
                reply.error(errno);
            }
        });
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let s = &self.shared;
        let Some(n) = s.nodes.get(&ino) else { return reply.error(libc::ENOENT) };
        if n.attr.kind != FileType::Directory {
            return reply.error(libc::ENOTDIR);
        }
        // offsets: 1 = ".", 2 = "..", 3.. = children
        let mut k = offset.max(0) as usize;
        loop {
            let full = match k {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(ino, 2, FileType::Directory, ".."),
                _ => match n.children.get(k - 2) {
                    Some((name, c)) => {
                        let kind = s.nodes.get(c).map(|x| x.attr.kind).unwrap_or(FileType::RegularFile);
                        reply.add(*c, (k + 1) as i64, kind, OsStr::from_bytes(name))
                    }
                    None => break,
                },
            };
            if full {
                break;
            }
            k += 1;
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, self.shared.nodes.len() as u64, 0, 4096, 255, 4096);
    }

    fn getxattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(n) = self.shared.nodes.get(&ino) else { return reply.error(libc::ENOENT) };
        match n.xattrs.iter().find(|(k, _)| k.as_bytes() == name.as_bytes()) {
            Some((_, v)) => xattr_reply(v, size, reply),
            None => reply.error(libc::ENODATA),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let Some(n) = self.shared.nodes.get(&ino) else { return reply.error(libc::ENOENT) };
        let mut names = Vec::new();
        for (k, _) in &n.xattrs {
            names.extend_from_slice(k.as_bytes());
            names.push(0);
        }
        xattr_reply(&names, size, reply);
    }
}

/// A mounted filesystem; dropping it unmounts.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    pub shared: Arc<Shared>,
}

impl Mount {
    /// Unmount without blocking: when the mount is busy (a process works in it) it is detached
    /// (`umount -l`): gone from the namespace now, released by the kernel when its last user
    /// leaves. Returns true if it had to be detached.
    pub fn unmount(&mut self) -> bool {
        let Some(session) = self.session.take() else { return false };
        let mut detached = false;
        if let Ok(p) = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes()) {
            let r = unsafe { libc::umount2(p.as_ptr(), 0) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            if r != 0 && errno == Some(libc::EBUSY) {
                detached = true;
                unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
            } else if r != 0 && errno == Some(libc::EPERM) {
                // not root: the setuid helper can unmount (lazily)
                let _ = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg("--").arg(&self.mountpoint).output();
            }
        }
        // the session thread ends when the kernel lets go of the connection
        std::thread::spawn(move || session.join());
        detached
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// What a mount lets the image do beyond being read. Each widens trust in the image, so none is
/// on by default: an untrusted image's setuid-root program would give any local user root, and
/// its device nodes (say a 0666 block device of the host's disk) would open the host's devices.
#[derive(Debug, Clone, Copy, Default)]
pub struct MountFlags {
    /// other users may enter the mount (FUSE `allow_other`)
    pub allow_other: bool,
    /// setuid/setgid bits take effect (else `nosuid`)
    pub allow_suid: bool,
    /// device nodes can be opened (else `nodev`)
    pub allow_dev: bool,
}

impl MountFlags {
    pub fn options(self) -> Vec<MountOption> {
        let mut o = vec![MountOption::RO, MountOption::FSName("ocichunk".into()), MountOption::Subtype("ocichunk".into()), MountOption::DefaultPermissions];
        o.push(if self.allow_suid { MountOption::Suid } else { MountOption::NoSuid });
        o.push(if self.allow_dev { MountOption::Dev } else { MountOption::NoDev });
        if self.allow_other {
            o.push(MountOption::AllowOther);
        }
        o
    }
}

pub fn mount(shared: Arc<Shared>, mountpoint: &std::path::Path, flags: MountFlags) -> Result<Mount> {
    let opts = flags.options();
    let session = fuser::spawn_mount2(LazyFs::new(shared.clone()), mountpoint, &opts)
        .map_err(|e| Error::io(format_args!("mount {} (needs /dev/fuse and fusermount3, from Debian's fuse3)", mountpoint.display()), &e))?;
    Ok(Mount { session: Some(session), mountpoint: mountpoint.to_path_buf(), shared })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoFetch;
    impl Fetcher for NoFetch {
        fn fetch(&self, _: Vec<u32>, done: Box<dyn FnOnce(std::result::Result<(), String>) + Send>) {
            done(Err("not cached".into()));
        }
    }

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A cache holding one 256 KiB chunk, and the view of a TOC with one file `f` made of it.
    fn one_chunk_file() -> (tempfile::TempDir, Vec<u8>, impl Fn() -> Arc<Checked>) {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let h = hex(&sha256(&data));
        std::fs::create_dir_all(dir.path().join("sha256").join(&h[..2])).unwrap();
        std::fs::write(dir.path().join("sha256").join(&h[..2]).join(&h), &data).unwrap();
        let toc = serde_json::json!({
            "version": 1, "chunker": { "kind": "cdc" }, "packs": [format!("sha256:{h}")],
            "frames": [[0, 0, 100, data.len()]], "chunks": [[h, 0, 0, data.len()]],
            "layers": [{ "entries": [{ "path": "f", "type": "reg", "mode": 0o644, "size": data.len(), "chunks": [0] }] }],
        });
        let blob = crate::frame::compress_frame(&[toc.to_string().as_bytes()], 3).unwrap();
        let view = move || Arc::new(Checked::open(&blob).map_err(|r| r.violations).unwrap());
        (dir, data, view)
    }

    #[test]
    fn a_cached_chunk_is_hashed_once_for_many_reads() {
        let (dir, data, view) = one_chunk_file();
        let h = hex(&sha256(&data));
        let f = {
            let v = view();
            v.tree.view(&v.toc).inodes[0].children[0].1
        };
        let shared = Shared::new(view(), dir.path().to_path_buf(), Box::new(NoFetch), false, false).unwrap();
        let mut out = Vec::new();
        for off in (0..data.len()).step_by(128 * 1024) {
            out.extend(shared.read(f, off as u64, 128 * 1024).unwrap());
        }
        assert_eq!(out, data);
        assert_eq!(shared.stats.chunks_hashed.load(Ordering::Relaxed), 1);
        // a damaged cache file is still caught: a fresh mount reads and hashes it again
        std::fs::write(dir.path().join("sha256").join(&h[..2]).join(&h), vec![0u8; data.len()]).unwrap();
        let fresh = Shared::new(view(), dir.path().to_path_buf(), Box::new(NoFetch), false, false).unwrap();
        assert!(fresh.read(f, 0, 4096).is_err());
    }

    /// Records the hints; fetches nothing.
    #[derive(Clone, Default)]
    struct Hints(Arc<Mutex<Vec<Vec<u32>>>>);
    impl Fetcher for Hints {
        fn fetch(&self, _: Vec<u32>, done: Box<dyn FnOnce(std::result::Result<(), String>) + Send>) {
            done(Err("not cached".into()));
        }
        fn prefetch(&self, chunks: Vec<u32>) {
            self.0.lock().unwrap().push(chunks);
        }
    }

    #[test]
    fn first_reads_hint_at_the_rest_of_the_file_and_if_asked_a_second_file_at_the_directory() {
        // d/a: chunks 0 and 1, d/b: chunk 2, d/c: chunk 3; the cache holds 0 and 2
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<Vec<u8>> = (0..4u8).map(|k| vec![k + 1; 1000]).collect();
        let hexes: Vec<String> = data.iter().map(|d| hex(&sha256(d))).collect();
        for k in [0, 2] {
            let h = &hexes[k];
            std::fs::create_dir_all(dir.path().join("sha256").join(&h[..2])).unwrap();
            std::fs::write(dir.path().join("sha256").join(&h[..2]).join(h), &data[k]).unwrap();
        }
        let toc = serde_json::json!({
            "version": 1, "chunker": { "kind": "cdc" }, "packs": [format!("sha256:{}", hexes[0])],
            "frames": [[0, 0, 100, 4000]],
            "chunks": (0..4).map(|k| serde_json::json!([hexes[k], 0, k * 1000, 1000])).collect::<Vec<_>>(),
            "layers": [{ "entries": [
                { "path": "d", "type": "dir", "mode": 0o755 },
                { "path": "d/a", "type": "reg", "mode": 0o644, "size": 2000, "chunks": [0, 1] },
                { "path": "d/b", "type": "reg", "mode": 0o644, "size": 1000, "chunks": [2] },
                { "path": "d/c", "type": "reg", "mode": 0o644, "size": 1000, "chunks": [3] },
            ] }],
        });
        let blob = crate::frame::compress_frame(&[toc.to_string().as_bytes()], 3).unwrap();
        let view = || Arc::new(Checked::open(&blob).map_err(|r| r.violations).unwrap());
        let ino = |name: &str| {
            let v = view();
            let t = v.tree.view(&v.toc);
            let d = t.inodes[0].children.iter().find(|(n, _)| n == "d").unwrap().1;
            t.inodes.iter().find(|i| i.ino == d).unwrap().children.iter().find(|(n, _)| n == name).unwrap().1
        };
        let hints = Hints::default();
        let shared = Shared::new(view(), dir.path().to_path_buf(), Box::new(hints.clone()), false, false).unwrap().whole_file(1 << 20).whole_dir(1 << 20);
        assert_eq!(shared.read(ino("a"), 0, 100).unwrap(), data[0][..100]);
        // the rest of a; one file of d read so far
        assert_eq!(*hints.0.lock().unwrap(), vec![vec![1]]);
        assert_eq!(shared.read(ino("a"), 0, 100).unwrap(), data[0][..100]);
        assert_eq!(shared.read(ino("b"), 0, 1000).unwrap(), data[2]);
        // b is cached whole; a second file of d: the files of d not read yet (c)
        assert_eq!(*hints.0.lock().unwrap(), vec![vec![1], vec![3]]);
        assert_eq!(shared.stats.prefetch_hints.load(Ordering::Relaxed), 2);

        // a chunk handed over in memory, its cache file not written yet, is not asked for again
        let held = Hints::default();
        let shared = Shared::new(view(), dir.path().to_path_buf(), Box::new(held.clone()), false, false).unwrap().whole_file(1 << 20);
        shared.provide(1, data[1].clone()).unwrap();
        assert_eq!(shared.read(ino("a"), 0, 2000).unwrap(), [&data[0][..], &data[1][..]].concat());
        assert!(held.0.lock().unwrap().is_empty());
        assert_eq!(shared.stats.chunks_provided.load(Ordering::Relaxed), 1);
        // handed over again (asked for by a read while it was on its way, or fetched again after its
        // cache file was evicted): still one chunk verified, not two
        shared.provide(1, data[1].clone()).unwrap();
        assert_eq!(shared.stats.chunks_provided.load(Ordering::Relaxed), 1);

        // the rest of the file alone, if asked
        let some = Hints::default();
        let shared = Shared::new(view(), dir.path().to_path_buf(), Box::new(some.clone()), false, false).unwrap().whole_file(1 << 20);
        shared.read(ino("a"), 0, 100).unwrap();
        shared.read(ino("b"), 0, 100).unwrap();
        assert_eq!(*some.0.lock().unwrap(), vec![vec![1]]);

        // the defaults: no hint (read-ahead is opt-in)
        let none = Hints::default();
        let shared = Shared::new(view(), dir.path().to_path_buf(), Box::new(none.clone()), false, false).unwrap();
        shared.read(ino("a"), 0, 100).unwrap();
        shared.read(ino("b"), 0, 100).unwrap();
        assert!(none.0.lock().unwrap().is_empty());

        // both off: no hint
        let quiet = Hints::default();
        let shared = Shared::new(view(), dir.path().to_path_buf(), Box::new(quiet.clone()), false, false).unwrap().whole_file(0).whole_dir(0);
        shared.read(ino("a"), 0, 100).unwrap();
        shared.read(ino("b"), 0, 100).unwrap();
        assert!(quiet.0.lock().unwrap().is_empty());
    }

    #[test]
    fn mtimes_before_1970_are_kept() {
        for secs in [0, 1, 1_700_000_000, 253_402_300_799, -1, -31_536_000, -253_402_300_799] {
            let t = system_time(secs);
            let back = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => -(e.duration().as_secs() as i64),
            };
            assert_eq!(back, secs);
        }
    }

    #[test]
    fn the_read_pool_bounds_its_threads_and_runs_every_job() {
        let pool = ReadPool::new(3);
        let running = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        for _ in 0..40 {
            let (running, most, done, tx) = (running.clone(), most.clone(), done.clone(), tx.clone());
            pool.run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(());
            });
        }
        for _ in 0..40 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 40);
        let most = most.load(Ordering::SeqCst);
        assert!((1..=3).contains(&most), "{most} jobs ran at once");
    }

    #[test]
    fn concurrent_reads_of_one_chunk_hash_it_once() {
        // the kernel's read-ahead sends reads of one file in parallel, each served on its own thread
        let (dir, data, view) = one_chunk_file();
        let f = {
            let v = view();
            v.tree.view(&v.toc).inodes[0].children[0].1
        };
        let shared = Arc::new(Shared::new(view(), dir.path().to_path_buf(), Box::new(NoFetch), false, false).unwrap());
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8u64)
            .map(|k| {
                let (s, b) = (shared.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    s.read(f, (k % 2) * 128 * 1024, 128 * 1024).unwrap()
                })
            })
            .collect();
        for (k, t) in threads.into_iter().enumerate() {
            let off = (k % 2) * 128 * 1024;
            assert_eq!(t.join().unwrap(), data[off..off + 128 * 1024]);
        }
        assert_eq!(shared.stats.chunks_hashed.load(Ordering::Relaxed), 1);
        assert!(shared.loading.lock().unwrap().is_empty());
    }
}
