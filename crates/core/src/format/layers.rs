//! The per-layer view: each layer as an overlayfs layer directory, so that overlayfs stacking them
//! (the last layer the uppermost `lowerdir`) shows exactly the merged tree of [`super::tree`].
//!
//! A layer's directory is the difference between the merged tree below it and the merged tree with
//! it, written as overlayfs reads a layer (not as the layer's tar said it: paths are the resolved
//! ones, so a write through a symlinked parent lands where the merged tree has it):
//!
//! - a name the layer removed is a whiteout: a character device 0/0, mode 0, owner 0:0;
//! - a directory that replaces another one carries `trusted.overlay.opaque` = `y` and holds its
//!   whole subtree;
//! - a file, symlink or device that is new at its name or whose inode changed (metadata, link
//!   count) is there with every name it has: overlayfs cannot link across layers, so a hardlink
//!   group touched by the layer is there whole (its other names shadow the lower copies);
//! - a directory is there when it is new, its metadata changed, or something below it is there,
//!   always with its metadata as of this layer (overlayfs shows the uppermost one's);
//! - the root of each layer directory is the merged root (0755, 0:0, mtime 0).
//!
//! Inode numbers: 1 is a directory holding the layer directories, named `0`, `1`, ... in layer
//! order; the inodes of layer directories follow. A regular file's content is that of its node of
//! the merged tree (`InodeOut::node`).

use super::toc::Toc;
use super::tree::{InodeOut, NodeId, NodeKind, Tree, TreeOut, ROOT};
use super::Report;
use std::collections::{HashMap, HashSet};

/// The overlayfs xattr that makes a directory opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Every layer as an overlayfs layer directory under one root (see the module doc). `Err`: the
/// violations of the TOC, as [`Tree::build`] reports them.
pub fn layer_views(toc: &Toc) -> Result<TreeOut, Report> {
    let mut r = Report::default();
    let mut below = Tree::empty();
    let mut inodes: Vec<InodeOut> = Vec::new();
    let mut tops: Vec<(String, u64)> = Vec::new();
    // the root holding the layer directories comes first
    let mut next: u64 = 2;
    let mut layers_out: Vec<Vec<InodeOut>> = Vec::new();
    Tree::build_each(toc, &mut r, |li, now| {
        let out = diff(toc, &below, now, &mut next);
        tops.push((li.to_string(), out[0].ino));
        layers_out.push(out);
        below = now.clone();
    });
    if !r.is_empty() {
        return Err(r);
    }
    let subdirs = tops.len() as u32;
    let mut root = below.inode_out(toc, ROOT, 1);
    root.nlink = 2 + subdirs;
    root.children = tops;
    inodes.push(root);
    for l in layers_out {
        inodes.extend(l);
    }
    Ok(TreeOut { inodes })
}

/// The layer that turned `a` into `b`, as inodes numbered from `*next` (its root first).
fn diff(toc: &Toc, a: &Tree, b: &Tree, next: &mut u64) -> Vec<InodeOut> {
    struct Name {
        parent: NodeId,
        name: String,
        id: NodeId,
    }
    let is_dir = |t: &Tree, id: NodeId| t.node(id).kind == NodeKind::Dir;
    let known = |id: NodeId| (id as usize) < a.nodes.len();
    let same_meta = |id: NodeId| known(id) && a.node(id).entry == b.node(id).entry && a.node(id).meta == b.node(id).meta;
    // per directory of b: the same directory in a (None: new, or replacing what a had)
    let mut in_a: HashMap<NodeId, Option<NodeId>> = HashMap::from([(ROOT, Some(ROOT))]);
    let mut parent_of: HashMap<NodeId, NodeId> = HashMap::new();
    let mut names: Vec<Name> = Vec::new();
    let mut touched: HashSet<NodeId> = HashSet::new();
    let mut needed: HashSet<NodeId> = HashSet::new();
    let mut whiteouts: HashMap<NodeId, Vec<String>> = HashMap::new();
    let mut opaque: HashSet<NodeId> = HashSet::new();
    b.walk(|_, parent, name, id, _| {
        let here = in_a.get(&parent).copied().flatten().and_then(|ap| a.node(ap).children.get(name).copied());
        if is_dir(b, id) {
            parent_of.insert(id, parent);
            let same = here == Some(id);
            in_a.insert(id, same.then_some(id));
            if !same {
                needed.insert(id);
                if here.is_some_and(|h| is_dir(a, h)) {
                    opaque.insert(id);
                }
            } else if !same_meta(id) {
                needed.insert(id);
            }
        } else if here != Some(id) || !same_meta(id) || a.node(id).nlink != b.node(id).nlink {
            touched.insert(id);
        }
        names.push(Name { parent, name: name.to_string(), id });
    });
    // names a directory of both lost (directories in walk order: whiteouts are numbered in order)
    let dirs = std::iter::once(ROOT).chain(names.iter().filter(|n| is_dir(b, n.id)).map(|n| n.id));
    let mut wh_order: Vec<NodeId> = Vec::new();
    for d in dirs {
        let Some(ad) = in_a.get(&d).copied().flatten() else { continue };
        let gone: Vec<String> = a.node(ad).children.keys().filter(|n| !b.node(d).children.contains_key(*n)).cloned().collect();
        if !gone.is_empty() {
            needed.insert(d);
            whiteouts.insert(d, gone);
            wh_order.push(d);
        }
    }
    // every name of a touched inode, and the directories on the way to anything there
    let mut kept: Vec<&Name> = Vec::new();
    for n in &names {
        if touched.contains(&n.id) || (is_dir(b, n.id) && needed.contains(&n.id)) {
            kept.push(n);
        }
    }
    let mut up: Vec<NodeId> = kept.iter().map(|n| n.parent).chain(needed.iter().copied()).collect();
    while let Some(d) = up.pop() {
        if d == ROOT {
            continue;
        }
        if let Some(&p) = parent_of.get(&d) {
            if needed.insert(d) || !needed.contains(&p) {
                up.push(p);
            }
        }
    }
    // numbering: the layer root, then kept inodes in walk order (hardlinks once), whiteouts last
    let mut ino: HashMap<NodeId, u64> = HashMap::new();
    let root_ino = *next;
    *next += 1;
    ino.insert(ROOT, root_ino);
    let shown: Vec<&Name> = names.iter().filter(|n| if is_dir(b, n.id) { needed.contains(&n.id) } else { touched.contains(&n.id) }).collect();
    for n in &shown {
        ino.entry(n.id).or_insert_with(|| {
            *next += 1;
            *next - 1
        });
    }
    let mut children: HashMap<NodeId, Vec<(String, u64)>> = HashMap::new();
    for n in &shown {
        children.entry(n.parent).or_default().push((n.name.clone(), ino[&n.id]));
    }
    let mut wh_inodes: Vec<InodeOut> = Vec::new();
    for d in wh_order {
        for name in &whiteouts[&d] {
            let w = *next;
            *next += 1;
            children.entry(d).or_default().push((name.clone(), w));
            wh_inodes.push(whiteout(w));
        }
    }
    let dir_inos: HashSet<u64> = shown.iter().filter(|n| is_dir(b, n.id)).map(|n| ino[&n.id]).collect();
    let mut out = Vec::with_capacity(ino.len() + wh_inodes.len());
    let mut emit = |id: NodeId, this: u64| {
        let mut i = b.inode_out(toc, id, this);
        let mut kids = children.remove(&id).unwrap_or_default();
        kids.sort_by(|x, y| x.0.as_bytes().cmp(y.0.as_bytes()));
        if is_dir(b, id) {
            i.nlink = 2 + kids.iter().filter(|(_, k)| dir_inos.contains(k)).count() as u32;
        }
        i.children = kids;
        if opaque.contains(&id) {
            i.xattrs.push((OPAQUE_XATTR.to_string(), b"y".to_vec()));
            i.xattrs.sort_by(|x, y| x.0.as_bytes().cmp(y.0.as_bytes()));
        }
        out.push(i);
    };
    emit(ROOT, root_ino);
    let mut done: HashSet<NodeId> = HashSet::from([ROOT]);
    for n in &shown {
        if done.insert(n.id) {
            emit(n.id, ino[&n.id]);
        }
    }
    out.extend(wh_inodes);
    out
}

fn whiteout(ino: u64) -> InodeOut {
    InodeOut {
        ino,
        node: None,
        kind: "char",
        mode: 0,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 0,
        nlink: 1,
        link: None,
        dev_major: Some(0),
        dev_minor: Some(0),
        rdev: 0,
        xattrs: Vec::new(),
        chunks: Vec::new(),
        children: Vec::new(),
    }
}
