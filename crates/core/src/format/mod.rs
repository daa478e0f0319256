//! The ocichunk format's reader side (docs/format.md): the TOC model with named fields, its strict
//! decoding under stated limits, its validation (schema, ranges, path rules, tree rules) and the
//! merged tree that every reader builds from it. Every command that reads a chunked image runs
//! [`check_toc`] before anything else; `restore` writes the [`tree::Tree`] it returns.

pub mod build;
pub mod canonical;
pub mod dict;
pub mod digests;
pub mod file;
pub mod layers;
pub mod pack;
pub mod sequence;
pub mod toc;
pub mod tree;

pub use dict::ChunkDict;
pub use digests::DigestTable;
pub use file::{FileMap, Piece};
pub use toc::{decode, Chunk, Entry, Frame, Kind, Toc};
pub use tree::Tree;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Limits a reader enforces whatever a TOC says (docs/format.md §8). They bound the memory of every
/// command; a TOC beyond them is refused with a clear error.
pub mod limits {
    /// Uncompressed TOC JSON.
    pub const TOC_JSON: usize = 128 << 20;
    /// Entries, all layers together.
    pub const ENTRIES: usize = 1 << 20;
    /// Rows of the chunk table (and of the frame table).
    pub const CHUNKS: usize = 1 << 20;
    pub const PACKS: usize = 1 << 16;
    pub const LAYERS: usize = 1 << 12;
    /// Uncompressed bytes of one chunk and of one frame: a reader holds one frame at a time.
    pub const CHUNK: u64 = 64 << 20;
    pub const FRAME: u64 = 64 << 20;
    /// One zstd dictionary (uncompressed), and the dictionaries of one TOC.
    pub const DICT: u64 = 1 << 20;
    pub const DICTS: usize = 1 << 12;
    /// A path (also once its parents are resolved through symlinks) and one of its components.
    pub const PATH: usize = 4095;
    pub const NAME: usize = 255;
    /// A symlink or hardlink target.
    pub const LINK: usize = 4095;
    /// Extended attributes of one entry: names (Linux XATTR_NAME_MAX) and each value (XATTR_SIZE_MAX).
    pub const XATTR_NAME: usize = 255;
    pub const XATTR_VALUE: usize = 64 << 10;
    pub const XATTRS_PER_ENTRY: usize = 1024;
    /// Symlinks followed while resolving one path (Linux MAXSYMLINKS).
    pub const SYMLINKS: usize = 40;
    /// Chunks of one file: 2^53 bytes at most (a JavaScript number) is implied by this and CHUNK.
    pub const FILE_SIZE: u64 = (1 << 53) - 1;
    /// |mtime| in seconds (year 9999).
    pub const MTIME: i64 = 253_402_300_799;
    /// Prefetch ranges.
    pub const PREFETCH: usize = 1 << 20;
    /// Violations reported before the rest are only counted.
    pub const VIOLATIONS: usize = 1000;
}

/// What kind of rule a violation breaks; maps to the CLI's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Malformed: bad JSON, wrong types, numbers out of range, dangling indices (ECORRUPT).
    Corrupt,
    /// Hostile or unsafe: paths escaping the root, links to directories, the root replaced (EUNSAFE).
    Unsafe,
    /// A TOC version or chunker this reader does not know (EUNSUPPORTED).
    Unsupported,
}

impl Class {
    /// The error code a violation of this class gives ([`crate::Code`]).
    pub fn error_code(self) -> crate::Code {
        match self {
            Class::Corrupt => crate::Code::Corrupt,
            Class::Unsafe => crate::Code::Unsafe,
            Class::Unsupported => crate::Code::Unsupported,
        }
    }

    /// The code as a string ("ECORRUPT").
    pub fn code(self) -> &'static str {
        self.error_code().as_str()
    }
}

/// One broken rule, naming where (layer and entry path) when it concerns an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub class: Class,
    pub layer: Option<u32>,
    pub path: Option<String>,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.layer, &self.path) {
            // {:?} escapes control characters: names come from the image
            (Some(l), Some(p)) => write!(f, "layer {l} entry {p:?}: {}", self.message),
            (Some(l), None) => write!(f, "layer {l}: {}", self.message),
            (None, Some(p)) => write!(f, "{p:?}: {}", self.message),
            (None, None) => write!(f, "{}", self.message),
        }
    }
}

/// Collects violations up to [`limits::VIOLATIONS`], counting the rest.
#[derive(Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub more: usize,
}

impl Report {
    pub fn push(&mut self, class: Class, layer: Option<u32>, path: Option<&str>, message: String) {
        if self.violations.len() < limits::VIOLATIONS {
            self.violations.push(Violation { class, layer, path: path.map(shorten), message });
        } else {
            self.more += 1;
        }
    }
    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Decode a TOC blob (one zstd frame of JSON) under the limits, validate every rule and build the
/// merged tree. `Err` holds every violation found (a malformed document stops at the first); on
/// `Ok` the TOC and its tree are safe for any reader.
pub fn check_toc(blob: &[u8]) -> Result<(Toc, Tree, Vec<u8>), Report> {
    let json = match crate::frame::decompress_bytes(blob, limits::TOC_JSON) {
        Ok(j) => j,
        Err(e) => {
            let mut r = Report::default();
            r.push(Class::Corrupt, None, None, format!("TOC: {e}"));
            return Err(r);
        }
    };
    let toc = toc::decode(&json)?;
    let mut report = Report::default();
    toc.validate(&mut report);
    if !report.is_empty() {
        return Err(report);
    }
    let tree = Tree::build(&toc, &mut report);
    if !report.is_empty() {
        return Err(report);
    }
    Ok((toc, tree, json))
}

/// A TOC that broke no rule, with its merged tree: what every reader opens once (restore, ls and
/// cat, the mount) and asks where a file's bytes are.
pub struct Checked {
    pub toc: Toc,
    pub tree: Tree,
    /// the TOC's JSON, as stored, until a reader takes it ([`Checked::take_json`])
    json: Mutex<Option<Vec<u8>>>,
    files: Mutex<HashMap<tree::NodeId, Arc<FileMap>>>,
    /// the TOC's dictionaries, as readers load them
    dicts: Vec<std::sync::OnceLock<Arc<crate::frame::Dictionary>>>,
}

impl fmt::Debug for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checked").field("layers", &self.toc.layers.len()).field("nodes", &self.tree.nodes.len()).finish()
    }
}

impl Checked {
    /// [`check_toc`], kept together.
    pub fn open(blob: &[u8]) -> Result<Checked, Report> {
        let (toc, tree, json) = check_toc(blob)?;
        let dicts = (0..toc.dicts.len()).map(|_| std::sync::OnceLock::new()).collect();
        Ok(Checked { toc, tree, json: Mutex::new(Some(json)), files: Mutex::new(HashMap::new()), dicts })
    }

    /// Dictionary `i` of the TOC, decompressed from its frame by the reader (its length checked;
    /// its content is not: a wrong one makes chunks that fail their digests). Loaded once.
    pub fn set_dict(&self, i: u32, raw: Vec<u8>) -> crate::Result<()> {
        let d = self.toc.dicts.get(i as usize).ok_or_else(|| crate::Error::invalid(format!("the TOC has no dictionary {i}")))?;
        if raw.len() as u64 != d.len {
            return Err(crate::Error::corrupt(format!("dictionary {i} holds {} bytes, the TOC says {}", raw.len(), d.len)));
        }
        let _ = self.dicts[i as usize].set(Arc::new(crate::frame::Dictionary::for_reading(raw)));
        Ok(())
    }

    /// Dictionary `i`, if loaded.
    pub fn dict(&self, i: u32) -> Option<Arc<crate::frame::Dictionary>> {
        self.dicts.get(i as usize)?.get().cloned()
    }

    /// The dictionary TOC frame `f` needs: Ok(None) for a frame without one, an error if it is
    /// not loaded.
    pub fn frame_dict(&self, f: u32) -> crate::Result<Option<Arc<crate::frame::Dictionary>>> {
        match self.toc.frames.get(f as usize).and_then(|fr| fr.dict) {
            None => Ok(None),
            Some(d) => self.dict(d).map(Some).ok_or_else(|| crate::Error::invalid(format!("dictionary {d} of frame {f} is not loaded"))),
        }
    }

    /// The TOC's JSON, as stored, handed over once (a reader that decodes it keeps its own model;
    /// the checked TOC needs it no more): None after the first call.
    pub fn take_json(&self) -> Option<Vec<u8>> {
        self.json.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The chunk map of the regular file with inode number `ino` of the merged view (node id + 1);
    /// None for any other inode. Made on first use, then kept.
    pub fn file(&self, ino: u64) -> Option<Arc<FileMap>> {
        self.file_of(tree::NodeId::try_from(ino.checked_sub(1)?).ok()?)
    }

    /// The node at `path` of the merged tree (leading '/' allowed; symlinks on the way are not
    /// followed, `..` is refused): what a read trace names.
    pub fn lookup(&self, path: &str) -> Option<tree::NodeId> {
        let mut id = tree::ROOT;
        for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if c == ".." {
                return None;
            }
            let n = self.tree.nodes.get(id as usize)?;
            if n.kind != tree::NodeKind::Dir {
                return None;
            }
            id = *n.children.get(c)?;
        }
        Some(id)
    }

    /// The TOC chunks reads `(path, offset, length)` of the merged tree need, in the order read,
    /// each once (a prefetch list's plan); paths that are not regular files are passed over.
    pub fn plan_reads<'a>(&self, reads: impl IntoIterator<Item = (&'a str, u64, u64)>) -> Vec<u32> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (path, offset, length) in reads {
            let Some(f) = self.lookup(path).and_then(|id| self.file_of(id)) else { continue };
            for pos in f.span(offset, length) {
                if seen.insert(f.chunks[pos]) {
                    out.push(f.chunks[pos]);
                }
            }
        }
        out
    }

    /// The chunk map of the merged tree's regular file `id`; None for any other node.
    pub fn file_of(&self, id: tree::NodeId) -> Option<Arc<FileMap>> {
        if self.tree.nodes.get(id as usize)?.kind != tree::NodeKind::Reg {
            return None;
        }
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = files.get(&id) {
            return Some(m.clone());
        }
        let chunks = self.tree.entry(&self.toc, id).and_then(|e| e.chunks.clone()).unwrap_or_default();
        // checked: every index exists and the lengths add up to the size
        let m = Arc::new(FileMap::new(chunks, |c| self.toc.chunks.get(c as usize).map(|c| c.len))?);
        files.insert(id, m.clone());
        Some(m)
    }
}

/// A path as errors show it: at most 200 bytes (its start and end), whatever the image holds.
fn shorten(p: &str) -> String {
    if p.len() <= 200 {
        return p.to_string();
    }
    let mut a = 120;
    while !p.is_char_boundary(a) {
        a -= 1;
    }
    let mut b = p.len() - 60;
    while !p.is_char_boundary(b) {
        b += 1;
    }
    format!("{}...({} bytes)...{}", &p[..a], p.len(), &p[b..])
}

#[cfg(test)]
mod tests;
