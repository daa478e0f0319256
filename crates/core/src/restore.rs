//! Writes a chunked image's merged tree into an empty directory (`ocichunk restore`).
//!
//! The tree is merged in memory first ([`crate::format::Tree`]), so nothing is ever deleted on disk
//! and no whiteout or opaque marker touches the target. Every call is relative to a directory
//! descriptor opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` below the target, and
//! acts on a last component this writer created itself (`O_EXCL`, `O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`):
//! no symlink is followed, nothing outside the target is touched. The target must be empty (or
//! absent) and stays mode 0700 until the end, so no other user can race the writes.
//!
//! File contents are streamed in the order of [`Writer::chunk_sequence`], batch by batch; a file
//! of any size needs no more memory than one batch. A [`Fetcher`] makes a [`Batch`] of a stretch of
//! the sequence (its frames read from the pack files, or handed over by the caller, decompressed in
//! parallel, every chunk hashed and compared with its digest) while the writer writes the one
//! before ([`Writer::write_batch`]); batch buffers are reused, so no memory is faulted in anew.

use crate::batch::run;
use crate::format::toc::parent_and_name;
use crate::format::tree::{Meta, NodeId, NodeKind, ROOT};
use crate::format::{Checked, Entry, Report};
use crate::{Error, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Turn a failed check into one error: its class's code and every violation, one per line.
pub fn report_error(r: &Report) -> Error {
    let first = &r.violations[0];
    let mut msg = first.to_string();
    let rest = r.violations.len() - 1 + r.more;
    if rest > 0 {
        msg.push_str(&format!(" (and {rest} more violation(s))"));
    }
    Error::new(first.class.error_code(), msg)
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::unsafe_input(format!("{s:?} holds a NUL byte")))
}

fn os_err(call: &str, path: &str) -> Error {
    Error::last_os(format_args!("{call} {path:?}"))
}

fn check(r: libc::c_int, call: &str, path: &str) -> Result<()> {
    if r < 0 {
        Err(os_err(call, path))
    } else {
        Ok(())
    }
}

/// Open `rel` (a directory below `root`, "" for root itself) without following any symlink.
fn open_beneath(root: RawFd, rel: &str) -> Result<OwnedFd> {
    let p = cstr(if rel.is_empty() { "." } else { rel })?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;
    // SAFETY: valid C string and open_how of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_openat2, root, p.as_ptr(), &how as *const libc::open_how, std::mem::size_of::<libc::open_how>()) };
    if fd < 0 {
        return Err(os_err("openat2", rel));
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub struct Summary {
    pub entries: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub dirs: u64,
    pub hardlinks: u64,
}

pub struct Writer {
    img: Arc<Checked>,
    root: OwnedFd,
    target: PathBuf,
    /// every node's first name, in depth-first order: (path, node)
    primaries: Vec<(String, NodeId)>,
    /// further names of a node: (path, index into primaries)
    links: Vec<(String, usize)>,
    /// regular files in write order (indexes into primaries)
    files: Vec<usize>,
    /// TOC chunk indexes in write order ([`Writer::chunk_sequence`]), and how many were written
    seq: Arc<[u32]>,
    pos: usize,
    /// next file, and next chunk in it
    cur_file: usize,
    cur_chunk: usize,
    open: Option<File>,
    dirs: HashMap<String, OwnedFd>,
    as_root: bool,
    skeleton_done: bool,
    summary: Summary,
}

impl Writer {
    /// Check the TOC (every rule, docs/format.md), merge its layers and make the target (it must be
    /// empty or absent). Its directories, symlinks, devices and FIFOs are created by
    /// [`Writer::skeleton`], or before the first file otherwise.
    pub fn open(target: &Path, img: Arc<Checked>) -> Result<Writer> {
        let tp = target.display().to_string();
        match std::fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => {
                let mut it = std::fs::read_dir(target).map_err(|e| Error::io(&tp, &e))?;
                if it.next().is_some() {
                    return Err(Error::unsafe_input(format!("{tp}: the restore target must be empty or absent (it is not: nothing in it is trusted or kept)")));
                }
            }
            Ok(_) => return Err(Error::unsafe_input(format!("{tp}: the restore target exists and is not a directory"))),
            Err(_) => std::fs::create_dir_all(target).map_err(|e| Error::io(format_args!("mkdir {tp}"), &e))?,
        }
        let c = cstr(&tp)?;
        // SAFETY: valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(os_err("open", &tp));
        }
        // SAFETY: a new descriptor we own.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: valid descriptor.
        check(unsafe { libc::fchmod(root.as_raw_fd(), 0o700) }, "chmod", &tp)?;
        let mut primaries: Vec<(String, NodeId)> = Vec::new();
        let mut links = Vec::new();
        let mut first_at: HashMap<NodeId, usize> = HashMap::new();
        let (toc, tree) = (&img.toc, &img.tree);
        tree.walk(|path, _, _, id, first| {
            if first {
                first_at.insert(id, primaries.len());
                primaries.push((path.to_string(), id));
            } else {
                links.push((path.to_string(), first_at[&id]));
            }
        });
        let files: Vec<usize> = primaries.iter().enumerate().filter(|(_, (_, id))| tree.node(*id).kind == NodeKind::Reg).map(|(i, _)| i).collect();
        let entries = toc.entry_count() as u64;
        let mut seq = Vec::new();
        for &f in &files {
            if let Some(cs) = tree.entry(toc, primaries[f].1).and_then(|e| e.chunks.as_ref()) {
                seq.extend_from_slice(cs);
            }
        }
        let w = Writer {
            img,
            root,
            target: target.to_path_buf(),
            primaries,
            links,
            files,
            seq: seq.into(),
            pos: 0,
            cur_file: 0,
            cur_chunk: 0,
            open: None,
            dirs: HashMap::new(),
            // SAFETY: no arguments.
            as_root: unsafe { libc::geteuid() } == 0,
            skeleton_done: false,
            summary: Summary { entries, files: 0, file_bytes: 0, dirs: 0, hardlinks: 0 },
        };
        Ok(w)
    }

    fn entry(&self, id: NodeId) -> Option<&Entry> {
        self.img.tree.entry(&self.img.toc, id)
    }

    /// Descriptor of the directory holding `path`'s last component.
    fn dir_of(&mut self, path: &str) -> Result<RawFd> {
        let (parent, _) = parent_and_name(path);
        if parent.is_empty() {
            return Ok(self.root.as_raw_fd());
        }
        if !self.dirs.contains_key(parent) {
            if self.dirs.len() >= 64 {
                self.dirs.clear();
            }
            let fd = open_beneath(self.root.as_raw_fd(), parent)?;
            self.dirs.insert(parent.to_string(), fd);
        }
        Ok(self.dirs[parent].as_raw_fd())
    }

    /// Create the directories, symlinks, devices and FIFOs (once; the first file or `finish` does
    /// it otherwise). A caller may run it while the first batch of file content is fetched.
    pub fn skeleton(&mut self) -> Result<()> {
        if self.skeleton_done {
            return Ok(());
        }
        self.skeleton_done = true;
        for i in 0..self.primaries.len() {
            let (path, id) = self.primaries[i].clone();
            let kind = self.img.tree.node(id).kind;
            if kind == NodeKind::Reg {
                continue;
            }
            let pfd = self.dir_of(&path)?;
            let name = cstr(parent_and_name(&path).1)?;
            let e = self.entry(id);
            let r = match kind {
                // SAFETY (all): valid descriptors and C strings.
                NodeKind::Dir => {
                    self.summary.dirs += 1;
                    unsafe { libc::mkdirat(pfd, name.as_ptr(), 0o700) }
                }
                NodeKind::Symlink => {
                    let target = cstr(e.and_then(|e| e.link.as_deref()).unwrap_or(""))?;
                    unsafe { libc::symlinkat(target.as_ptr(), pfd, name.as_ptr()) }
                }
                NodeKind::Char | NodeKind::Block | NodeKind::Fifo => {
                    let (fmt, dev) = match kind {
                        NodeKind::Char => (libc::S_IFCHR, e.map_or(0, |e| libc::makedev(e.dev_major.unwrap_or(0), e.dev_minor.unwrap_or(0)))),
                        NodeKind::Block => (libc::S_IFBLK, e.map_or(0, |e| libc::makedev(e.dev_major.unwrap_or(0), e.dev_minor.unwrap_or(0)))),
                        _ => (libc::S_IFIFO, 0),
                    };
                    unsafe { libc::mknodat(pfd, name.as_ptr(), fmt | 0o600, dev) }
                }
                NodeKind::Reg => unreachable!(),
            };
            check(r, "create", &path)?;
        }
        Ok(())
    }

    /// TOC chunk indexes in the order `write` takes them: every file's chunks, file after file.
    pub fn chunk_sequence(&self) -> Vec<u32> {
        self.seq.to_vec()
    }

    /// A fetcher of batches of this writer's chunk sequence.
    pub fn fetcher(&self) -> Fetcher {
        Fetcher { img: self.img.clone(), seq: self.seq.clone(), packs: OnceLock::new(), pool: Mutex::new(Vec::new()) }
    }

    /// Uncompressed length of a TOC chunk.
    pub fn chunk_len(&self, c: u32) -> Option<u64> {
        self.img.toc.chunks.get(c as usize).map(|c| c.len)
    }

    fn file_chunks(&self, f: usize) -> &[u32] {
        self.entry(self.primaries[self.files[f]].1).and_then(|e| e.chunks.as_deref()).unwrap_or(&[])
    }

    /// Create file `f` (never following or replacing anything).
    fn create_file(&mut self, f: usize) -> Result<File> {
        let path = self.primaries[self.files[f]].0.clone();
        let pfd = self.dir_of(&path)?;
        let name = cstr(parent_and_name(&path).1)?;
        // SAFETY: valid descriptor and C string.
        let fd = unsafe { libc::openat(pfd, name.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0o600) };
        check(fd, "create", &path)?;
        self.summary.files += 1;
        // SAFETY: a new descriptor we own.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Close the current file once all its chunks are written, its metadata set through its
    /// descriptor; create the files with no chunks that come before the next chunk.
    fn advance(&mut self) -> Result<()> {
        while self.cur_file < self.files.len() && self.cur_chunk >= self.file_chunks(self.cur_file).len() {
            let f = match self.open.take() {
                Some(f) => f,
                // a file with no chunks (or one whose chunks were all written before it was opened)
                None => self.create_file(self.cur_file)?,
            };
            self.file_meta(&f, self.primaries[self.files[self.cur_file]].1, self.cur_file)?;
            self.cur_file += 1;
            self.cur_chunk = 0;
        }
        Ok(())
    }

    /// Owner, mode, extended attributes and mtime of a regular file this writer created and
    /// wrote, through its descriptor (after its last write).
    fn file_meta(&self, f: &File, id: NodeId, file: usize) -> Result<()> {
        let shown = || self.primaries[self.files[file]].0.as_str();
        let fd = f.as_raw_fd();
        let Meta { mode, uid, gid, mtime, xattrs } = self.img.tree.meta(&self.img.toc, id);
        // SAFETY (all below): a valid descriptor and C strings.
        if self.as_root && unsafe { libc::fchown(fd, uid, gid) } < 0 {
            return Err(os_err("chown", shown()));
        }
        if unsafe { libc::fchmod(fd, mode) } < 0 {
            return Err(os_err("chmod", shown()));
        }
        for (k, v) in &xattrs {
            let kc = cstr(k)?;
            if unsafe { libc::fsetxattr(fd, kc.as_ptr(), v.as_ptr().cast(), v.len(), 0) } < 0 {
                return Err(os_err(&format!("setxattr {k:?}"), shown()));
            }
        }
        let ts = libc::timespec { tv_sec: mtime as libc::time_t, tv_nsec: 0 };
        if unsafe { libc::futimens(fd, [ts, ts].as_ptr()) } < 0 {
            return Err(os_err("utimes", shown()));
        }
        Ok(())
    }

    /// The next chunks of the sequence, verified by the caller, in order.
    pub fn write(&mut self, chunks: &[&[u8]]) -> Result<()> {
        self.skeleton()?;
        for data in chunks {
            self.advance()?;
            if self.cur_file >= self.files.len() {
                return Err(Error::invalid("more chunks than the files hold"));
            }
            let c = self.file_chunks(self.cur_file)[self.cur_chunk];
            if Some(data.len() as u64) != self.chunk_len(c) {
                return Err(Error::invalid(format!("chunk {c}: {} bytes given, {:?} expected", data.len(), self.chunk_len(c))));
            }
            if self.open.is_none() {
                let f = self.create_file(self.cur_file)?;
                self.open = Some(f);
            }
            let path = &self.primaries[self.files[self.cur_file]].0;
            self.open.as_mut().unwrap().write_all(data).map_err(|e| Error::io(format_args!("write {path:?}"), &e))?;
            self.summary.file_bytes += data.len() as u64;
            self.cur_chunk += 1;
            self.pos += 1;
        }
        Ok(())
    }

    /// Write a verified batch: the next stretch of the chunk sequence.
    pub fn write_batch(&mut self, b: &Batch) -> Result<()> {
        if !Arc::ptr_eq(&self.seq, &b.seq) || b.start != self.pos {
            return Err(Error::invalid(format!("batch of chunks {}..{} given, chunk {} is next", b.start, b.end, self.pos)));
        }
        let parts: Vec<&[u8]> = b.at.iter().map(|&(o, l)| &b.data[o..o + l]).collect();
        self.write(&parts)
    }

    fn set_meta(&mut self, path: &str, id: NodeId) -> Result<()> {
        let kind = self.img.tree.node(id).kind;
        let Meta { mode, uid, gid, mtime, xattrs } = self.img.tree.meta(&self.img.toc, id);
        let (pfd, name) = if path.is_empty() { (None, cstr(".")?) } else { (Some(self.dir_of(path)?), cstr(parent_and_name(path).1)?) };
        let dfd = pfd.unwrap_or(self.root.as_raw_fd());
        let shown = if path.is_empty() { self.target.display().to_string() } else { path.to_string() };
        // owner first (chown clears setuid bits and capabilities), then mode, xattrs, times
        if self.as_root {
            // SAFETY (all below): valid descriptors and C strings.
            check(unsafe { libc::fchownat(dfd, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }, "chown", &shown)?;
        }
        if kind != NodeKind::Symlink {
            // the last component is a non-symlink this writer created in a directory only it can write
            check(unsafe { libc::fchmodat(dfd, name.as_ptr(), mode, 0) }, "chmod", &shown)?;
        }
        if !xattrs.is_empty() {
            let base = format!("/proc/self/fd/{dfd}/{}", if path.is_empty() { "." } else { parent_and_name(path).1 });
            let p = CString::new(base.as_bytes()).map_err(|_| Error::unsafe_input("NUL in a name"))?;
            for (k, v) in &xattrs {
                let kc = cstr(k)?;
                check(unsafe { libc::lsetxattr(p.as_ptr(), kc.as_ptr(), v.as_ptr().cast(), v.len(), 0) }, &format!("setxattr {k:?}"), &shown)?;
            }
        }
        let ts = libc::timespec { tv_sec: mtime as libc::time_t, tv_nsec: 0 };
        let times = [ts, ts];
        check(unsafe { libc::utimensat(dfd, name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }, "utimes", &shown)?;
        Ok(())
    }

    /// Hardlinks, then metadata (symlinks, devices and FIFOs, then directories deepest first, the
    /// root last).
    pub fn finish(mut self) -> Result<Summary> {
        self.skeleton()?;
        self.advance()?;
        if self.cur_file < self.files.len() {
            return Err(Error::invalid(format!("{} file(s) not written", self.files.len() - self.cur_file)));
        }
        for i in 0..self.links.len() {
            let (path, p) = self.links[i].clone();
            let target = self.primaries[p].0.clone();
            let tfd = self.dir_of(&target)?;
            let tname = cstr(parent_and_name(&target).1)?;
            let lfd = self.dir_of(&path)?;
            let lname = cstr(parent_and_name(&path).1)?;
            // SAFETY: valid descriptors and C strings; flags 0: a symlink is linked, not followed.
            check(unsafe { libc::linkat(tfd, tname.as_ptr(), lfd, lname.as_ptr(), 0) }, "link", &path)?;
            self.summary.hardlinks += 1;
        }
        // regular files got theirs when they were closed
        for i in 0..self.primaries.len() {
            let (path, id) = self.primaries[i].clone();
            if !matches!(self.img.tree.node(id).kind, NodeKind::Dir | NodeKind::Reg) {
                self.set_meta(&path, id)?;
            }
        }
        for i in (0..self.primaries.len()).rev() {
            let (path, id) = self.primaries[i].clone();
            if self.img.tree.node(id).kind == NodeKind::Dir {
                self.dirs.remove(&path);
                self.set_meta(&path, id)?;
            }
        }
        self.dirs.clear();
        // the root as every reader shows it: its entry, or the implicit root (0755, 0:0, mtime 0)
        self.set_meta("", ROOT)?;
        Ok(self.summary)
    }
}

/// A stretch `start..end` of a writer's chunk sequence, every chunk verified: what
/// [`Writer::write_batch`] takes.
pub struct Batch {
    seq: Arc<[u32]>,
    pub start: usize,
    pub end: usize,
    /// the batch's frames, decompressed back to back (a reused buffer: only a prefix is used)
    data: Vec<u8>,
    /// compressed frames read from the packs (a reused buffer)
    comp: Vec<u8>,
    /// per chunk of the stretch: (offset, length) in `data`
    at: Vec<(usize, usize)>,
}

/// Compressed frames a caller read itself: `frames` holds (TOC frame index, offset in `bytes`).
pub struct Given<'a> {
    pub bytes: &'a [u8],
    pub frames: &'a [(u32, usize)],
}

/// What [`Fetcher::prepare`] found.
pub enum Prepared {
    Ready(Batch),
    /// this TOC chunk's bytes do not match its digest (nothing of the batch is written)
    Mismatch(u32),
}

/// Makes [`Batch`]es: reads (or takes) the frames of a stretch of the chunk sequence, decompresses
/// them in parallel and checks every chunk's SHA-256 against the TOC, each frame's chunks hashed
/// right after it is decompressed, while its bytes are still in the cache.
pub struct Fetcher {
    img: Arc<Checked>,
    seq: Arc<[u32]>,
    /// the pack files by TOC pack index, when the source has them on disk
    packs: OnceLock<Vec<File>>,
    /// buffers of written batches, to be reused
    pool: Mutex<Vec<Vec<u8>>>,
}

/// Bytes of decompressed frames one batch may hold.
const MAX_BATCH: usize = 4 << 30;

impl Fetcher {
    /// Read frames from these files (the TOC's packs, in order) from now on.
    pub fn open_packs(&self, paths: &[PathBuf]) -> Result<()> {
        if paths.len() != self.img.toc.packs.len() {
            return Err(Error::invalid(format!("{} pack files given, the TOC has {} packs", paths.len(), self.img.toc.packs.len())));
        }
        let files = paths.iter().map(|p| File::open(p).map_err(|e| Error::io(format_args!("open {}", p.display()), &e))).collect::<Result<Vec<_>>>()?;
        self.packs.set(files).map_err(|_| Error::invalid("pack files already opened"))
    }

    /// The frames batch `start..end` needs, in pack order (pack, then offset).
    pub fn frames(&self, start: usize, end: usize) -> Result<Vec<u32>> {
        if start > end || end > self.seq.len() {
            return Err(Error::invalid(format!("chunks {start}..{end} of a sequence of {}", self.seq.len())));
        }
        let toc = &self.img.toc;
        let mut frames: Vec<u32> = self.seq[start..end].iter().map(|&c| toc.chunks[c as usize].frame).collect();
        frames.sort_unstable_by_key(|&f| {
            let fr = &toc.frames[f as usize];
            (fr.pack, fr.offset, f)
        });
        frames.dedup();
        Ok(frames)
    }

    fn buffer(&self) -> Vec<u8> {
        self.pool.lock().map(|mut p| p.pop()).ok().flatten().unwrap_or_default()
    }

    /// Give a written batch's buffers back.
    pub fn recycle(&self, b: Batch) {
        if let Ok(mut p) = self.pool.lock() {
            for v in [b.data, b.comp] {
                if p.len() < 8 && v.capacity() > 0 {
                    p.push(v);
                }
            }
        }
    }

    /// Fetch and verify chunks `start..end` of the sequence: their frames as `given`, else read
    /// from the pack files.
    pub fn prepare(&self, start: usize, end: usize, given: Option<Given>, threads: usize) -> Result<Prepared> {
        let toc = &self.img.toc;
        let frames = self.frames(start, end)?;
        let mut comp = Vec::new();
        // where each frame's compressed bytes are: (offset in the compressed bytes, length)
        let mut src: Vec<(usize, usize)> = Vec::with_capacity(frames.len());
        let bytes: &[u8] = match given {
            Some(Given { bytes: data, frames: at }) => {
                let map: HashMap<u32, usize> = at.iter().copied().collect();
                for &f in &frames {
                    let fr = &toc.frames[f as usize];
                    let o = *map.get(&f).ok_or_else(|| Error::invalid(format!("frame {f} of chunks {start}..{end} not given")))?;
                    let l = fr.compressed_len as usize;
                    if o.checked_add(l).is_none_or(|e| e > data.len()) {
                        return Err(Error::invalid(format!("frame {f} at {o}+{l} is outside the {}-byte buffer", data.len())));
                    }
                    src.push((o, l));
                }
                data
            }
            None => {
                let packs = self.packs.get().ok_or_else(|| Error::invalid("no frames given and no pack files opened"))?;
                comp = self.buffer();
                comp.clear();
                // one read per run of adjacent frames of a pack
                let mut i = 0;
                while i < frames.len() {
                    let first = &toc.frames[frames[i] as usize];
                    let (pack, off) = (first.pack as usize, first.offset);
                    let mut end_off = off;
                    let base = comp.len();
                    let mut j = i;
                    while j < frames.len() {
                        let fr = &toc.frames[frames[j] as usize];
                        if fr.pack as usize != pack || fr.offset != end_off {
                            break;
                        }
                        src.push((base + (fr.offset - off) as usize, fr.compressed_len as usize));
                        end_off = fr.offset + fr.compressed_len;
                        j += 1;
                    }
                    if j == i {
                        // overlapping or duplicate offsets: this frame alone
                        end_off = off + first.compressed_len;
                        src.push((base, first.compressed_len as usize));
                        j = i + 1;
                    }
                    let len = (end_off - off) as usize;
                    let file = packs.get(pack).ok_or_else(|| Error::corrupt(format!("frame {} names pack {pack}", frames[i])))?;
                    comp.resize(base + len, 0);
                    file.read_exact_at(&mut comp[base..], off).map_err(|e| Error::io(format_args!("read pack {} at {off}+{len}", toc.packs[pack]), &e))?;
                    i = j;
                }
                &comp
            }
        };
        // frame k decompresses to data[out[k]..out[k] + len]
        let mut total = 0usize;
        let mut out_at = Vec::with_capacity(frames.len());
        for &f in &frames {
            out_at.push(total);
            total = total
                .checked_add(toc.frames[f as usize].len as usize)
                .filter(|&t| t <= MAX_BATCH)
                .ok_or_else(|| Error::invalid("too many bytes for one batch"))?;
        }
        let mut data = self.buffer();
        if data.len() < total {
            data.resize(total, 0);
        }
        // the chunks each frame holds for this batch (each once), by position in `frames`
        let pos: HashMap<u32, usize> = frames.iter().enumerate().map(|(k, &f)| (f, k)).collect();
        let mut wanted: Vec<Vec<u32>> = vec![Vec::new(); frames.len()];
        let mut at = Vec::with_capacity(end - start);
        for &c in &self.seq[start..end] {
            let ch = &toc.chunks[c as usize];
            let k = pos[&ch.frame];
            let flen = toc.frames[ch.frame as usize].len;
            if ch.offset.checked_add(ch.len).is_none_or(|e| e > flen) {
                return Err(Error::corrupt(format!("chunk {c} at {}+{} is outside its {flen}-byte frame", ch.offset, ch.len)));
            }
            at.push((out_at[k] + ch.offset as usize, ch.len as usize));
            wanted[k].push(c);
        }
        for w in &mut wanted {
            w.sort_unstable();
            w.dedup();
        }
        // split the output into each frame's slice, then decompress and verify frame by frame
        let mut slices: Vec<&mut [u8]> = Vec::with_capacity(frames.len());
        let mut rest = &mut data[..total];
        for &f in &frames {
            let (a, b) = rest.split_at_mut(toc.frames[f as usize].len as usize);
            slices.push(a);
            rest = b;
        }
        let mismatch = run(threads, || {
            slices
                .into_par_iter()
                .zip(src.par_iter())
                .enumerate()
                .map(|(k, (dst, &(o, l)))| {
                    let dict = self.img.frame_dict(frames[k])?;
                    crate::frame::decompress_frame_with(&bytes[o..o + l], dst, dict.as_deref()).map_err(|e| e.context(format_args!("frame {}", frames[k])))?;
                    for &c in &wanted[k] {
                        let ch = &toc.chunks[c as usize];
                        let got: [u8; 32] = Sha256::digest(&dst[ch.offset as usize..(ch.offset + ch.len) as usize]).into();
                        if Some(got) != toc.digests.get(c) {
                            return Ok(Some(c));
                        }
                    }
                    Ok(None)
                })
                .collect::<Result<Vec<Option<u32>>>>()
        })??;
        if let Some(c) = mismatch.into_iter().flatten().next() {
            return Ok(Prepared::Mismatch(c));
        }
        Ok(Prepared::Ready(Batch { seq: self.seq.clone(), start, end, data, comp, at }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::compress_frame;

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Files a (chunks 0, 1), b (chunk 2), c (chunk 0 again) over two frames of one pack.
    fn image(dir: &Path, tamper: bool) -> (Arc<Checked>, PathBuf) {
        let parts: [&[u8]; 3] = [b"hello ", b"world", b"second frame"];
        let f0 = compress_frame(&[parts[0], parts[1]], 3).unwrap();
        let f1 = compress_frame(&[parts[2]], 3).unwrap();
        let pack = dir.join("pack");
        std::fs::write(&pack, [f0.clone(), f1.clone()].concat()).unwrap();
        let d2 = if tamper { hex(&crate::batch::sha256(b"other")) } else { hex(&crate::batch::sha256(parts[2])) };
        let toc = serde_json::json!({
            "version": 1, "chunker": { "kind": "cdc" },
            "packs": [format!("sha256:{}", "a".repeat(64))],
            "frames": [[0, 0, f0.len(), 11], [0, f0.len(), f1.len(), 12]],
            "chunks": [[hex(&crate::batch::sha256(parts[0])), 0, 0, 6], [hex(&crate::batch::sha256(parts[1])), 0, 6, 5], [d2, 1, 0, 12]],
            "layers": [{ "entries": [
                { "path": "a", "type": "reg", "mode": 0o644, "size": 11, "chunks": [0, 1] },
                { "path": "b", "type": "reg", "mode": 0o600, "size": 12, "chunks": [2] },
                { "path": "c", "type": "reg", "mode": 0o644, "size": 6, "chunks": [0] },
            ] }],
        });
        let blob = compress_frame(&[toc.to_string().as_bytes()], 3).unwrap();
        (Arc::new(Checked::open(&blob).map_err(|r| report_error(&r)).unwrap()), pack)
    }

    #[test]
    fn batches_from_packs_and_given_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (img, pack) = image(dir.path(), false);
        let mut w = Writer::open(&dir.path().join("t"), img).unwrap();
        assert_eq!(w.chunk_sequence(), vec![0, 1, 2, 0]);
        let f = w.fetcher();
        assert_eq!(f.frames(0, 4).unwrap(), vec![0, 1]);
        assert!(f.frames(3, 5).is_err());
        // no pack files and nothing given
        assert_eq!(f.prepare(0, 2, None, 1).err().unwrap().code(), crate::Code::Invalid);
        f.open_packs(std::slice::from_ref(&pack)).unwrap();
        let Prepared::Ready(b1) = f.prepare(0, 2, None, 1).unwrap() else { panic!("mismatch") };
        // a batch out of order is refused
        let Prepared::Ready(b2) = f.prepare(2, 4, None, 2).unwrap() else { panic!("mismatch") };
        assert_eq!(w.write_batch(&b2).unwrap_err().code(), crate::Code::Invalid);
        w.write_batch(&b1).unwrap();
        f.recycle(b1);
        // frames handed over: frame 1 first, then frame 0, at offsets of the caller's choosing
        let bytes = std::fs::read(&pack).unwrap();
        let f0 = img_frame_len(&w, 0);
        let given = [&[0u8; 3][..], &bytes[f0..], &bytes[..f0]].concat();
        let at = [(1, 3), (0, 3 + bytes.len() - f0)];
        let Prepared::Ready(b) = f.prepare(2, 4, Some(Given { bytes: &given, frames: &at }), 1).unwrap() else { panic!("mismatch") };
        w.write_batch(&b).unwrap();
        // a frame missing from what is given, or outside it
        assert!(f.prepare(2, 4, Some(Given { bytes: &given, frames: &at[..1] }), 1).is_err());
        assert!(f.prepare(2, 4, Some(Given { bytes: &given[..10], frames: &at }), 1).is_err());
        w.finish().unwrap();
        let t = dir.path().join("t");
        assert_eq!(std::fs::read(t.join("a")).unwrap(), b"hello world");
        assert_eq!(std::fs::read(t.join("b")).unwrap(), b"second frame");
        assert_eq!(std::fs::read(t.join("c")).unwrap(), b"hello ");
    }

    fn img_frame_len(w: &Writer, f: usize) -> usize {
        w.img.toc.frames[f].compressed_len as usize
    }

    #[test]
    fn a_chunk_that_does_not_match_is_reported_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (img, pack) = image(dir.path(), true);
        let w = Writer::open(&dir.path().join("t"), img).unwrap();
        let f = w.fetcher();
        f.open_packs(std::slice::from_ref(&pack)).unwrap();
        assert!(matches!(f.prepare(0, 2, None, 1).unwrap(), Prepared::Ready(_)));
        assert!(matches!(f.prepare(0, 4, None, 1).unwrap(), Prepared::Mismatch(2)));
        // a corrupt frame
        let mut bytes = std::fs::read(&pack).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        let at = [(0, 0), (1, img_frame_len(&w, 0))];
        let r = f.prepare(0, 4, Some(Given { bytes: &bytes, frames: &at }), 1);
        assert!(matches!(r, Err(ref e) if e.code() == crate::Code::Corrupt) || matches!(r, Ok(Prepared::Mismatch(2))));
    }
}
