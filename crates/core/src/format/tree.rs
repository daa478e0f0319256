//! The merged tree: the layers of a TOC applied in order, as containerd's applier unpacks tar
//! layers, written once for every reader (docs/format.md §4 "Merging the layers").
//!
//! - An entry's parent directories are resolved inside the root like a chroot would (containerd's
//!   `fs.RootPath`, umoci's securejoin): symlinks are followed, absolute targets start again at the
//!   root, `..` stops at the root; missing parents are made (0755, root-owned, mtime 0), for
//!   whiteouts and opaque markers too. A parent that is neither a directory nor a symlink is an
//!   error.
//! - The last component is never followed: an entry replaces what is there (a directory over a
//!   directory keeps its children, takes the new metadata and sets its xattrs over the old ones).
//! - `whiteout` removes the name (and its subtree) from its resolved parent; `opaque` empties the
//!   directory its whole path resolves to (a symlink to a directory is followed, inside the root).
//!   Both remove only what the layers below left, never what the same layer wrote (the OCI image
//!   spec: whiteouts apply to lower layers only): canonical order puts a path's whiteout before
//!   the layer's entry there, but a symlinked parent can lead a write to a path a marker of the
//!   same layer covers (umoci keeps such writes; containerd too, for opaque directories).
//! - `hardlink` shares the inode its target has at that point (target's parent resolved, the
//!   target itself not followed); it must exist and must not be a directory. A hardlink with
//!   metadata applies it to the inode, as containerd applies a link header's.
//! - The root's own entry is not applied (containerd skips it); mtimes containerd cannot set show
//!   as 0 ([`Tree::meta`]).
//!
//! The result holds no symlink on the way to any node, so a writer creating it under an empty
//! directory never follows one. Every node's resolved path stays within `limits::PATH`.

use super::toc::{Entry, Kind, Toc};
use super::{limits, Class, Report};
use std::collections::{BTreeMap, HashSet};

pub type NodeId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Reg,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    /// (layer, entry index) holding the metadata (and content); None for a directory a layer only implied
    pub entry: Option<(u32, u32)>,
    /// metadata merged from more than the entry (a directory entry over a directory keeps the
    /// xattrs the new entry does not name); None: the entry's own
    pub meta: Option<Box<Meta>>,
    /// names pointing at this node
    pub nlink: u32,
    /// directories: name -> node
    pub children: BTreeMap<String, NodeId>,
}

#[derive(Debug, Clone)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

pub const ROOT: NodeId = 0;

/// The latest mtime containerd's applier sets (Go's `time.Unix(0, 1<<63-1)`, whole seconds); an
/// mtime before 1970 or after this is shown as 0, as containerd shows it.
pub const MTIME_SHOWN_MAX: i64 = 9_223_372_036;

/// A node's metadata as every reader shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// sorted by name bytes
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn of(kind: NodeKind, e: Option<&Entry>) -> Meta {
        Meta {
            mode: e.and_then(|e| e.mode).unwrap_or(if kind == NodeKind::Dir { 0o755 } else { 0 }),
            uid: e.and_then(|e| e.uid).unwrap_or(0),
            gid: e.and_then(|e| e.gid).unwrap_or(0),
            mtime: e.and_then(|e| e.mtime).unwrap_or(0),
            xattrs: e.and_then(|e| e.xattrs.clone()).unwrap_or_default(),
        }
    }
}

/// `base`'s xattrs with `add`'s set over them (both sorted by name bytes; the result too).
fn merge_xattrs(base: &[(String, Vec<u8>)], add: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut m: BTreeMap<&[u8], &(String, Vec<u8>)> = base.iter().map(|x| (x.0.as_bytes(), x)).collect();
    for x in add {
        m.insert(x.0.as_bytes(), x);
    }
    m.into_values().cloned().collect()
}

impl Tree {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    /// The entry behind a node, if it has one.
    pub fn entry<'t>(&self, toc: &'t Toc, id: NodeId) -> Option<&'t Entry> {
        self.node(id).entry.map(|(l, i)| &toc.layers[l as usize].entries[i as usize])
    }

    /// A node's metadata as readers show it: its entry's (defaults for a directory a layer only
    /// implied: 0755, 0:0, mtime 0), merged where the layers merged it; an mtime containerd cannot
    /// set (before 1970, after [`MTIME_SHOWN_MAX`]) is 0.
    pub fn meta(&self, toc: &Toc, id: NodeId) -> Meta {
        let n = self.node(id);
        let mut m = match &n.meta {
            Some(m) => (**m).clone(),
            None => Meta::of(n.kind, self.entry(toc, id)),
        };
        if !(0..=MTIME_SHOWN_MAX).contains(&m.mtime) {
            m.mtime = 0;
        }
        m
    }

    /// The root alone: the tree below the first layer.
    pub fn empty() -> Tree {
        Tree { nodes: vec![Node { kind: NodeKind::Dir, entry: None, meta: None, nlink: 1, children: BTreeMap::new() }] }
    }

    /// Apply every layer. Violations go to `r`; building stops after the first layer that has any.
    pub fn build(toc: &Toc, r: &mut Report) -> Tree {
        Tree::build_each(toc, r, |_, _| {})
    }

    /// [`Tree::build`], calling `f(layer index, tree so far)` after each layer applied without
    /// violations.
    pub fn build_each(toc: &Toc, r: &mut Report, f: impl FnMut(u32, &Tree)) -> Tree {
        Tree::build_with(toc, r, f, true)
    }

    /// [`Tree::build`] resolving every entry's parent from the root (no cache): what the cache must
    /// not change, for tests.
    #[cfg(test)]
    pub(crate) fn build_uncached(toc: &Toc, r: &mut Report) -> Tree {
        Tree::build_with(toc, r, |_, _| {}, false)
    }

    fn build_with(toc: &Toc, r: &mut Report, mut f: impl FnMut(u32, &Tree), cache: bool) -> Tree {
        let n = toc.entry_count() + 1;
        let mut b =
            Builder { toc, t: Tree { nodes: Vec::with_capacity(n) }, layer: 0, stamp: Vec::with_capacity(n), links: HashSet::new(), parent: None, cache };
        b.new_node(NodeKind::Dir, None);
        for (li, layer) in toc.layers.iter().enumerate() {
            b.layer = li as u32 + 1;
            b.links.clear();
            b.parent = None;
            for (ei, e) in layer.entries.iter().enumerate() {
                if let Err((class, m)) = b.apply(e, (li as u32, ei as u32)) {
                    r.push(class, Some(li as u32), Some(&e.path), m);
                }
            }
            if !r.is_empty() {
                break;
            }
            f(li as u32, &b.t);
        }
        b.t
    }

    /// Depth-first, children in name order: `f(path, parent, name, node, first)` for every name in
    /// the tree (`first`: the node's first name in this order; later ones are its hardlinks).
    /// `path` is the node's path relative to the root. No recursion: depth is bounded only by PATH.
    pub fn walk(&self, mut f: impl FnMut(&str, NodeId, &str, NodeId, bool)) {
        struct Level<'a> {
            dir: NodeId,
            kids: std::collections::btree_map::Iter<'a, String, NodeId>,
            /// length of `path` before this directory's name was appended
            base: usize,
        }
        let mut seen = vec![false; self.nodes.len()];
        seen[ROOT as usize] = true;
        let mut path = String::new();
        let mut stack = vec![Level { dir: ROOT, kids: self.nodes[ROOT as usize].children.iter(), base: 0 }];
        while let Some(top) = stack.last_mut() {
            let Some((name, &id)) = top.kids.next() else {
                let done = stack.pop().unwrap();
                path.truncate(done.base);
                continue;
            };
            let dir = top.dir;
            let base = path.len();
            if base > 0 {
                path.push('/');
            }
            path.push_str(name);
            let first = !std::mem::replace(&mut seen[id as usize], true);
            f(&path, dir, name, id, first);
            if first && self.nodes[id as usize].kind == NodeKind::Dir {
                stack.push(Level { dir: id, kids: self.nodes[id as usize].children.iter(), base });
            } else {
                path.truncate(base);
            }
        }
    }
}

/// One inode of the merged view, as every reader shows it (the mount serves these; ls and cat read
/// them as JSON).
#[derive(Debug, serde::Serialize)]
pub struct InodeOut {
    pub ino: u64,
    /// the node of the merged tree whose content a regular file has
    #[serde(skip)]
    pub node: Option<NodeId>,
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    /// names (directories: 2 + subdirectories)
    pub nlink: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(rename = "devMajor", skip_serializing_if = "Option::is_none")]
    pub dev_major: Option<u32>,
    #[serde(rename = "devMinor", skip_serializing_if = "Option::is_none")]
    pub dev_minor: Option<u32>,
    pub rdev: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(String, Vec<u8>)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<u32>,
    /// (name, ino) in name order
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<(String, u64)>,
}

/// The merged view as readers take it: every reachable inode, root (ino 1) first, hardlinks once.
#[derive(Debug, serde::Serialize)]
pub struct TreeOut {
    pub inodes: Vec<InodeOut>,
}

impl Tree {
    /// The view for readers (ls, cat, the mount): inode numbers are node ids + 1.
    pub fn view(&self, toc: &Toc) -> TreeOut {
        let mut inodes = vec![self.inode_out(toc, ROOT, ROOT as u64 + 1)];
        self.walk(|_, _, _, id, first| {
            if first {
                inodes.push(self.inode_out(toc, id, id as u64 + 1));
            }
        });
        TreeOut { inodes }
    }

    /// Node `id` as inode number `ino`, its children numbered as in [`Tree::view`].
    pub fn inode_out(&self, toc: &Toc, id: NodeId, ino: u64) -> InodeOut {
        let n = self.node(id);
        let e = self.entry(toc, id);
        let kind = match n.kind {
            NodeKind::Reg => "reg",
            NodeKind::Dir => "dir",
            NodeKind::Symlink => "symlink",
            NodeKind::Char => "char",
            NodeKind::Block => "block",
            NodeKind::Fifo => "fifo",
        };
        let dev = matches!(n.kind, NodeKind::Char | NodeKind::Block);
        let (major, minor) = (e.and_then(|e| e.dev_major).unwrap_or(0), e.and_then(|e| e.dev_minor).unwrap_or(0));
        let link = e.and_then(|e| e.link.clone()).filter(|_| n.kind == NodeKind::Symlink);
        let subdirs = n.children.values().filter(|&&c| self.node(c).kind == NodeKind::Dir).count() as u32;
        let m = self.meta(toc, id);
        InodeOut {
            ino,
            node: Some(id),
            kind,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            size: match n.kind {
                NodeKind::Reg => e.and_then(|e| e.size).unwrap_or(0),
                NodeKind::Symlink => link.as_ref().map_or(0, |l| l.len() as u64),
                _ => 0,
            },
            mtime: m.mtime,
            nlink: if n.kind == NodeKind::Dir { 2 + subdirs } else { n.nlink },
            link,
            dev_major: dev.then_some(major),
            dev_minor: dev.then_some(minor),
            rdev: if dev { libc::makedev(major, minor) as u32 } else { 0 },
            xattrs: m.xattrs,
            chunks: e.and_then(|e| e.chunks.clone()).filter(|_| n.kind == NodeKind::Reg).unwrap_or_default(),
            children: n.children.iter().map(|(k, &v)| (k.clone(), v as u64 + 1)).collect(),
        }
    }
}

struct Builder<'t> {
    toc: &'t Toc,
    t: Tree,
    /// The layer being applied, numbered from 1.
    layer: u32,
    /// Per node, the last layer that wrote it: made it, or (directories) took it again as its
    /// entry or put something in it (the directories on the way to its entries, resolved). What
    /// the layer being applied wrote is left alone by its whiteouts and opaque markers.
    stamp: Vec<u32>,
    /// The names this layer gave nodes it did not make (hardlink entries), as (directory, name).
    links: HashSet<(NodeId, &'t str)>,
    /// The directory an entry's parent path last resolved to in this layer (entries come sorted:
    /// neighbours share parents); forgotten when a layer starts or a name is removed, the only
    /// changes to the tree that can change where a path leads.
    parent: Option<(&'t str, NodeId)>,
    /// use `parent` (always, but in a test that compares with a build without)
    cache: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Make {
    No,
    Entry,
    Marker,
}

enum Resolved {
    Dir(NodeId),
    Missing,
}

fn node_kind(k: Kind) -> Option<NodeKind> {
    Some(match k {
        Kind::Reg => NodeKind::Reg,
        Kind::Dir => NodeKind::Dir,
        Kind::Symlink => NodeKind::Symlink,
        Kind::Char => NodeKind::Char,
        Kind::Block => NodeKind::Block,
        Kind::Fifo => NodeKind::Fifo,
        Kind::Hardlink | Kind::Whiteout | Kind::Opaque => return None,
    })
}

type Fail = (Class, String);

impl<'t> Builder<'t> {
    fn new_node(&mut self, kind: NodeKind, entry: Option<(u32, u32)>) -> NodeId {
        self.t.nodes.push(Node { kind, entry, meta: None, nlink: 1, children: BTreeMap::new() });
        self.stamp.push(self.layer);
        (self.t.nodes.len() - 1) as NodeId
    }

    fn kids(&mut self, d: NodeId) -> &mut BTreeMap<String, NodeId> {
        &mut self.t.nodes[d as usize].children
    }

    /// Resolve the directory `comps` lead to, inside the root. `make`: create what is missing
    /// (`Make::Entry`: an entry goes there, so every directory on the way holds something of this
    /// layer; `Make::Marker`: a whiteout or opaque marker, which writes nothing).
    fn resolve_dir(&mut self, comps: &[&'t str], make: Make) -> Result<Resolved, Fail> {
        let (make, mark) = (make != Make::No, make == Make::Entry);
        // (directory, byte length of its resolved path)
        let mut stack: Vec<(NodeId, usize)> = vec![(ROOT, 0)];
        // the names still to walk, last first: the entry's path, then symlink targets (all the TOC's)
        let mut todo: Vec<&'t str> = comps.iter().rev().copied().collect();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c.is_empty() || c == "." {
                continue;
            }
            if c == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            if c.len() > limits::NAME || c.contains('\0') {
                return Err((Class::Unsafe, format!("a symlink on the way leads to a name of {} bytes", c.len())));
            }
            let (cur, len) = *stack.last().unwrap();
            let next = match self.t.nodes[cur as usize].children.get(c) {
                Some(&n) => n,
                None if make => {
                    let n = self.new_node(NodeKind::Dir, None);
                    self.kids(cur).insert(c.to_string(), n);
                    n
                }
                None => return Ok(Resolved::Missing),
            };
            match self.t.nodes[next as usize].kind {
                NodeKind::Dir => {
                    let l = if len == 0 { c.len() } else { len + 1 + c.len() };
                    if l > limits::PATH {
                        return Err((Class::Unsafe, format!("its resolved path is longer than {} bytes", limits::PATH)));
                    }
                    stack.push((next, l));
                }
                NodeKind::Symlink => {
                    links += 1;
                    if links > limits::SYMLINKS {
                        return Err((Class::Unsafe, "too many levels of symbolic links".into()));
                    }
                    let toc: &'t Toc = self.toc;
                    let target = self.t.entry(toc, next).and_then(|e| e.link.as_deref()).unwrap_or("");
                    if target.starts_with('/') {
                        stack.truncate(1);
                    }
                    todo.extend(target.split('/').rev());
                }
                _ => return Err((Class::Corrupt, format!("{c:?} on the way is not a directory"))),
            }
        }
        if mark {
            for &(d, _) in &stack {
                self.stamp[d as usize] = self.layer;
            }
        }
        Ok(Resolved::Dir(stack.last().unwrap().0))
    }

    /// The directory an entry at `path` goes in (`parents`: its components before the name),
    /// made where missing and stamped with this layer ([`Builder::resolve_dir`] with
    /// `Make::Entry`).
    fn entry_dir(&mut self, path: &'t str, parents: &[&'t str]) -> Result<NodeId, Fail> {
        let parent = &path[..path.rfind('/').unwrap_or(0)];
        if let Some((p, d)) = self.parent {
            if p == parent {
                return Ok(d);
            }
        }
        let Resolved::Dir(d) = self.resolve_dir(parents, Make::Entry)? else { unreachable!("directories are made") };
        if self.cache {
            self.parent = Some((parent, d));
        }
        Ok(d)
    }

    fn unlink(&mut self, dir: NodeId, name: &str) {
        if let Some(old) = self.kids(dir).remove(name) {
            self.parent = None;
            self.detach(old);
        }
    }

    /// A node lost a name: it loses a link, and so does everything below it, removed with it (a
    /// file of a removed directory may keep a name elsewhere).
    fn detach(&mut self, id: NodeId) {
        let mut todo = vec![id];
        while let Some(id) = todo.pop() {
            let n = &mut self.t.nodes[id as usize];
            n.nlink = n.nlink.saturating_sub(1);
            if n.kind == NodeKind::Dir {
                todo.extend(std::mem::take(&mut n.children).into_values());
            }
        }
    }

    /// Did the layer being applied write `name` in `dir` (or, a directory, something below it)?
    fn is_upper(&self, dir: NodeId, name: &str, node: NodeId) -> bool {
        // a node this layer made has only names this layer gave it
        if self.stamp[node as usize] == self.layer {
            return true;
        }
        let links: &HashSet<(NodeId, &str)> = &self.links;
        !links.is_empty() && links.contains(&(dir, name))
    }

    /// A whiteout of `name` in `dir`: removes it, unless this layer wrote it (then only what the
    /// layers below left inside it goes).
    fn white_out(&mut self, dir: NodeId, name: &str) {
        let Some(&c) = self.t.nodes[dir as usize].children.get(name) else { return };
        if !self.is_upper(dir, name, c) {
            self.unlink(dir, name);
        } else if self.t.nodes[c as usize].kind == NodeKind::Dir {
            self.make_opaque(c);
        }
    }

    /// An opaque directory: everything the layers below left in it goes, what this layer wrote
    /// stays (and directories it wrote into are emptied of the rest the same way).
    fn make_opaque(&mut self, d: NodeId) {
        self.parent = None;
        let mut todo = vec![d];
        while let Some(d) = todo.pop() {
            let kids = std::mem::take(&mut self.t.nodes[d as usize].children);
            let mut kept = BTreeMap::new();
            for (name, c) in kids {
                if !self.is_upper(d, &name, c) {
                    self.detach(c);
                    continue;
                }
                if self.t.nodes[c as usize].kind == NodeKind::Dir {
                    todo.push(c);
                }
                kept.insert(name, c);
            }
            self.t.nodes[d as usize].children = kept;
        }
    }

    fn apply(&mut self, e: &'t Entry, at: (u32, u32)) -> Result<(), Fail> {
        if e.path == "." {
            return match e.kind {
                // containerd's applier skips an entry that resolves to the root: the root keeps
                // what the snapshot's directory has (here 0755, 0:0, mtime 0, no xattrs)
                Kind::Dir => Ok(()),
                Kind::Opaque => {
                    self.make_opaque(ROOT);
                    Ok(())
                }
                k => Err((Class::Unsafe, format!("the root can only be a directory (not {})", k.name()))),
            };
        }
        let comps: Vec<&str> = e.path.split('/').collect();
        let (name, parents) = comps.split_last().unwrap();
        match e.kind {
            // a marker's missing parents are made, as containerd makes every header's parents
            Kind::Whiteout => {
                if let Resolved::Dir(d) = self.resolve_dir(parents, Make::Marker)? {
                    self.white_out(d, name);
                }
                Ok(())
            }
            Kind::Opaque => {
                if let Resolved::Dir(d) = self.resolve_dir(&comps, Make::Marker)? {
                    self.make_opaque(d);
                }
                Ok(())
            }
            Kind::Hardlink => {
                let link = e.link.as_deref().unwrap_or("");
                let lcomps: Vec<&str> = link.split('/').collect();
                let (lname, lparents) = lcomps.split_last().unwrap();
                let target = match self.resolve_dir(lparents, Make::No)? {
                    Resolved::Dir(d) => self.t.nodes[d as usize].children.get(*lname).copied(),
                    Resolved::Missing => None,
                };
                let Some(target) = target else {
                    return Err((Class::Corrupt, format!("hardlink target {link:?} does not exist")));
                };
                if self.t.nodes[target as usize].kind == NodeKind::Dir {
                    return Err((Class::Unsafe, format!("hardlink target {link:?} is a directory")));
                }
                let dir = self.entry_dir(&e.path, parents)?;
                self.links.insert((dir, name));
                if e.mode.is_some() {
                    // the link's metadata goes to the inode, as containerd applies a link header's
                    let kind = self.t.nodes[target as usize].kind;
                    let mut m = self.t.node(target).meta.as_deref().cloned().unwrap_or_else(|| Meta::of(kind, self.t.entry(self.toc, target)));
                    (m.uid, m.gid, m.mtime) = (e.uid.unwrap_or(0), e.gid.unwrap_or(0), e.mtime.unwrap_or(0));
                    if kind != NodeKind::Symlink {
                        m.mode = e.mode.unwrap_or(0);
                    }
                    m.xattrs = merge_xattrs(&m.xattrs, e.xattrs.as_deref().unwrap_or_default());
                    self.t.nodes[target as usize].meta = Some(Box::new(m));
                }
                if self.t.nodes[dir as usize].children.get(*name) == Some(&target) {
                    return Ok(());
                }
                self.unlink(dir, name);
                self.t.nodes[target as usize].nlink += 1;
                self.kids(dir).insert(name.to_string(), target);
                Ok(())
            }
            k => {
                let kind = node_kind(k).unwrap();
                let dir = self.entry_dir(&e.path, parents)?;
                let old = self.t.nodes[dir as usize].children.get(*name).copied();
                if kind == NodeKind::Dir {
                    if let Some(o) = old.filter(|&o| self.t.nodes[o as usize].kind == NodeKind::Dir) {
                        // the new metadata, but the xattrs the new entry does not name stay (as
                        // containerd sets a directory entry's xattrs on the directory there)
                        let below = self
                            .t
                            .node(o)
                            .meta
                            .as_deref()
                            .map_or_else(|| self.t.entry(self.toc, o).and_then(|e| e.xattrs.clone()).unwrap_or_default(), |m| m.xattrs.clone());
                        let own = e.xattrs.as_deref().unwrap_or_default();
                        let merged = merge_xattrs(&below, own);
                        let n = &mut self.t.nodes[o as usize];
                        n.entry = Some(at);
                        n.meta = (merged.len() != own.len()).then(|| Box::new(Meta { xattrs: merged, ..Meta::of(NodeKind::Dir, Some(e)) }));
                        self.stamp[o as usize] = self.layer;
                        return Ok(());
                    }
                }
                self.unlink(dir, name);
                let n = self.new_node(kind, Some(at));
                self.kids(dir).insert(name.to_string(), n);
                Ok(())
            }
        }
    }
}
