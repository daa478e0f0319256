//! The TOC model (docs/format.md §3) and its strict decoding: every field has one type (a mode given
//! as a string, a fractional uid or a `null` is refused, not coerced), duplicate keys are refused
//! (so no two readers can see different values), and tables are counted while they are read, so a
//! TOC cannot make a reader allocate more than the limits allow.

use super::digests::{self, DigestTable, TableRef};
use super::{limits, Class, Report};
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Reg,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
    Whiteout,
    Opaque,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Reg => "reg",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Hardlink => "hardlink",
            Kind::Char => "char",
            Kind::Block => "block",
            Kind::Fifo => "fifo",
            Kind::Whiteout => "whiteout",
            Kind::Opaque => "opaque",
        }
    }
    /// Kinds that carry mode, owner, mtime and xattrs.
    pub fn has_meta(self) -> bool {
        !matches!(self, Kind::Hardlink | Kind::Whiteout | Kind::Opaque)
    }
}

/// A SHA-256 digest, given as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hex32(pub [u8; 32]);

impl<'de> Deserialize<'de> for Hex32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Hex32;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("64 lowercase hex digits")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Hex32, E> {
                parse_hex32(s).ok_or_else(|| E::invalid_value(de::Unexpected::Str(s), &self))
            }
        }
        d.deserialize_str(V)
    }
}

pub fn parse_hex32(s: &str) -> Option<Hex32> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let h = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = h(pair[0])? << 4 | h(pair[1])?;
    }
    Some(Hex32(out))
}

impl fmt::Display for Hex32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One zstd frame of a pack; in the JSON a row `[pack, offset, compressedLength, length]`, and a
/// fifth element, the index into `dicts`, when it was compressed with a dictionary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// index into `packs`
    pub pack: u32,
    /// where the frame starts in the pack blob
    pub offset: u64,
    pub compressed_len: u64,
    /// bytes the frame decompresses to
    pub len: u64,
    /// index into `dicts`
    pub dict: Option<u32>,
}

impl<'de> Deserialize<'de> for Frame {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Frame;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a frame row [pack, offset, compressedLength, length] or [pack, offset, compressedLength, length, dict]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Frame, A::Error> {
                let short = || de::Error::custom("frame row is too short");
                let pack = seq.next_element::<u32>()?.ok_or_else(short)?;
                let offset = seq.next_element::<u64>()?.ok_or_else(short)?;
                let compressed_len = seq.next_element::<u64>()?.ok_or_else(short)?;
                let len = seq.next_element::<u64>()?.ok_or_else(short)?;
                let dict = seq.next_element::<u32>()?;
                if dict.is_some() && seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("frame row is too long"));
                }
                Ok(Frame { pack, offset, compressed_len, len, dict })
            }
        }
        d.deserialize_seq(V)
    }
}

/// A zstd dictionary (docs/format.md §5): a zstd frame of it in a pack; in the JSON a row
/// `[pack, offset, compressedLength, length]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(from = "(u32, u64, u64, u64)")]
pub struct Dict {
    pub pack: u32,
    pub offset: u64,
    pub compressed_len: u64,
    pub len: u64,
}

impl From<(u32, u64, u64, u64)> for Dict {
    fn from((pack, offset, compressed_len, len): (u32, u64, u64, u64)) -> Self {
        Dict { pack, offset, compressed_len, len }
    }
}

/// One chunk of file content; in the JSON a row `[frame, offsetInFrame, length]` (version 2) or
/// `[sha256 hex, frame, offsetInFrame, length]` (version 1). Its digest is in [`Toc::digests`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// index into `frames`
    pub frame: u32,
    /// where the chunk starts in the frame's uncompressed bytes
    pub offset: u64,
    pub len: u64,
}

/// A row of `chunks` as written: with its digest in version 1.
struct ChunkRow {
    digest: Option<Hex32>,
    chunk: Chunk,
}

impl<'de> Deserialize<'de> for ChunkRow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The first element: a hex digest (version 1) or the frame index (version 2).
        enum First {
            Hex(Hex32),
            Frame(u32),
        }
        impl<'de> Deserialize<'de> for First {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = First;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a frame index or 64 lowercase hex digits")
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<First, E> {
                        parse_hex32(s).map(First::Hex).ok_or_else(|| E::invalid_value(de::Unexpected::Str(s), &self))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<First, E> {
                        u32::try_from(v).map(First::Frame).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
                    }
                }
                d.deserialize_any(V)
            }
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ChunkRow;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a chunk row [frame, offset, length] or [sha256 hex, frame, offset, length]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ChunkRow, A::Error> {
                let short = || de::Error::custom("chunk row is too short");
                let (digest, frame) = match seq.next_element::<First>()?.ok_or_else(short)? {
                    First::Hex(h) => (Some(h), seq.next_element::<u32>()?.ok_or_else(short)?),
                    First::Frame(f) => (None, f),
                };
                let offset = seq.next_element::<u64>()?.ok_or_else(short)?;
                let len = seq.next_element::<u64>()?.ok_or_else(short)?;
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("chunk row is too long"));
                }
                Ok(ChunkRow { digest, chunk: Chunk { frame, offset, len } })
            }
        }
        d.deserialize_seq(V)
    }
}

/// `digests` of a version 2 TOC: `{"blob": "sha256:<hex>", "section": n, "sections": "<base64>"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDigests {
    blob: String,
    section: u32,
    sections: String,
}

/// Extended attributes: (name, value), in document order.
pub type Xattrs = Vec<(String, Vec<u8>)>;
/// `[path, offset, length]` of the prefetch list.
pub type PrefetchRange = (String, u64, u64);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(default, deserialize_with = "some")]
    pub mode: Option<u32>,
    #[serde(default, deserialize_with = "some")]
    pub uid: Option<u32>,
    #[serde(default, deserialize_with = "some")]
    pub gid: Option<u32>,
    #[serde(default, deserialize_with = "some")]
    pub size: Option<u64>,
    #[serde(default, deserialize_with = "some")]
    pub mtime: Option<i64>,
    #[serde(default, deserialize_with = "some")]
    pub link: Option<String>,
    #[serde(default, deserialize_with = "some")]
    pub dev_major: Option<u32>,
    #[serde(default, deserialize_with = "some")]
    pub dev_minor: Option<u32>,
    /// (name, value) in document order; values base64-decoded
    #[serde(default, deserialize_with = "xattrs")]
    pub xattrs: Option<Xattrs>,
    #[serde(default, deserialize_with = "some")]
    pub chunks: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize)]
pub struct Layer {
    #[serde(deserialize_with = "entries")]
    pub entries: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
pub struct Chunker {
    pub kind: String,
}

/// The TOC as written, before its chunk digests are sorted out of the rows.
#[derive(Deserialize)]
struct Wire {
    version: u64,
    chunker: Chunker,
    #[serde(deserialize_with = "packs")]
    packs: Vec<String>,
    #[serde(default, deserialize_with = "dicts")]
    dicts: Option<Vec<Dict>>,
    #[serde(deserialize_with = "frames")]
    frames: Vec<Frame>,
    #[serde(deserialize_with = "chunks")]
    chunks: Vec<ChunkRow>,
    #[serde(default, deserialize_with = "some")]
    digests: Option<WireDigests>,
    #[serde(deserialize_with = "layers")]
    layers: Vec<Layer>,
    #[serde(default, deserialize_with = "prefetch")]
    prefetch: Option<Vec<PrefetchRange>>,
}

#[derive(Debug)]
pub struct Toc {
    pub version: u64,
    pub chunker: Chunker,
    pub packs: Vec<String>,
    /// zstd dictionaries frames are compressed with (version 2; empty: none)
    pub dicts: Vec<Dict>,
    pub frames: Vec<Frame>,
    pub chunks: Vec<Chunk>,
    /// the chunks' SHA-256 digests: from the rows (version 1) or a digest table (version 2)
    pub digests: DigestTable,
    pub layers: Vec<Layer>,
    pub prefetch: Option<Vec<PrefetchRange>>,
}

impl Wire {
    /// The model, or what is wrong with the digests' shape for the TOC's version.
    fn into_toc(self, r: &mut Report) -> Option<Toc> {
        let n = self.chunks.len();
        let mut bad = |m: String| r.push(Class::Corrupt, None, None, m);
        let inline = self.chunks.iter().filter(|c| c.digest.is_some()).count();
        let digests = match (self.version, self.digests) {
            (1, _) if self.dicts.is_some() || self.frames.iter().any(|f| f.dict.is_some()) => {
                bad("a version 1 TOC has no dictionaries".into());
                return None;
            }
            (1, None) if inline == n => DigestTable::inline(self.chunks.iter().map(|c| c.digest.map(|h| h.0).unwrap_or_default()).collect()),
            (1, Some(_)) => {
                bad("a version 1 TOC has no digests field".into());
                return None;
            }
            (1, None) => {
                bad("version 1: every chunk row starts with its sha256 hex digest".into());
                return None;
            }
            (_, None) => {
                bad(format!("version {} TOC has no digests field", self.version));
                return None;
            }
            (_, Some(_)) if inline > 0 => {
                bad(format!("version {}: chunk rows are [frame, offset, length], without a digest", self.version));
                return None;
            }
            (_, Some(w)) => {
                if w.blob.strip_prefix("sha256:").is_none_or(|h| parse_hex32(h).is_none()) {
                    bad(format!("digests: blob {:?} is not a sha256 digest", w.blob));
                    return None;
                }
                if w.section == 0 || w.section > digests::SECTION_MAX {
                    bad(format!("digests: section of {} chunks is out of range (1 to {})", w.section, digests::SECTION_MAX));
                    return None;
                }
                let want = n.div_ceil(w.section as usize) * 32;
                let hashes = match base64_decode(&w.sections) {
                    Some(b) if b.len() == want => b.chunks_exact(32).map(|h| h.try_into().unwrap_or([0; 32])).collect(),
                    Some(b) => {
                        bad(format!("digests: sections hold {} bytes, {n} chunks in sections of {} need {want}", b.len(), w.section));
                        return None;
                    }
                    None => {
                        bad("digests: sections is not base64".into());
                        return None;
                    }
                };
                DigestTable::external(n, TableRef { blob: w.blob, section: w.section, hashes })
            }
        };
        Some(Toc {
            version: self.version,
            chunker: self.chunker,
            packs: self.packs,
            dicts: self.dicts.unwrap_or_default(),
            frames: self.frames,
            chunks: self.chunks.into_iter().map(|c| c.chunk).collect(),
            digests,
            layers: self.layers,
            prefetch: self.prefetch,
        })
    }
}

/// A present field must hold a value of its type: `null` is refused (JavaScript's `??` would read
/// it as absent, this reader would too, but a third might not).
fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

thread_local! {
    /// Entries still allowed in the TOC being decoded (all layers share the budget).
    static ENTRY_BUDGET: Cell<usize> = const { Cell::new(0) };
}

/// A sequence read element by element, refused once it holds more than `max` (or, for entries,
/// more than the TOC-wide budget): memory stays bounded by the limits, not by the document.
fn bounded<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D, max: usize, what: &'static str, shared: bool) -> Result<Vec<T>, D::Error> {
    struct V<T> {
        max: usize,
        what: &'static str,
        shared: bool,
        t: PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "an array of {}", self.what)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            loop {
                let over = if self.shared {
                    ENTRY_BUDGET.with(|b| {
                        let left = b.get();
                        b.set(left.saturating_sub(1));
                        left == 0
                    })
                } else {
                    out.len() >= self.max
                };
                match seq.next_element()? {
                    None => return Ok(out),
                    Some(_) if over => return Err(de::Error::custom(format!("more than {} {}", self.max, self.what))),
                    Some(x) => out.push(x),
                }
            }
        }
    }
    d.deserialize_seq(V { max, what, shared, t: PhantomData })
}

fn packs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    bounded(d, limits::PACKS, "packs", false)
}
fn dicts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Dict>>, D::Error> {
    bounded(d, limits::DICTS, "dictionaries", false).map(Some)
}
fn frames<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Frame>, D::Error> {
    bounded(d, limits::CHUNKS, "frames", false)
}
fn chunks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ChunkRow>, D::Error> {
    bounded(d, limits::CHUNKS, "chunks", false)
}
fn layers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Layer>, D::Error> {
    bounded(d, limits::LAYERS, "layers", false)
}
fn entries<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Entry>, D::Error> {
    bounded(d, limits::ENTRIES, "entries", true)
}
fn prefetch<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<PrefetchRange>>, D::Error> {
    bounded(d, limits::PREFETCH, "prefetch ranges", false).map(Some)
}

fn xattrs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Xattrs>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Xattrs;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of base64 xattr values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, Vec<u8>)> = Vec::new();
            while let Some(name) = m.next_key::<String>()? {
                if out.len() >= limits::XATTRS_PER_ENTRY {
                    return Err(de::Error::custom(format!("more than {} xattrs", limits::XATTRS_PER_ENTRY)));
                }
                let v: String = m.next_value()?;
                let bytes = base64_decode(&v).ok_or_else(|| de::Error::custom(format!("xattr {name:?}: value is not base64")))?;
                out.push((name, bytes));
            }
            Ok(out)
        }
    }
    d.deserialize_map(V).map(Some)
}

/// Standard base64 with padding, strict (what `Buffer.toString('base64')` writes).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, q) in b.chunks(4).enumerate() {
        let last = i == b.len() / 4 - 1;
        let pad = if last { q.iter().rev().take_while(|&&c| c == b'=').count() } else { 0 };
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = n << 6 | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // non-canonical padding bits would give two spellings of one value
        if pad > 0 && (n & ((1 << (8 * pad)) - 1)) != 0 {
            return None;
        }
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    version: Option<IgnoredAny>,
}

/// Parse TOC JSON strictly. A malformed document yields one violation naming the byte offset and,
/// where one precedes it, the entry being read.
pub fn decode(json: &[u8]) -> Result<Toc, Report> {
    let fail = |e: serde_json::Error, r: &mut Report| {
        let at = line_col_offset(json, e.line(), e.column());
        let path = entry_path_before(json, at);
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        r.push(Class::Corrupt, None, path.as_deref(), format!("invalid TOC at byte {at}: {msg}"));
    };
    let mut r = Report::default();
    // one pass for a TOC this reader reads
    ENTRY_BUDGET.with(|b| b.set(limits::ENTRIES));
    if let Ok(w) = from_slice_strict::<Wire>(json) {
        if VERSIONS.contains(&w.version) {
            return w.into_toc(&mut r).ok_or(r);
        }
    }
    // else say why, the version first: a later version may have another schema
    match serde_json::from_slice::<Head>(json) {
        Err(e) => {
            fail(e, &mut r);
            return Err(r);
        }
        Ok(Head { version: None }) => {
            r.push(Class::Corrupt, None, None, "invalid TOC: no version".into());
            return Err(r);
        }
        Ok(_) => {}
    }
    #[derive(Deserialize)]
    struct V {
        version: serde_json::Value,
    }
    if let Ok(V { version }) = serde_json::from_slice::<V>(json) {
        if !version.as_u64().is_some_and(|v| VERSIONS.contains(&v)) {
            r.push(Class::Unsupported, None, None, format!("TOC version {version} is not supported (this reader: 1 and {VERSION})"));
            return Err(r);
        }
    }
    ENTRY_BUDGET.with(|b| b.set(limits::ENTRIES));
    match from_slice_strict::<Wire>(json) {
        Ok(w) => w.into_toc(&mut r).ok_or(r),
        Err(e) => {
            fail(e, &mut r);
            Err(r)
        }
    }
}

/// The version this writer writes.
pub const VERSION: u64 = 2;
/// The versions this reader reads.
pub const VERSIONS: [u64; 2] = [1, 2];

fn from_slice_strict<T: DeserializeOwned>(json: &[u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let t = T::deserialize(&mut de)?;
    de.end()?;
    Ok(t)
}

fn line_col_offset(json: &[u8], line: usize, col: usize) -> usize {
    let mut l = 1;
    let mut start = 0;
    if line > 1 {
        for (i, &c) in json.iter().enumerate() {
            if c == b'\n' {
                l += 1;
                if l == line {
                    start = i + 1;
                    break;
                }
            }
        }
    }
    (start + col.saturating_sub(1)).min(json.len())
}

/// The `"path"` value of the entry open at `at`, if any (for error messages only).
fn entry_path_before(json: &[u8], at: usize) -> Option<String> {
    const KEY: &[u8] = b"\"path\":\"";
    let lo = at.saturating_sub(1 << 16);
    let hay = &json[lo..at.min(json.len())];
    let pos = hay.windows(KEY.len()).rposition(|w| w == KEY)?;
    let rest = &hay[pos + KEY.len() - 1..];
    // the JSON string literal, decoded by the parser itself
    let mut de = serde_json::Deserializer::from_slice(rest);
    String::deserialize(&mut de).ok()
}

impl Toc {
    pub fn entry_count(&self) -> usize {
        self.layers.iter().map(|l| l.entries.len()).sum()
    }

    /// Every rule a single pass over the tables can check (the tree rules are in `Tree::build`).
    pub fn validate(&self, r: &mut Report) {
        let mut seen = std::collections::HashSet::new();
        for p in &self.packs {
            let ok = p.strip_prefix("sha256:").and_then(parse_hex32).is_some();
            if !ok {
                r.push(Class::Corrupt, None, None, format!("pack {p:?} is not a sha256 digest"));
            } else if !seen.insert(p.as_str()) {
                r.push(Class::Corrupt, None, None, format!("pack {p} is listed twice"));
            }
        }
        let dbound = zstd::zstd_safe::compress_bound(limits::DICT as usize) as u64;
        for (i, &Dict { pack: p, offset: off, compressed_len: clen, len: ulen }) in self.dicts.iter().enumerate() {
            if p as usize >= self.packs.len() {
                r.push(Class::Corrupt, None, None, format!("dictionary {i}: pack {p} does not exist"));
            }
            if clen == 0 || clen > dbound || ulen == 0 || ulen > limits::DICT || off > limits::FILE_SIZE {
                r.push(
                    Class::Corrupt,
                    None,
                    None,
                    format!("dictionary {i}: offset {off}, {clen} compressed / {ulen} bytes is out of range (dictionaries hold 1 to {} bytes)", limits::DICT),
                );
            }
        }
        let cbound = zstd::zstd_safe::compress_bound(limits::FRAME as usize) as u64;
        for (i, &Frame { pack: p, offset: off, compressed_len: clen, len: ulen, dict }) in self.frames.iter().enumerate() {
            if p as usize >= self.packs.len() {
                r.push(Class::Corrupt, None, None, format!("frame {i}: pack {p} does not exist"));
            }
            if let Some(d) = dict.filter(|&d| d as usize >= self.dicts.len()) {
                r.push(Class::Corrupt, None, None, format!("frame {i}: dictionary {d} does not exist"));
            }
            if clen == 0 || clen > cbound || ulen > limits::FRAME || off > limits::FILE_SIZE {
                r.push(
                    Class::Corrupt,
                    None,
                    None,
                    format!("frame {i}: offset {off}, {clen} compressed / {ulen} bytes is out of range (frames hold at most {} bytes)", limits::FRAME),
                );
            }
        }
        if let Some(all) = self.digests.table_ref().is_none().then(|| self.digests.all()).flatten() {
            let mut seen = std::collections::HashSet::with_capacity(all.len());
            for (i, h) in all.iter().enumerate() {
                if !seen.insert(h) {
                    r.push(Class::Corrupt, None, None, format!("chunk {i}: sha256:{} is listed twice", Hex32(*h)));
                }
            }
        }
        for (i, &Chunk { frame: f, offset: off, len }) in self.chunks.iter().enumerate() {
            let Some(fr) = self.frames.get(f as usize) else {
                r.push(Class::Corrupt, None, None, format!("chunk {i}: frame {f} does not exist"));
                continue;
            };
            if len == 0 || len > limits::CHUNK || off.saturating_add(len) > fr.len {
                r.push(
                    Class::Corrupt,
                    None,
                    None,
                    format!("chunk {i}: [{off}, +{len}) does not fit frame {f} of {} bytes (chunks hold 1 to {} bytes)", fr.len, limits::CHUNK),
                );
            }
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let li = li as u32;
            let mut prev: Option<(Vec<u8>, u8)> = None;
            for e in &layer.entries {
                let path_ok = check_path(&e.path, true).map_err(|m| r.push(Class::Unsafe, Some(li), Some(&e.path), m)).is_ok();
                self.check_fields(e, li, r);
                if path_ok {
                    let key = (order_key(&e.path), rank(e.kind));
                    if let Some(p) = &prev {
                        if key <= *p {
                            let why = if key.0 == p.0 { "appears twice in its layer" } else { "is out of canonical order" };
                            r.push(Class::Corrupt, Some(li), Some(&e.path), format!("{} entry {why}", e.kind.name()));
                        }
                    }
                    prev = Some(key);
                }
            }
        }
        if let Some(pf) = &self.prefetch {
            for (i, (p, off, len)) in pf.iter().enumerate() {
                if p.len() > limits::PATH + 1 || p.contains('\0') || off.saturating_add(*len) > limits::FILE_SIZE {
                    r.push(Class::Corrupt, None, None, format!("prefetch range {i} is out of range"));
                }
            }
        }
    }

    fn check_fields(&self, e: &Entry, li: u32, r: &mut Report) {
        let mut bad = |m: String| r.push(Class::Corrupt, Some(li), Some(&e.path), m);
        let k = e.kind;
        let misplaced =
            |field: &str, present: bool, allowed: bool| (present && !allowed).then(|| format!("field {field} does not belong to a {} entry", k.name()));
        // a hardlink may carry metadata for its inode: then with a mode, as other entries
        let meta = k.has_meta() || (k == Kind::Hardlink && e.mode.is_some());
        let checks = [
            misplaced("mode", e.mode.is_some(), meta),
            misplaced("uid", e.uid.is_some(), meta),
            misplaced("gid", e.gid.is_some(), meta),
            misplaced("mtime", e.mtime.is_some(), meta),
            misplaced("xattrs", e.xattrs.is_some(), meta),
            misplaced("size", e.size.is_some(), k == Kind::Reg),
            misplaced("chunks", e.chunks.is_some(), k == Kind::Reg),
            misplaced("link", e.link.is_some(), matches!(k, Kind::Symlink | Kind::Hardlink)),
            misplaced("devMajor", e.dev_major.is_some(), matches!(k, Kind::Char | Kind::Block)),
            misplaced("devMinor", e.dev_minor.is_some(), matches!(k, Kind::Char | Kind::Block)),
        ];
        for m in checks.into_iter().flatten() {
            bad(m);
        }
        if meta {
            match e.mode {
                None => bad(format!("{} entry has no mode", k.name())),
                Some(m) if m > 0o7777 => bad(format!("mode {m:#o} has bits beyond 07777")),
                _ => {}
            }
        }
        if let Some(t) = e.mtime {
            if !(-limits::MTIME..=limits::MTIME).contains(&t) {
                bad(format!("mtime {t} is out of range"));
            }
        }
        if let Some(xs) = &e.xattrs {
            for (i, (name, v)) in xs.iter().enumerate() {
                if name.is_empty() || name.len() > limits::XATTR_NAME || name.contains('\0') {
                    bad(format!("xattr name {name:?} is empty, too long or holds NUL"));
                }
                if v.len() > limits::XATTR_VALUE {
                    bad(format!("xattr {name:?}: value of {} bytes is over {}", v.len(), limits::XATTR_VALUE));
                }
                if i > 0 && xs[i - 1].0.as_bytes() >= name.as_bytes() {
                    bad(format!("xattr names are not sorted and unique at {name:?}"));
                }
            }
        }
        match k {
            Kind::Reg => match (e.size, &e.chunks) {
                (Some(size), Some(cs)) => {
                    let mut sum = 0u64;
                    for &c in cs {
                        match self.chunks.get(c as usize) {
                            Some(ch) => sum = sum.saturating_add(ch.len),
                            None => {
                                bad(format!("chunk index {c} does not exist"));
                                return;
                            }
                        }
                    }
                    if sum != size || size > limits::FILE_SIZE {
                        bad(format!("chunks add up to {sum} bytes, size is {size}"));
                    }
                }
                _ => bad("reg entry needs size and chunks".into()),
            },
            Kind::Symlink | Kind::Hardlink => match &e.link {
                None => bad(format!("{} entry has no link", k.name())),
                Some(l) if l.is_empty() || l.len() > limits::LINK || l.contains('\0') => bad("link is empty, too long or holds NUL".into()),
                Some(l) if k == Kind::Hardlink => {
                    if let Err(m) = check_path(l, false) {
                        r.push(Class::Unsafe, Some(li), Some(&e.path), format!("hardlink target {l:?}: {m}"));
                    }
                }
                _ => {}
            },
            Kind::Char | Kind::Block if e.dev_major.is_none() || e.dev_minor.is_none() => bad("device entry needs devMajor and devMinor".into()),
            _ => {}
        }
    }
}

/// A normalized relative path (docs/format.md §4): `.` (when allowed) or components that are not
/// empty, `.` or `..`, no NUL, each at most NAME bytes, PATH bytes in all.
pub fn check_path(p: &str, root_ok: bool) -> Result<(), String> {
    if p == "." {
        return if root_ok { Ok(()) } else { Err("the root cannot be a link target".into()) };
    }
    if p.is_empty() || p.len() > limits::PATH {
        return Err(format!("path of {} bytes (1 to {} allowed)", p.len(), limits::PATH));
    }
    if p.contains('\0') {
        return Err("path holds a NUL byte".into());
    }
    for c in p.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err("path is not a normalized relative path (empty, '.' or '..' component, or a leading '/')".into());
        }
        if c.len() > limits::NAME {
            return Err(format!("a path component is {} bytes (at most {})", c.len(), limits::NAME));
        }
    }
    Ok(())
}

/// A path's parent and last component (`""` for the parent of a path with one component).
pub fn parent_and_name(p: &str) -> (&str, &str) {
    match p.rfind('/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    }
}

/// Canonical order (§4): bytewise, component by component — `/` sorts below every byte (paths hold no NUL).
pub fn order_key(p: &str) -> Vec<u8> {
    if p == "." {
        return Vec::new();
    }
    p.bytes().map(|b| if b == b'/' { 0 } else { b }).collect()
}

/// For one path: whiteout < the entry < opaque.
pub(crate) fn rank(k: Kind) -> u8 {
    match k {
        Kind::Whiteout => 0,
        Kind::Opaque => 2,
        _ => 1,
    }
}
