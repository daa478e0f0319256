//! Writes a chunked image's merged tree into an empty directory (`ocichunk restore`).
//!
//! The tree is merged in memory first ([`crate::format::Tree`]), so nothing is ever deleted on disk
//! and no whiteout or opaque marker touches the target. Every call is relative to a directory
//! descriptor opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` below the target, and
//! acts on a last component this writer created itself (`O_EXCL`, `O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`):
//! no symlink is followed, nothing outside the target is touched. The target must be empty (or
//! absent) and stays mode 0700 until the end, so no other user can race the writes.
//!
//! File contents are streamed: the caller fetches and verifies chunks in the order of
//! [`Writer::chunk_sequence`] and hands them over batch by batch; a file of any size needs no more
//! memory than one batch.

use crate::format::tree::{Meta, NodeId, NodeKind, ROOT};
use crate::format::{Checked, Entry, Report};
use crate::{Error, Result};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// next file, and next chunk in it
    cur_file: usize,
    cur_chunk: usize,
    open: Option<File>,
    dirs: HashMap<String, OwnedFd>,
    as_root: bool,
    summary: Summary,
}

fn parent_and_name(p: &str) -> (&str, &str) {
    match p.rfind('/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    }
}

impl Writer {
    /// Check the TOC (every rule, docs/format.md), merge its layers, make the target (it must be
    /// empty or absent) and create its directories, symlinks, devices and FIFOs.
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
        let mut primaries = Vec::new();
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
        let files = primaries.iter().enumerate().filter(|(_, (_, id))| tree.node(*id).kind == NodeKind::Reg).map(|(i, _)| i).collect();
        let entries = toc.entry_count() as u64;
        let mut w = Writer {
            img,
            root,
            target: target.to_path_buf(),
            primaries,
            links,
            files,
            cur_file: 0,
            cur_chunk: 0,
            open: None,
            dirs: HashMap::new(),
            // SAFETY: no arguments.
            as_root: unsafe { libc::geteuid() } == 0,
            summary: Summary { entries, files: 0, file_bytes: 0, dirs: 0, hardlinks: 0 },
        };
        w.skeleton()?;
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

    fn skeleton(&mut self) -> Result<()> {
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
        let mut out = Vec::new();
        for &f in &self.files {
            if let Some(cs) = self.entry(self.primaries[f].1).and_then(|e| e.chunks.as_ref()) {
                out.extend_from_slice(cs);
            }
        }
        out
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

    /// Close the current file; create the files with no chunks that come before the next chunk.
    fn advance(&mut self) -> Result<()> {
        while self.cur_file < self.files.len() && self.cur_chunk >= self.file_chunks(self.cur_file).len() {
            if self.open.take().is_none() {
                // a file with no chunks (or one whose chunks were all written before it was opened)
                self.create_file(self.cur_file)?;
            }
            self.cur_file += 1;
            self.cur_chunk = 0;
        }
        Ok(())
    }

    /// The next chunks of the sequence, verified by the caller, in order.
    pub fn write(&mut self, chunks: &[&[u8]]) -> Result<()> {
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
        }
        Ok(())
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

    /// Hardlinks, then metadata (files first, directories deepest first, the root last).
    pub fn finish(mut self) -> Result<Summary> {
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
        for i in 0..self.primaries.len() {
            let (path, id) = self.primaries[i].clone();
            if self.img.tree.node(id).kind != NodeKind::Dir {
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
