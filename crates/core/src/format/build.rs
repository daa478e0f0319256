//! The writer side of the TOC (docs/format.md §2, §4): a converted layer's canonical entries in
//! canonical order ([`LayerDraft`]), the TOC's chunk, frame and pack tables numbered in order of
//! first reference ([`TocBuilder`]), and the one JSON encoding of it. The encoding is compact JSON
//! with a fixed key order, so the same model always gives the same bytes; the layer content digest
//! ([`LayerDigest`]) hashes the same encoding with chunk digests in place of indices.

use super::canonical::CanonEntry;
use super::dict::{ChunkDict, PackName};
use super::digests::{self, hex};
use super::sequence::{Late, Route, Sequencer};
use super::toc::{self, order_key, rank, Kind, PrefetchRange};
use crate::{Error, Result};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;

/// A canonical entry of a converted layer and, for a regular file, its chunk ids (dictionary ids).
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub entry: CanonEntry,
    pub chunks: Option<Vec<u32>>,
}

/// Figures of a layer's entries as the tar gave them (before later entries replaced earlier ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DraftStats {
    pub entries: u64,
    pub files: u64,
    pub file_bytes: u64,
    /// chunks of file contents, repeats counted (contents of headers without a file included)
    pub chunk_refs: u64,
}

/// For one path: whiteout < the entry < opaque (the order docs/format.md §4 gives a layer's entries).
const KINDS: [Option<Kind>; 10] = [
    None,
    Some(Kind::Reg),
    Some(Kind::Dir),
    Some(Kind::Symlink),
    Some(Kind::Hardlink),
    Some(Kind::Char),
    Some(Kind::Block),
    Some(Kind::Fifo),
    Some(Kind::Whiteout),
    Some(Kind::Opaque),
];

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| Error::invalid("encoded entries: truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| Error::invalid("encoded entries: text is not UTF-8"))
    }
}

/// The inverse of [`super::canonical::encode_entry`]: `count` entries (None for headers without one).
pub fn decode_entries(buf: &[u8], count: usize) -> Result<Vec<Option<CanonEntry>>> {
    let mut c = Cursor { b: buf, at: 0 };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let code = c.take(1)?[0];
        let kind = *KINDS.get(code as usize).ok_or_else(|| Error::invalid(format!("encoded entries: unknown kind {code}")))?;
        let Some(kind) = kind else {
            out.push(None);
            continue;
        };
        let mode = c.u32()?;
        let [uid, gid, size, mtime] = [c.f64()?, c.f64()?, c.f64()?, c.f64()?];
        let (major, minor) = (c.u32()?, c.u32()?);
        let path = c.text()?;
        let link = c.text()?;
        let mut xattrs = Vec::with_capacity(c.u32()? as usize);
        for _ in 0..xattrs.capacity() {
            let name = c.text()?;
            xattrs.push((name, c.bytes()?.to_vec()));
        }
        out.push(Some(CanonEntry {
            kind,
            path,
            mode,
            uid: uid as u64,
            gid: gid as u64,
            size: size as u64,
            mtime: mtime as i64,
            link: matches!(kind, Kind::Symlink | Kind::Hardlink).then_some(link),
            dev: matches!(kind, Kind::Char | Kind::Block).then_some((major, minor)),
            xattrs,
            link_meta: false,
        }));
    }
    if c.at != buf.len() {
        return Err(Error::invalid(format!("encoded entries: {} bytes left over", buf.len() - c.at)));
    }
    Ok(out)
}

/// One layer being converted: its entries as the scan reports them, then each regular file's
/// chunks as they are cut; [`LayerDraft::finish`] puts them in canonical order.
#[derive(Default)]
pub struct LayerDraft {
    /// one pass: which contents are placed as they come and which wait ([`Sequencer`])
    seq: Option<Sequencer>,
    /// per tar header of the layer: the index of its entry in `drafts` (a regular file's has chunks)
    headers: Vec<Option<u32>>,
    /// headers [`LayerDraft::route`] went through
    routed: usize,
    drafts: Vec<Draft>,
    pub stats: DraftStats,
}

/// What [`LayerDraft::route`] says about a batch's headers: each one's route, and the files that
/// leave the hold before each (their chunks in canonical order, where each file starts among them).
#[derive(Debug, Default, PartialEq)]
pub struct Routing {
    pub routes: Vec<Route>,
    /// per header asked about: how many of the released files (those with chunks) come before it
    pub released_before: Vec<u32>,
    pub chunks: Vec<u32>,
    pub file_starts: Vec<u32>,
}

/// Appends a file's chunks to those of the files before it, as a pass places them: `file_starts`
/// gets the index of its first chunk among `chunks`. A file without chunks is left out.
pub fn append_file(chunks: &mut Vec<u32>, file_starts: &mut Vec<u32>, file: Option<&Vec<u32>>) {
    if let Some(c) = file.filter(|c| !c.is_empty()) {
        file_starts.push(chunks.len() as u32);
        chunks.extend_from_slice(c);
    }
}

impl LayerDraft {
    /// `one_pass`: the layer's contents are placed as they arrive ([`LayerDraft::route`]).
    pub fn new(one_pass: bool) -> Self {
        LayerDraft { seq: one_pass.then(Sequencer::default), ..Default::default() }
    }

    /// The next tar headers' entries (encoded by the scan).
    pub fn add_entries(&mut self, encoded: &[u8], count: usize) -> Result<()> {
        for e in decode_entries(encoded, count)? {
            let Some(e) = e else {
                self.headers.push(None);
                continue;
            };
            self.stats.entries += 1;
            let reg = e.kind == Kind::Reg;
            if reg {
                self.stats.files += 1;
                self.stats.file_bytes += e.size;
            }
            self.headers.push(Some(self.drafts.len() as u32));
            self.drafts.push(Draft { chunks: reg.then(Vec::new), entry: e });
        }
        Ok(())
    }

    /// One pass: the routes of tar headers `hs` (increasing, their entries added, the chunks of
    /// every header before them too), whose contents begin in the batch being placed; the entries
    /// up to them go through the [`Sequencer`]. Err: the path of an entry one pass cannot place in
    /// canonical order (the layer must be converted again in two passes).
    pub fn route(&mut self, hs: &[u32]) -> Result<std::result::Result<Routing, Late>> {
        let mut out = Routing::default();
        let mut released = Vec::new();
        for &h in hs {
            let h = h as usize;
            if h < self.routed || h >= self.headers.len() {
                return Err(Error::invalid(format!("route of tar header {h}: headers up to {} routed, {} known", self.routed, self.headers.len())));
            }
            let route = match self.arrive_until(h + 1, &mut released)? {
                Ok(r) => r,
                Err(late) => return Ok(Err(late)),
            };
            Self::take_released(&self.drafts, &mut released, &mut out);
            out.released_before.push(out.file_starts.len() as u32);
            out.routes.push(route);
        }
        Ok(Ok(out))
    }

    /// One pass, at the layer's end: what is still held, in canonical order.
    pub fn release_rest(&mut self) -> Result<std::result::Result<Routing, Late>> {
        let mut released = Vec::new();
        if let Err(late) = self.arrive_until(self.headers.len(), &mut released)? {
            return Ok(Err(late));
        }
        if let Err(late) = self.seq.as_mut().map_or(Ok(()), |s| s.finish(&mut released)) {
            return Ok(Err(late));
        }
        let mut out = Routing::default();
        Self::take_released(&self.drafts, &mut released, &mut out);
        Ok(Ok(out))
    }

    /// The entries of the headers not routed yet, up to `end`, arrive at the [`Sequencer`]: the
    /// route of the last one's content (placed now when that header has no entry).
    fn arrive_until(&mut self, end: usize, released: &mut Vec<u32>) -> Result<std::result::Result<Route, Late>> {
        let Some(seq) = self.seq.as_mut() else { return Err(Error::invalid("routes of a layer taken in two passes")) };
        let mut last = Route::Now;
        for k in self.routed..end {
            last = match self.headers[k] {
                Some(i) => match seq.arrive(i, &self.drafts[i as usize].entry, released) {
                    Ok(r) => r,
                    Err(late) => return Ok(Err(late)),
                },
                None => Route::Now,
            };
        }
        self.routed = end;
        Ok(Ok(last))
    }

    fn take_released(drafts: &[Draft], released: &mut Vec<u32>, out: &mut Routing) {
        for i in released.drain(..) {
            append_file(&mut out.chunks, &mut out.file_starts, drafts[i as usize].chunks.as_ref());
        }
    }

    /// Chunks of tar header `header`'s content, in file order (dropped if the header is not a
    /// regular file: content nobody keeps).
    pub fn add_chunks(&mut self, header: u32, ids: &[u32]) -> Result<()> {
        let f = *self.headers.get(header as usize).ok_or_else(|| Error::invalid(format!("chunks for tar header {header} before its entry")))?;
        self.stats.chunk_refs += ids.len() as u64;
        if let Some(f) = f {
            if let Some(c) = self.drafts[f as usize].chunks.as_mut() {
                c.extend_from_slice(ids);
            }
        }
        Ok(())
    }

    /// The layer in canonical order (see [`canonical_order`]).
    pub fn finish(self) -> Vec<Draft> {
        canonical_order(self.drafts)
    }
}

/// A layer's entries in canonical order (docs/format.md §4): the last entry per path wins (a
/// whiteout or opaque marker and an entry of one path are kept side by side); a hardlink group of
/// this layer keeps its content at the member first in canonical order and the others link to it
/// (carrying only their target; the group's entry holds the inode's metadata with the link headers'
/// applied in tar order, [`apply_link_meta`]); a hardlink to what the layer does not hold carries
/// its header's metadata; entries sorted by path bytes with `/` first, then whiteout, entry, opaque
/// marker.
pub fn canonical_order(list: Vec<Draft>) -> Vec<Draft> {
    let mut slot: HashMap<(u8, String), usize> = HashMap::with_capacity(list.len());
    let mut kept: Vec<Draft> = Vec::with_capacity(list.len());
    for d in list {
        match slot.entry((rank(d.entry.kind), d.entry.path.clone())) {
            std::collections::hash_map::Entry::Occupied(o) => kept[*o.get()] = d,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(kept.len());
                kept.push(d);
            }
        }
    }
    let by_path: HashMap<&str, usize> = kept.iter().enumerate().filter(|(_, d)| rank(d.entry.kind) == 1).map(|(i, d)| (d.entry.path.as_str(), i)).collect();
    // hardlink groups by the entry they end at (chains followed up to 64 hops; targets in lower
    // layers, directories and chains that never end are left as they are)
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<usize, usize> = HashMap::new();
    for (i, d) in kept.iter().enumerate() {
        if d.entry.kind != Kind::Hardlink {
            continue;
        }
        let mut t = d.entry.link.as_deref().and_then(|l| by_path.get(l).copied());
        let mut hops = 0;
        while let Some(ti) = t {
            if kept[ti].entry.kind != Kind::Hardlink || hops >= 64 {
                break;
            }
            t = kept[ti].entry.link.as_deref().and_then(|l| by_path.get(l).copied());
            hops += 1;
        }
        let Some(ti) = t else { continue };
        if matches!(kept[ti].entry.kind, Kind::Hardlink | Kind::Dir) {
            continue;
        }
        let g = *group_of.entry(ti).or_insert_with(|| {
            groups.push((ti, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    let mut grouped = vec![false; kept.len()];
    for (target, links) in groups {
        let holder = std::iter::once(target)
            .chain(links.iter().copied())
            .min_by(|&a, &b| order_key(&kept[a].entry.path).cmp(&order_key(&kept[b].entry.path)))
            .unwrap_or(target);
        let holder_path = kept[holder].entry.path.clone();
        // the inode's metadata as containerd leaves it: each link header's applied in tar order
        let mut inode = CanonEntry { path: holder_path.clone(), ..kept[target].entry.clone() };
        for &m in &links {
            apply_link_meta(&mut inode, &kept[m].entry);
        }
        let content = Draft { entry: inode, chunks: kept[target].chunks.clone() };
        for m in std::iter::once(target).chain(links) {
            grouped[m] = true;
            if m == holder {
                kept[m] = content.clone();
            } else {
                kept[m] = Draft { entry: hardlink(kept[m].entry.path.clone(), holder_path.clone()), chunks: None };
            }
        }
    }
    for (d, grouped) in kept.iter_mut().zip(grouped) {
        if d.entry.kind == Kind::Hardlink && !grouped {
            // a target this layer does not hold: the link carries its header's metadata
            let e = &mut d.entry;
            (e.size, e.dev, e.link_meta) = (0, None, true);
        }
    }
    let mut keyed: Vec<(Vec<u8>, u8, Draft)> = kept.into_iter().map(|d| (order_key(&d.entry.path), rank(d.entry.kind), d)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    keyed.into_iter().map(|(_, _, d)| d).collect()
}

/// What a link header does to its inode in containerd's applier: owner, xattrs (set over the
/// inode's), mode (not on a symlink), mtime.
pub fn apply_link_meta(inode: &mut CanonEntry, link: &CanonEntry) {
    (inode.uid, inode.gid, inode.mtime) = (link.uid, link.gid, link.mtime);
    if inode.kind != Kind::Symlink {
        inode.mode = link.mode;
    }
    if !link.xattrs.is_empty() {
        let mut m: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = inode.xattrs.drain(..).map(|(k, v)| (k.into_bytes(), v)).collect();
        for (k, v) in &link.xattrs {
            m.insert(k.as_bytes().to_vec(), v.clone());
        }
        inode.xattrs = m.into_iter().map(|(k, v)| (String::from_utf8(k).unwrap_or_default(), v)).collect();
    }
}

fn hardlink(path: String, link: String) -> CanonEntry {
    CanonEntry { kind: Kind::Hardlink, path, mode: 0, uid: 0, gid: 0, size: 0, mtime: 0, link: Some(link), dev: None, xattrs: Vec::new(), link_meta: false }
}

/// A TOC entry as the model of a converted layer (the reverse of what [`write_entry`] writes).
pub fn entry_from_toc(e: &toc::Entry) -> CanonEntry {
    CanonEntry {
        kind: e.kind,
        path: e.path.clone(),
        mode: e.mode.unwrap_or(0),
        uid: e.uid.unwrap_or(0) as u64,
        gid: e.gid.unwrap_or(0) as u64,
        size: e.size.unwrap_or(0),
        mtime: e.mtime.unwrap_or(0),
        link: e.link.clone(),
        dev: matches!(e.kind, Kind::Char | Kind::Block).then(|| (e.dev_major.unwrap_or(0), e.dev_minor.unwrap_or(0))),
        xattrs: e.xattrs.clone().unwrap_or_default(),
        link_meta: e.kind == Kind::Hardlink && e.mode.is_some(),
    }
}

/// How an entry's chunks are written: TOC indices, or (for the content digest) their digests.
enum ChunkNames<'a> {
    Indices(&'a [u32]),
    Digests(&'a [&'a str]),
}

fn json_str(o: &mut Vec<u8>, s: &str) {
    // serde_json escapes exactly as JSON.stringify does for well-formed strings: \" \\ \b \f \n \r
    // \t, other control characters as \u00xx (lower case), everything else as it is
    serde_json::to_writer(&mut *o, s).unwrap_or_default();
}

fn num(o: &mut Vec<u8>, key: &str, v: impl std::fmt::Display) {
    o.extend_from_slice(b",\"");
    o.extend_from_slice(key.as_bytes());
    o.extend_from_slice(b"\":");
    let mut s = String::new();
    let _ = write!(s, "{v}");
    o.extend_from_slice(s.as_bytes());
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(o: &mut Vec<u8>, b: &[u8]) {
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        o.push(B64[(n >> 18) as usize & 63]);
        o.push(B64[(n >> 12) as usize & 63]);
        o.push(if c.len() > 1 { B64[(n >> 6) as usize & 63] } else { b'=' });
        o.push(if c.len() > 2 { B64[n as usize & 63] } else { b'=' });
    }
}

/// One entry's JSON: `path`, `type`, then what its kind carries (mode; uid, gid, mtime when not 0;
/// size and chunks of a file; the link; device numbers; xattrs when there are any), in that order.
fn write_entry(o: &mut Vec<u8>, e: &CanonEntry, chunks: Option<ChunkNames>) {
    o.extend_from_slice(b"{\"path\":");
    json_str(o, &e.path);
    o.extend_from_slice(b",\"type\":\"");
    o.extend_from_slice(e.kind.name().as_bytes());
    o.push(b'"');
    match e.kind {
        Kind::Whiteout | Kind::Opaque => {}
        Kind::Hardlink if !e.link_meta => {
            o.extend_from_slice(b",\"link\":");
            json_str(o, e.link.as_deref().unwrap_or(""));
        }
        k => {
            num(o, "mode", e.mode);
            if e.uid != 0 {
                num(o, "uid", e.uid);
            }
            if e.gid != 0 {
                num(o, "gid", e.gid);
            }
            if e.mtime != 0 {
                num(o, "mtime", e.mtime);
            }
            if k == Kind::Reg {
                num(o, "size", e.size);
                o.extend_from_slice(b",\"chunks\":[");
                match chunks {
                    Some(ChunkNames::Indices(ix)) => {
                        for (n, c) in ix.iter().enumerate() {
                            if n > 0 {
                                o.push(b',');
                            }
                            let _ = write!(Buf(o), "{c}");
                        }
                    }
                    Some(ChunkNames::Digests(ds)) => {
                        for (n, d) in ds.iter().enumerate() {
                            if n > 0 {
                                o.push(b',');
                            }
                            json_str(o, d);
                        }
                    }
                    None => {}
                }
                o.push(b']');
            }
            if matches!(k, Kind::Symlink | Kind::Hardlink) {
                o.extend_from_slice(b",\"link\":");
                json_str(o, e.link.as_deref().unwrap_or(""));
            }
            if matches!(k, Kind::Char | Kind::Block) {
                let (major, minor) = e.dev.unwrap_or((0, 0));
                num(o, "devMajor", major);
                num(o, "devMinor", minor);
            }
            if !e.xattrs.is_empty() {
                o.extend_from_slice(b",\"xattrs\":{");
                for (n, (k, v)) in e.xattrs.iter().enumerate() {
                    if n > 0 {
                        o.push(b',');
                    }
                    json_str(o, k);
                    o.extend_from_slice(b":\"");
                    base64_encode(o, v);
                    o.push(b'"');
                }
                o.push(b'}');
            }
        }
    }
    o.push(b'}');
}

struct Buf<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Buf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The layer content digest, fed entry by entry: SHA-256 over a layer's entries, each as its TOC
/// JSON with chunk digests in place of chunk indices, one per line. A function of the layer's files
/// and the conversion options only, not of the TOC that holds them (trust records compare it).
#[derive(Default)]
pub struct LayerDigest {
    h: Sha256,
    line: Vec<u8>,
}

impl LayerDigest {
    /// The next entry, with its chunks' hex digests (a regular file) or none.
    pub fn add(&mut self, e: &CanonEntry, chunks: Option<&[&str]>) {
        self.line.clear();
        write_entry(&mut self.line, e, chunks.map(ChunkNames::Digests));
        self.line.push(b'\n');
        self.h.update(&self.line);
    }

    pub fn finish(self) -> String {
        format!("sha256:{}", hex(&self.h.finalize()))
    }
}

/// The image's content digest: SHA-256 over its layers' content digests, one per line. It names
/// the files an image holds (with the conversion's options), whatever frames, packs, TOC numbering
/// or destination hold them.
pub fn image_content_digest(layer_digests: &[String]) -> String {
    let mut h = Sha256::new();
    for d in layer_digests {
        h.update(d.as_bytes());
        h.update(b"\n");
    }
    format!("sha256:{}", hex(&h.finalize()))
}

/// The content digest of a layer draft (canonical order, chunk digests from `dict`), as a TOC
/// built from it would give (what `verify --against-original` derives from an original layer).
pub fn draft_content_digest(draft: LayerDraft, dict: &ChunkDict) -> String {
    let mut ld = LayerDigest::default();
    for d in draft.finish() {
        let hexes: Option<Vec<String>> = d.chunks.as_ref().map(|cs| cs.iter().map(|&id| hex(dict.digest(id))).collect());
        let names: Option<Vec<&str>> = hexes.as_ref().map(|h| h.iter().map(String::as_str).collect());
        ld.add(&d.entry, names.as_deref());
    }
    ld.finish()
}

/// The content digest of every layer of a (checked) TOC.
pub fn toc_layer_digests(t: &toc::Toc) -> Result<Vec<String>> {
    let hexes: Vec<String> = t.digests.all().ok_or_else(not_loaded)?.iter().map(|d| hex(d)).collect();
    Ok(t.layers
        .iter()
        .map(|l| {
            let mut ld = LayerDigest::default();
            for e in &l.entries {
                let names: Option<Vec<&str>> = e.chunks.as_ref().map(|cs| cs.iter().map(|&c| hexes.get(c as usize).map_or("", String::as_str)).collect());
                ld.add(&entry_from_toc(e), names.as_deref());
            }
            ld.finish()
        })
        .collect())
}

fn not_loaded() -> Error {
    Error::invalid("the TOC's chunk digests are not loaded (its digest table is needed)")
}

/// The chunker as the TOC records it: its kind, then the parameters given.
#[derive(Debug, Clone, Default)]
pub struct ChunkerRecord {
    pub kind: String,
    pub min: Option<u32>,
    pub avg: Option<u32>,
    pub max: Option<u32>,
    pub size: Option<u32>,
}

/// What a built TOC names, besides its JSON.
#[derive(Debug, Default)]
pub struct Built {
    pub json: Vec<u8>,
    pub packs: Vec<String>,
    pub chunks: u32,
    pub unique_chunk_bytes: u64,
    /// chunks the dictionary held before this image (ids below `stored_before`)
    pub reused_chunks: u32,
    /// compressed bytes of every frame the TOC names
    pub image_frame_bytes: u64,
    /// chunk ids whose location came from a destination's TOC and is not verified yet
    pub foreign: Vec<u32>,
    /// [`LayerDigest`] of each layer
    pub layer_digests: Vec<String>,
    /// [`image_content_digest`]
    pub content_digest: String,
    /// the digest table blob (docs/format.md §3): 32 bytes per chunk, in TOC order
    pub digest_table: Vec<u8>,
    /// `sha256:<hex>` of `digest_table`
    pub digest_table_digest: String,
}

/// A TOC being assembled: converted layers in order, then [`TocBuilder::build`].
pub struct TocBuilder {
    version: u32,
    chunker: ChunkerRecord,
    prefetch: Option<Vec<PrefetchRange>>,
    layers: Vec<Vec<Draft>>,
}

impl TocBuilder {
    pub fn new(version: u32, chunker: ChunkerRecord, prefetch: Option<Vec<PrefetchRange>>) -> Self {
        TocBuilder { version, chunker, prefetch: prefetch.filter(|p| !p.is_empty()), layers: Vec::new() }
    }

    pub fn add_layer(&mut self, entries: Vec<Draft>) {
        self.layers.push(entries);
    }

    /// Layer `layer` of an earlier conversion's (checked) TOC, its chunks interned in `dict` (they
    /// are known there: the TOC was read into it). Returns its figures.
    pub fn add_toc_layer(&mut self, dict: &mut ChunkDict, t: &toc::Toc, layer: usize) -> Result<DraftStats> {
        let l = t.layers.get(layer).ok_or_else(|| Error::invalid(format!("TOC has no layer {layer}")))?;
        if !t.digests.complete() {
            return Err(not_loaded());
        }
        let mut ids: HashMap<u32, u32> = HashMap::new();
        let mut stats = DraftStats::default();
        let mut out = Vec::with_capacity(l.entries.len());
        for e in &l.entries {
            stats.entries += 1;
            stats.chunk_refs += e.chunks.as_ref().map_or(0, |c| c.len() as u64);
            let chunks = match &e.chunks {
                Some(cs) => Some(
                    cs.iter()
                        .map(|&c| match ids.get(&c) {
                            Some(&id) => Ok(id),
                            None => {
                                let ch = t.chunks.get(c as usize).ok_or_else(|| Error::corrupt(format!("TOC chunk {c} does not exist")))?;
                                let digest = t.digests.get(c).ok_or_else(not_loaded)?;
                                let (id, _) = dict.intern(&digest, ch.len as u32);
                                ids.insert(c, id);
                                Ok(id)
                            }
                        })
                        .collect::<Result<Vec<u32>>>()?,
                ),
                None => None,
            };
            if e.kind == Kind::Reg {
                stats.files += 1;
                stats.file_bytes += e.size.unwrap_or(0);
            }
            out.push(Draft { entry: entry_from_toc(e), chunks });
        }
        self.layers.push(out);
        Ok(stats)
    }

    /// Number packs, frames and chunks in order of first reference (layers, entries, chunks in
    /// order) and encode the TOC. `written[n]` is the digest of the conversion's `n`th new pack.
    pub fn build(&self, dict: &ChunkDict, written: &[String], stored_before: u32) -> Result<Built> {
        if self.version as u64 != toc::VERSION {
            return Err(Error::invalid(format!("this writer writes TOC version {}, not {}", toc::VERSION, self.version)));
        }
        let mut b = Built::default();
        let mut pack_ix: HashMap<u32, u32> = HashMap::new();
        let mut pack_of_name: HashMap<String, u32> = HashMap::new();
        let mut frame_ix: HashMap<(u32, u64), u32> = HashMap::new();
        let mut dict_ix: HashMap<u32, u32> = HashMap::new();
        let mut dicts = Vec::new();
        let mut chunk_ix: HashMap<u32, u32> = HashMap::new();
        // each TOC chunk's hex digest, by TOC index (the layer digests use it), and its digest (the table)
        let mut chunk_hex: Vec<String> = Vec::new();
        let mut table: Vec<[u8; 32]> = Vec::new();
        let mut frames = Vec::new();
        let mut chunks = Vec::new();
        let mut layers = Vec::new();
        let mut ix = Vec::new();
        for (li, layer) in self.layers.iter().enumerate() {
            layers.extend_from_slice(if li == 0 { b"{\"entries\":[" } else { b",{\"entries\":[" });
            let mut ld = LayerDigest::default();
            for (n, d) in layer.iter().enumerate() {
                ix.clear();
                for &id in d.chunks.iter().flatten() {
                    if let Some(&ci) = chunk_ix.get(&id) {
                        ix.push(ci);
                        continue;
                    }
                    if id as usize >= dict.len() {
                        return Err(Error::invalid(format!("chunk id {id} of {}", dict.len())));
                    }
                    let loc = dict.location(id).ok_or_else(|| Error::invalid(format!("chunk {} was never placed", hex(dict.digest(id)))))?;
                    let mut pack_of = |r: u32, b: &mut Built| -> Result<u32> {
                        if let Some(&p) = pack_ix.get(&r) {
                            return Ok(p);
                        }
                        let name = match dict.pack_name(r) {
                            PackName::Stored(d) => d.clone(),
                            PackName::Written(n) => {
                                written.get(*n as usize).cloned().ok_or_else(|| Error::invalid(format!("pack {n} of this conversion has no digest")))?
                            }
                        };
                        // two table entries may name one digest (a written pack resolved later)
                        let p = *pack_of_name.entry(name.clone()).or_insert_with(|| {
                            b.packs.push(name);
                            b.packs.len() as u32 - 1
                        });
                        pack_ix.insert(r, p);
                        Ok(p)
                    };
                    let pi = pack_of(loc.pack, &mut b)?;
                    let fi = match frame_ix.get(&(pi, loc.offset)) {
                        Some(&f) => f,
                        None => {
                            let f = frame_ix.len() as u32;
                            frame_ix.insert((pi, loc.offset), f);
                            let _ = write!(Buf(&mut frames), "{}[{},{},{},{}", if f == 0 { "" } else { "," }, pi, loc.offset, loc.compressed_len, loc.len);
                            if let Some(r) = loc.dict {
                                let di = match dict_ix.get(&r) {
                                    Some(&d) => d,
                                    None => {
                                        let at = dict.dict_location(r);
                                        let dp = pack_of(at.pack, &mut b)?;
                                        let d = dict_ix.len() as u32;
                                        dict_ix.insert(r, d);
                                        let _ =
                                            write!(Buf(&mut dicts), "{}[{},{},{},{}]", if d == 0 { "" } else { "," }, dp, at.offset, at.compressed_len, at.len);
                                        d
                                    }
                                };
                                let _ = write!(Buf(&mut frames), ",{di}");
                            }
                            frames.push(b']');
                            b.image_frame_bytes += loc.compressed_len as u64;
                            f
                        }
                    };
                    let ci = b.chunks;
                    b.chunks += 1;
                    chunk_ix.insert(id, ci);
                    chunk_hex.push(hex(dict.digest(id)));
                    table.push(*dict.digest(id));
                    let _ = write!(Buf(&mut chunks), "{}[{},{},{}]", if ci == 0 { "" } else { "," }, fi, loc.inner, dict.chunk_len(id));
                    if dict.is_foreign(id) {
                        b.foreign.push(id);
                    }
                    b.unique_chunk_bytes += dict.chunk_len(id) as u64;
                    if id < stored_before {
                        b.reused_chunks += 1;
                    }
                    ix.push(ci);
                }
                if n > 0 {
                    layers.push(b',');
                }
                write_entry(&mut layers, &d.entry, d.chunks.as_ref().map(|_| ChunkNames::Indices(&ix)));
                let names: Option<Vec<&str>> = d.chunks.as_ref().map(|_| ix.iter().map(|&ci| chunk_hex[ci as usize].as_str()).collect());
                ld.add(&d.entry, names.as_deref());
            }
            layers.extend_from_slice(b"]}");
            b.layer_digests.push(ld.finish());
        }
        b.content_digest = image_content_digest(&b.layer_digests);
        drop(chunk_hex);
        let o = &mut b.json;
        // the JSON in one allocation of its size (not doubled as it grows), each part freed once copied
        let names: usize = b.packs.iter().map(|p| p.len() + 3).sum();
        let prefetch: usize = self.prefetch.iter().flatten().map(|(p, ..)| 2 * p.len() + 48).sum();
        o.reserve_exact(256 + names + frames.len() + chunks.len() + layers.len() + prefetch);
        let _ = write!(Buf(o), "{{\"version\":{},\"chunker\":{{\"kind\":", self.version);
        json_str(o, &self.chunker.kind);
        for (k, v) in [("min", self.chunker.min), ("avg", self.chunker.avg), ("max", self.chunker.max), ("size", self.chunker.size)] {
            if let Some(v) = v {
                num(o, k, v);
            }
        }
        o.extend_from_slice(b"},\"packs\":[");
        for (n, p) in b.packs.iter().enumerate() {
            if n > 0 {
                o.push(b',');
            }
            json_str(o, p);
        }
        if !dicts.is_empty() {
            o.extend_from_slice(b"],\"dicts\":[");
            o.extend_from_slice(&dicts);
        }
        o.extend_from_slice(b"],\"frames\":[");
        o.extend_from_slice(&frames);
        drop(frames);
        o.extend_from_slice(b"],\"chunks\":[");
        o.extend_from_slice(&chunks);
        drop(chunks);
        let (blob, r) = digests::build_table(&table, digests::SECTION);
        o.extend_from_slice(b"],\"digests\":{\"blob\":");
        json_str(o, &r.blob);
        let _ = write!(Buf(o), ",\"section\":{},\"sections\":\"", r.section);
        base64_encode(o, &r.hashes.concat());
        o.extend_from_slice(b"\"},\"layers\":[");
        o.extend_from_slice(&layers);
        drop(layers);
        o.push(b']');
        if let Some(p) = &self.prefetch {
            o.extend_from_slice(b",\"prefetch\":[");
            for (n, (path, off, len)) in p.iter().enumerate() {
                o.extend_from_slice(if n > 0 { b",[" } else { b"[" });
                json_str(o, path);
                let _ = write!(Buf(o), ",{off},{len}]");
            }
            o.push(b']');
        }
        o.push(b'}');
        b.digest_table = blob;
        b.digest_table_digest = r.blob;
        Ok(b)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::canonical::encode_entry;
    use crate::format::dict::Location;

    /// An entry of `kind` at `path` (mode 644, owned by root, at time 0).
    pub(crate) fn ent(kind: Kind, path: &str, link: Option<&str>) -> CanonEntry {
        CanonEntry {
            kind,
            path: path.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            link: link.map(Into::into),
            dev: None,
            xattrs: vec![],
            link_meta: false,
        }
    }
    fn reg(path: &str, chunks: &[u32]) -> Draft {
        Draft { entry: CanonEntry { size: chunks.len() as u64, ..ent(Kind::Reg, path, None) }, chunks: Some(chunks.to_vec()) }
    }
    fn other(kind: Kind, path: &str, link: Option<&str>) -> Draft {
        Draft { entry: ent(kind, path, link), chunks: None }
    }
    fn show(l: &[Draft]) -> Vec<String> {
        l.iter()
            .map(|d| {
                let mut s = format!("{} {}", d.entry.path, d.entry.kind.name());
                if let Some(t) = &d.entry.link {
                    s += &format!(" -> {t}");
                }
                if let Some(c) = &d.chunks {
                    s += &format!(" {c:?}");
                }
                s
            })
            .collect()
    }

    #[test]
    fn last_entry_per_path_sorted_with_slash_first_whiteouts_before_what_they_hide() {
        let out = canonical_order(vec![
            reg("b", &[1]),
            reg("a.d", &[2]),
            other(Kind::Dir, "a", None),
            reg("a/z", &[3]),
            reg("b", &[4]),
            other(Kind::Whiteout, "c", None),
            other(Kind::Dir, "c", None),
            other(Kind::Opaque, "a", None),
        ]);
        assert_eq!(show(&out), ["a dir", "a opaque", "a/z reg [3]", "a.d reg [2]", "b reg [4]", "c whiteout", "c dir"]);
    }

    #[test]
    fn a_hardlink_group_holds_its_content_at_its_first_path() {
        let out = canonical_order(vec![
            reg("z", &[9]),
            other(Kind::Hardlink, "b", Some("z")),
            other(Kind::Hardlink, "m", Some("b")),
            other(Kind::Hardlink, "x", Some("lower/file")),
        ]);
        assert_eq!(show(&out), ["b reg [9]", "m hardlink -> b", "x hardlink -> lower/file", "z hardlink -> b"]);
        // links within the group carry nothing but their target; a link to what this layer does
        // not hold carries its header's metadata for the inode
        assert_eq!([out[1].entry.link_meta, out[2].entry.link_meta, out[3].entry.link_meta], [false, true, false]);
        assert_eq!((out[1].entry.mode, out[2].entry.mode), (0, 0o644));
        // links to directories and endless chains stay as they are (the tree refuses them)
        let mut l = other(Kind::Hardlink, "h", Some("d"));
        l.entry.mode = 0o755;
        let out = canonical_order(vec![other(Kind::Dir, "d", None), l, other(Kind::Hardlink, "p", Some("q")), other(Kind::Hardlink, "q", Some("p"))]);
        assert_eq!(show(&out), ["d dir", "h hardlink -> d", "p hardlink -> q", "q hardlink -> p"]);
        assert_eq!((out[1].entry.mode, out[1].entry.link_meta), (0o755, true));
    }

    #[test]
    fn link_headers_give_their_metadata_to_the_inode_in_tar_order() {
        let mut f = reg("f", &[1]);
        (f.entry.mode, f.entry.uid, f.entry.mtime) = (0o640, 7, 100);
        f.entry.xattrs = vec![("user.a".into(), b"1".to_vec()), ("user.b".into(), b"2".to_vec())];
        let mut h1 = other(Kind::Hardlink, "h1", Some("f"));
        (h1.entry.mode, h1.entry.uid, h1.entry.mtime) = (0o600, 1, 200);
        h1.entry.xattrs = vec![("user.b".into(), b"two".to_vec()), ("user.c".into(), b"3".to_vec())];
        let mut a = other(Kind::Hardlink, "a", Some("f"));
        (a.entry.mode, a.entry.uid, a.entry.mtime) = (0o444, 2, 300);
        let out = canonical_order(vec![f, h1, a]);
        assert_eq!(show(&out), ["a reg [1]", "f hardlink -> a", "h1 hardlink -> a"]);
        let e = &out[0].entry;
        // the last link header's owner, mode and mtime; xattrs set over the file's
        assert_eq!((e.mode, e.uid, e.mtime), (0o444, 2, 300));
        assert_eq!(e.xattrs, [("user.a".into(), b"1".to_vec()), ("user.b".into(), b"two".to_vec()), ("user.c".into(), b"3".to_vec())]);
        // a symlink's mode is not changed by a link to it
        let mut s = other(Kind::Symlink, "s", Some("t"));
        s.entry.mode = 0o777;
        let mut l = other(Kind::Hardlink, "t2", Some("s"));
        (l.entry.mode, l.entry.mtime) = (0o600, 5);
        let out = canonical_order(vec![s, l]);
        assert_eq!((out[0].entry.mode, out[0].entry.mtime), (0o777, 5));
    }

    #[test]
    fn entries_decode_as_the_scan_encodes_them() {
        let mut e = ent(Kind::Char, "dev/null", None);
        e.dev = Some((1, 3));
        e.xattrs = vec![("user.a".into(), vec![0, 255])];
        e.mtime = -5;
        let mut buf = Vec::new();
        encode_entry(&mut buf, Some(&e));
        encode_entry(&mut buf, None);
        encode_entry(&mut buf, Some(&ent(Kind::Symlink, "s", Some("../t"))));
        let got = decode_entries(&buf, 3).unwrap();
        assert_eq!(got, vec![Some(e), None, Some(ent(Kind::Symlink, "s", Some("../t")))]);
        assert!(decode_entries(&buf[..buf.len() - 1], 3).is_err());
        assert!(decode_entries(&buf, 2).is_err());
    }

    #[test]
    fn one_pass_drafts_route_contents_and_report_what_breaks_the_order() {
        let enc = |es: &[CanonEntry]| {
            let mut b = Vec::new();
            es.iter().for_each(|e| encode_entry(&mut b, Some(e)));
            b
        };
        let mut d = LayerDraft::new(true);
        // byte order of whole paths: a.b waits for a's children
        d.add_entries(&enc(&[ent(Kind::Dir, "a", None), ent(Kind::Reg, "a.b", None), ent(Kind::Reg, "a/c", None)]), 3).unwrap();
        d.add_chunks(1, &[1, 2]).unwrap();
        d.add_chunks(2, &[3]).unwrap();
        let r = d.route(&[1, 2]).unwrap().unwrap();
        assert_eq!(r, Routing { routes: vec![Route::Held, Route::Now], released_before: vec![0, 0], chunks: vec![], file_starts: vec![] });
        assert!(d.route(&[2]).is_err(), "a header routed twice");
        d.add_entries(&enc(&[ent(Kind::Reg, "b", None), ent(Kind::Reg, "a/d", None)]), 2).unwrap();
        d.add_chunks(3, &[4]).unwrap();
        let r = d.route(&[3]).unwrap().unwrap();
        assert_eq!(r, Routing { routes: vec![Route::Now], released_before: vec![1], chunks: vec![1, 2], file_starts: vec![0] });
        // a/d after b: two passes needed
        assert_eq!(d.release_rest().unwrap(), Err("a/d".into()));
        let mut d = LayerDraft::new(false);
        d.add_entries(&enc(&[ent(Kind::Reg, "b", None), ent(Kind::Dir, "a", None)]), 2).unwrap();
        assert!(d.route(&[0]).is_err(), "no routes in two passes");
        d.add_chunks(0, &[7, 8]).unwrap();
        d.add_chunks(1, &[9]).unwrap(); // a directory's "content": dropped
        assert!(d.add_chunks(2, &[1]).is_err());
        assert_eq!(d.stats, DraftStats { entries: 2, files: 1, file_bytes: 0, chunk_refs: 3 });
        assert_eq!(show(&d.finish()), ["a dir", "b reg [7, 8]"]);
    }

    #[test]
    fn base64_as_javascript_writes_it() {
        let b = |v: &[u8]| {
            let mut o = Vec::new();
            base64_encode(&mut o, v);
            String::from_utf8(o).unwrap()
        };
        assert_eq!([b(b""), b(b"f"), b(b"fo"), b(b"foo"), b(b"\xff\xfe\xfd\x00")], ["", "Zg==", "Zm8=", "Zm9v", "//79AA=="]);
    }

    #[test]
    fn a_built_toc_passes_the_check_and_its_digests_do_not_depend_on_numbering() {
        let mut dict = ChunkDict::new();
        let d = |n: u8| [n; 32];
        let (a, _) = dict.intern(&d(1), 10);
        let (b, _) = dict.intern(&d(2), 20);
        let p = dict.pack_ref(PackName::Written(0));
        dict.set_location(a, Location { pack: p, offset: 0, compressed_len: 9, len: 30, inner: 0, dict: None });
        dict.set_location(b, Location { pack: p, offset: 0, compressed_len: 9, len: 30, inner: 10, dict: None });
        let mut x = ent(Kind::Reg, "dir/f\n\"é", None);
        x.size = 30;
        x.uid = 1000;
        x.mtime = -1;
        x.xattrs = vec![("security.capability".into(), vec![1, 2, 3, 4])];
        // a link header with its target's metadata, as tar writers give it
        let g = Draft { entry: CanonEntry { kind: Kind::Hardlink, path: "g".into(), size: 0, link: Some(x.path.clone()), ..x.clone() }, chunks: None };
        let layer = vec![other(Kind::Dir, "dir", None), Draft { entry: x.clone(), chunks: Some(vec![b, a]) }, g];
        let chunker = ChunkerRecord { kind: "cdc".into(), min: Some(1), avg: Some(2), max: Some(4), size: None };
        let mut t = TocBuilder::new(2, chunker.clone(), Some(vec![("g".into(), 0, 5)]));
        t.add_layer(layer.clone());
        let built = t.build(&dict, &[format!("sha256:{}", "ab".repeat(32))], 1).unwrap();
        let json = String::from_utf8(built.json.clone()).unwrap();
        assert!(json.starts_with(r#"{"version":2,"chunker":{"kind":"cdc","min":1,"avg":2,"max":4},"packs":["sha256:abab"#), "{json}");
        assert!(json.contains(r#""frames":[[0,0,9,30]],"chunks":[[0,10,20],[0,0,10]],"digests":{"blob":"sha256:"#), "{json}");
        let mut table = [[2u8; 32], [1u8; 32]].concat();
        assert_eq!(built.digest_table, table);
        assert_eq!(built.digest_table_digest, format!("sha256:{}", hex(&Sha256::digest(&table))));
        assert!(
            json.contains(
                r#"{"path":"dir/f\n\"é","type":"reg","mode":420,"uid":1000,"mtime":-1,"size":30,"chunks":[0,1],"xattrs":{"security.capability":"AQIDBA=="}}"#
            ),
            "{json}"
        );
        assert!(json.ends_with(r#"{"path":"g","type":"hardlink","link":"dir/f\n\"é"}]}],"prefetch":[["g",0,5]]}"#), "{json}");
        assert_eq!((built.chunks, built.reused_chunks, built.unique_chunk_bytes, built.image_frame_bytes), (2, 1, 30, 9));
        let blob = crate::frame::compress_frame(&[&built.json], 3).unwrap();
        let Ok((checked, _, _)) = crate::format::check_toc(&blob) else { panic!("built TOC fails the check") };
        assert!(toc_layer_digests(&checked).is_err(), "digests not loaded");
        assert!(TocBuilder::new(2, chunker.clone(), None).add_toc_layer(&mut ChunkDict::new(), &checked, 0).is_err(), "digests not loaded");
        table[0] ^= 1;
        assert!(checked.digests.load(&table).is_err());
        table[0] ^= 1;
        checked.digests.load(&table).unwrap();
        assert_eq!(toc_layer_digests(&checked).unwrap(), built.layer_digests);
        assert_eq!(image_content_digest(&built.layer_digests), built.content_digest);
        // a draft of the same layer gives the same content digest
        let mut draft = LayerDraft::new(false);
        let mut enc = Vec::new();
        for d in [&layer[2], &layer[1], &layer[0]] {
            crate::format::canonical::encode_entry(&mut enc, Some(&d.entry));
        }
        draft.add_entries(&enc, 3).unwrap();
        draft.add_chunks(1, &[b, a]).unwrap();
        assert_eq!(draft_content_digest(draft, &dict), built.layer_digests[0]);
        // the same layer taken from that TOC into another dictionary and TOC: same content digest
        let mut other_dict = ChunkDict::new();
        other_dict.intern(&d(9), 1);
        let mut t2 = TocBuilder::new(2, chunker, None);
        let stats = t2.add_toc_layer(&mut other_dict, &checked, 0).unwrap();
        assert_eq!(stats, DraftStats { entries: 3, files: 1, file_bytes: 30, chunk_refs: 2 });
        assert!(t2.build(&other_dict, &[], 0).is_err(), "chunks without a location");
        let q = other_dict.pack_ref(PackName::Stored("sha256:x".into()));
        for id in 1..3 {
            other_dict.set_location(id, Location { pack: q, offset: 5, compressed_len: 9, len: 30, inner: 0, dict: None });
        }
        let again = t2.build(&other_dict, &[], 0).unwrap();
        assert_eq!(again.layer_digests, built.layer_digests);
        assert_ne!(again.json, built.json);
    }
}
