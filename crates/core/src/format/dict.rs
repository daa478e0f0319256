//! The chunk dictionary of a conversion: every chunk it knows, by SHA-256 digest. Chunks come from
//! the layers being converted (new, placed into frames by the pack writer) and from the TOCs of
//! chunked images the destination already holds (stored: their frame is somewhere in a pack).
//!
//! A chunk's id is its rank of arrival (0, 1, 2, …): a TOC's chunk table is made of ids in the order
//! the converter meets them, and [`ChunkDict::truncate`] forgets the chunks of a layer read twice.
//! Per chunk it keeps its length, its location (a frame in a pack, or "claimed": its frame is being
//! written), where its bytes wait in a spool file, and whether its location came from a destination
//! and still has to be verified. About 90 bytes a chunk: millions of chunks (`analyze` over a corpus)
//! fit in a few hundred MiB.

use crate::{Error, Result};
use hashbrown::HashTable;
use std::collections::HashMap;

/// A chunk's SHA-256.
pub type Digest = [u8; 32];

/// A pack in the dictionary's pack table: stored (by digest), or the `n`th pack the conversion under
/// way writes, until [`ChunkDict::resolve_written`] gives it its digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PackName {
    Stored(String),
    Written(u32),
}

/// Where a chunk's bytes are: `inner` bytes into the uncompressed frame that starts `offset` bytes
/// into pack `pack` (an index into the pack table) and is `compressed_len` bytes long, `len`
/// uncompressed; compressed with dictionary `dict` (an index into the dictionary table), if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u64,
    pub compressed_len: u32,
    pub len: u32,
    pub inner: u32,
    pub dict: Option<u32>,
}

/// Where a dictionary is (docs/format.md §5): a zstd frame of it, `offset` bytes into pack `pack`
/// (an index into the pack table), `compressed_len` bytes long, `len` bytes of dictionary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DictLocation {
    pub pack: u32,
    pub offset: u64,
    pub compressed_len: u32,
    pub len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Neither stored nor taken by this conversion.
    Unplaced,
    /// Taken by this conversion: its frame is being written; the location comes when it is.
    Claimed,
    At(Location),
}

/// Where a new chunk's bytes wait until the pack writer takes them: `offset` into the spool file,
/// raw (`compressed_len` None) or already compressed into a frame of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spooled {
    pub offset: u64,
    pub compressed_len: Option<u32>,
}

/// What [`ChunkDict::spool_plan`] places, one row per chunk: its id, where its bytes are in the
/// spool and how many (compressed ones when `raw` is false), and whether a file begins before it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolPlan {
    pub ids: Vec<u32>,
    pub offsets: Vec<u64>,
    pub lens: Vec<u32>,
    pub raw: Vec<bool>,
    pub starts: Vec<bool>,
}

#[derive(Clone, Copy, Debug)]
struct Rec {
    len: u32,
    place: Place,
    spool: Option<Spooled>,
    /// The location was read from a destination's TOC and is not known good yet.
    foreign: bool,
}

/// Digests are uniformly random: their first 8 bytes are the hash.
fn hash(d: &Digest) -> u64 {
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

#[derive(Default)]
pub struct ChunkDict {
    /// ids, hashed by their digest
    table: HashTable<u32>,
    digests: Vec<Digest>,
    recs: Vec<Rec>,
    packs: Vec<PackName>,
    pack_refs: HashMap<PackName, u32>,
    dicts: Vec<DictLocation>,
    dict_refs: HashMap<(u32, u64), u32>,
}

impl ChunkDict {
    pub fn new() -> Self {
        Self::default()
    }

    /// Chunks known.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Id of a known chunk.
    pub fn get(&self, d: &Digest) -> Option<u32> {
        self.table.find(hash(d), |&id| &self.digests[id as usize] == d).copied()
    }

    /// The chunk's id, and whether it was unknown (then it is added, `len` bytes long). A chunk
    /// known already keeps the length it came with.
    pub fn intern(&mut self, d: &Digest, len: u32) -> (u32, bool) {
        let digests = &self.digests;
        if let Some(&id) = self.table.find(hash(d), |&id| &digests[id as usize] == d) {
            return (id, false);
        }
        let id = u32::try_from(self.digests.len()).expect("fewer than 2^32 chunks");
        self.digests.push(*d);
        self.recs.push(Rec { len, place: Place::Unplaced, spool: None, foreign: false });
        let digests = &self.digests;
        self.table.insert_unique(hash(d), id, |&i| hash(&digests[i as usize]));
        (id, true)
    }

    /// [`Self::intern`] for `digests.len() / 32` chunks at once; their ids land in `ids`. A chunk is
    /// new in this call where its id equals the count of new ones before it plus the size before the
    /// call (ids of new chunks are handed out in order).
    pub fn intern_all(&mut self, digests: &[u8], lens: &[u32], ids: &mut [u32]) {
        for ((d, &len), id) in digests.chunks_exact(32).zip(lens).zip(ids.iter_mut()) {
            *id = self.intern(d.try_into().expect("32 bytes"), len).0;
        }
    }

    pub fn digest(&self, id: u32) -> &Digest {
        &self.digests[id as usize]
    }

    pub fn chunk_len(&self, id: u32) -> u32 {
        self.recs[id as usize].len
    }

    /// Neither stored nor claimed: the pack writer still has to place it.
    pub fn unplaced(&self, id: u32) -> bool {
        self.recs[id as usize].place == Place::Unplaced
    }

    pub fn claim(&mut self, id: u32) {
        self.recs[id as usize].place = Place::Claimed;
    }

    pub fn unclaim(&mut self, id: u32) {
        self.recs[id as usize].place = Place::Unplaced;
    }

    pub fn set_location(&mut self, id: u32, at: Location) {
        self.recs[id as usize].place = Place::At(at);
    }

    /// Where the chunk's frame is (None while unplaced or only claimed).
    pub fn location(&self, id: u32) -> Option<Location> {
        match self.recs[id as usize].place {
            Place::At(l) => Some(l),
            _ => None,
        }
    }

    /// A location a destination's TOC claims: used only once verified ([`Self::trust`]).
    pub fn set_foreign(&mut self, id: u32, at: Location) {
        let r = &mut self.recs[id as usize];
        r.place = Place::At(at);
        r.foreign = true;
    }

    pub fn is_foreign(&self, id: u32) -> bool {
        self.recs[id as usize].foreign
    }

    /// Its location is known good now.
    pub fn trust(&mut self, id: u32) {
        self.recs[id as usize].foreign = false;
    }

    pub fn set_spooled(&mut self, id: u32, s: Spooled) {
        self.recs[id as usize].spool = Some(s);
    }

    pub fn spooled(&self, id: u32) -> Option<Spooled> {
        self.recs[id as usize].spool
    }

    /// Pass 2 of an unsorted layer: of `chunks` (the layer's chunks in canonical order, a file
    /// beginning at each index `file_starts` lists, ascending), the ones to place, in order: each
    /// chunk's first occurrence, if it is unplaced, with where the spool holds it. A file boundary
    /// is marked at the next chunk placed from raw bytes (a chunk compressed alone is a frame of its
    /// own, which no boundary changes). An unplaced chunk with nothing spooled is an error.
    pub fn spool_plan(&self, chunks: &[u32], file_starts: &[u32]) -> Result<SpoolPlan> {
        let mut plan = SpoolPlan::default();
        let mut seen = vec![false; self.recs.len()];
        let (mut next_file, mut boundary) = (0usize, false);
        for (i, &id) in chunks.iter().enumerate() {
            while next_file < file_starts.len() && file_starts[next_file] as usize <= i {
                boundary |= file_starts[next_file] as usize == i;
                next_file += 1;
            }
            let rec = self.recs.get(id as usize).ok_or_else(|| Error::invalid(format!("chunk id {id} of {}", self.recs.len())))?;
            if std::mem::replace(&mut seen[id as usize], true) || rec.place != Place::Unplaced {
                continue;
            }
            let sp = rec.spool.ok_or_else(|| Error::invalid(format!("chunk {} has no bytes to place", super::digests::hex(self.digest(id)))))?;
            let raw = sp.compressed_len.is_none();
            plan.ids.push(id);
            plan.offsets.push(sp.offset);
            plan.lens.push(sp.compressed_len.unwrap_or(rec.len));
            plan.raw.push(raw);
            plan.starts.push(raw && std::mem::take(&mut boundary));
        }
        Ok(plan)
    }

    /// The pack table's index of a pack (added when new).
    pub fn pack_ref(&mut self, p: PackName) -> u32 {
        if let Some(&r) = self.pack_refs.get(&p) {
            return r;
        }
        let r = self.packs.len() as u32;
        self.packs.push(p.clone());
        self.pack_refs.insert(p, r);
        r
    }

    /// A dictionary this conversion wrote: a new entry of the dictionary table (a layer written
    /// again after a rollback writes its dictionary again, maybe at the same place).
    pub fn add_dict(&mut self, at: DictLocation) -> u32 {
        self.dicts.push(at);
        self.dicts.len() as u32 - 1
    }

    /// The dictionary table's index of a stored dictionary at `at` (a destination's TOC names it;
    /// added when new, one per pack and offset, the first location given wins).
    pub fn dict_ref(&mut self, at: DictLocation) -> u32 {
        if let Some(&r) = self.dict_refs.get(&(at.pack, at.offset)) {
            return r;
        }
        let r = self.dicts.len() as u32;
        self.dicts.push(at);
        self.dict_refs.insert((at.pack, at.offset), r);
        r
    }

    pub fn dict_location(&self, r: u32) -> DictLocation {
        self.dicts[r as usize]
    }

    pub fn pack_name(&self, r: u32) -> &PackName {
        &self.packs[r as usize]
    }

    /// How trust records (src/convert/trust.ts) name chunk `id`'s location, one line each: the
    /// frame's offset, the offset in the frame, the chunk's length, its hex digest, and for a frame
    /// compressed with a dictionary, where that dictionary is (a frame holds its chunk only with
    /// it): `pack@offset+compressed_len:len`. With the pack its frame is in; None if not placed.
    pub fn location_key(&self, id: u32) -> Option<(&PackName, String)> {
        use std::fmt::Write as _;
        let l = self.location(id)?;
        let mut line = format!("{} {} {} {}", l.offset, l.inner, self.chunk_len(id), super::digests::hex(self.digest(id)));
        if let Some(r) = l.dict {
            let d = self.dict_location(r);
            let _ = match self.pack_name(d.pack) {
                PackName::Stored(p) => write!(line, " {p}@{}+{}:{}", d.offset, d.compressed_len, d.len),
                PackName::Written(n) => write!(line, " {n}@{}+{}:{}", d.offset, d.compressed_len, d.len),
            };
        }
        Some((self.pack_name(l.pack), line))
    }

    /// [`ChunkDict::location_key`] of every chunk from `from` on that is placed in a stored pack,
    /// by pack (in order of first appearance), the lines of a pack in id order.
    pub fn location_keys_from(&self, from: u32) -> Vec<(String, Vec<String>)> {
        let mut by: Vec<(String, Vec<String>)> = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        for id in from..self.digests.len() as u32 {
            if let Some((PackName::Stored(p), line)) = self.location_key(id) {
                let i = *at.entry(p.as_str()).or_insert_with(|| {
                    by.push((p.clone(), Vec::new()));
                    by.len() - 1
                });
                by[i].1.push(line);
            }
        }
        by
    }

    /// The chunks of a stored chunked image (its TOC checked, every chunk digest loaded): each
    /// chunk not known yet is added with the location the TOC claims, foreign until verified
    /// ([`Self::trust`]); a chunk known already keeps its place (the first location given wins).
    /// Returns how many chunks were added.
    pub fn add_stored(&mut self, t: &super::Toc) -> Result<u32> {
        if !t.digests.complete() {
            return Err(Error::invalid("the TOC's chunk digests are not loaded"));
        }
        let bad = |m: String| Error::corrupt(format!("TOC: {m}"));
        let small = |v: u64, what: &str| u32::try_from(v).map_err(|_| bad(format!("{what} {v} is too large")));
        let mut packs: Vec<Option<u32>> = vec![None; t.packs.len()];
        let mut pack = |d: &mut Self, i: u32| -> Result<u32> {
            let slot = packs.get_mut(i as usize).ok_or_else(|| bad(format!("pack {i} does not exist")))?;
            Ok(*slot.get_or_insert_with(|| d.pack_ref(PackName::Stored(t.packs[i as usize].clone()))))
        };
        let mut dicts: Vec<Option<u32>> = vec![None; t.dicts.len()];
        let mut added = 0;
        for (c, ch) in t.chunks.iter().enumerate() {
            let digest = t.digests.get(c as u32).ok_or_else(|| bad(format!("chunk {c} has no digest")))?;
            let (id, fresh) = self.intern(&digest, small(ch.len, "chunk length")?);
            if !fresh {
                continue;
            }
            let f = t.frames.get(ch.frame as usize).ok_or_else(|| bad(format!("frame {} does not exist", ch.frame)))?;
            let dict = match f.dict {
                None => None,
                Some(di) => {
                    let slot = dicts.get_mut(di as usize).ok_or_else(|| bad(format!("dictionary {di} does not exist")))?;
                    Some(match *slot {
                        Some(r) => r,
                        None => {
                            let d = t.dicts[di as usize];
                            let at = DictLocation {
                                pack: pack(self, d.pack)?,
                                offset: d.offset,
                                compressed_len: small(d.compressed_len, "dictionary frame length")?,
                                len: small(d.len, "dictionary length")?,
                            };
                            *slot.insert(self.dict_ref(at))
                        }
                    })
                }
            };
            let at = Location {
                pack: pack(self, f.pack)?,
                offset: f.offset,
                compressed_len: small(f.compressed_len, "frame length")?,
                len: small(f.len, "frame length")?,
                inner: small(ch.offset, "offset in frame")?,
                dict,
            };
            self.set_foreign(id, at);
            added += 1;
        }
        Ok(added)
    }

    /// Pack `n` of the conversion under way was committed as `digest`: locations in it name the
    /// digest from now on, and the next conversion's pack `n` is another pack.
    pub fn resolve_written(&mut self, n: u32, digest: &str) {
        if let Some(r) = self.pack_refs.remove(&PackName::Written(n)) {
            let name = PackName::Stored(digest.to_string());
            self.pack_refs.entry(name.clone()).or_insert(r);
            self.packs[r as usize] = name;
        }
    }

    /// Forget every chunk added after the dictionary had `mark` chunks.
    pub fn truncate(&mut self, mark: usize) {
        for id in mark..self.digests.len() {
            let d = self.digests[id];
            if let Ok(e) = self.table.find_entry(hash(&d), |&i| i as usize == id) {
                e.remove();
            }
        }
        self.digests.truncate(mark);
        self.recs.truncate(mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    fn dig(n: u64) -> Digest {
        Sha256::digest(n.to_le_bytes()).into()
    }

    #[test]
    fn ids_are_ranks_of_arrival_and_repeats_keep_theirs() {
        let mut d = ChunkDict::new();
        assert_eq!(d.intern(&dig(1), 10), (0, true));
        assert_eq!(d.intern(&dig(2), 20), (1, true));
        assert_eq!(d.intern(&dig(1), 99), (0, false));
        assert_eq!(d.chunk_len(0), 10, "a known chunk keeps its first length");
        assert_eq!(d.get(&dig(2)), Some(1));
        assert_eq!(d.get(&dig(3)), None);
        assert_eq!(d.digest(1), &dig(2));
    }

    #[test]
    fn intern_all_matches_one_by_one() {
        let list: Vec<u64> = (0..5000).map(|i| (i * 7919) % 3001).collect();
        let mut bytes = Vec::new();
        let lens: Vec<u32> = list.iter().map(|&n| n as u32 + 1).collect();
        for &n in &list {
            bytes.extend_from_slice(&dig(n));
        }
        let mut a = ChunkDict::new();
        let mut ids = vec![0; list.len()];
        a.intern_all(&bytes, &lens, &mut ids);
        let mut b = ChunkDict::new();
        let one: Vec<u32> = list.iter().map(|&n| b.intern(&dig(n), n as u32 + 1).0).collect();
        assert_eq!(ids, one);
        assert_eq!(a.len(), 3001);
        // new ones are handed out in order
        let mut next = 0;
        for &id in &ids {
            assert!(id <= next);
            if id == next {
                next += 1;
            }
        }
    }

    #[test]
    fn places_spools_and_foreign_locations() {
        let mut d = ChunkDict::new();
        let (id, _) = d.intern(&dig(7), 100);
        assert!(d.unplaced(id));
        d.claim(id);
        assert!(!d.unplaced(id));
        assert_eq!(d.location(id), None);
        d.unclaim(id);
        assert!(d.unplaced(id));
        let at = Location { pack: 3, offset: 1 << 40, compressed_len: 50, len: 300, inner: 200, dict: None };
        d.set_foreign(id, at);
        assert!(d.is_foreign(id) && !d.unplaced(id));
        assert_eq!(d.location(id), Some(at));
        d.trust(id);
        assert!(!d.is_foreign(id));
        // the pack table: written packs get their digests, the next conversion's pack 0 is new
        let w0 = d.pack_ref(PackName::Written(0));
        assert_eq!(d.pack_ref(PackName::Written(0)), w0);
        d.resolve_written(0, "sha256:aa");
        assert_eq!(d.pack_name(w0), &PackName::Stored("sha256:aa".into()));
        assert_eq!(d.pack_ref(PackName::Stored("sha256:aa".into())), w0);
        assert_ne!(d.pack_ref(PackName::Written(0)), w0);
        assert_eq!(d.spooled(id), None);
        d.set_spooled(id, Spooled { offset: 5, compressed_len: Some(4) });
        assert_eq!(d.spooled(id), Some(Spooled { offset: 5, compressed_len: Some(4) }));
    }

    #[test]
    fn location_keys_name_frame_chunk_and_dictionary() {
        let mut d = ChunkDict::new();
        let p = d.pack_ref(PackName::Written(0));
        let q = d.pack_ref(PackName::Stored("sha256:bb".into()));
        let r = d.add_dict(DictLocation { pack: q, offset: 9, compressed_len: 40, len: 112 });
        let ids: Vec<u32> = (1..=4).map(|n| d.intern(&dig(n), 10 * n as u32).0).collect();
        d.set_location(ids[0], Location { pack: p, offset: 1 << 33, compressed_len: 5, len: 10, inner: 0, dict: None });
        d.set_location(ids[1], Location { pack: q, offset: 7, compressed_len: 5, len: 30, inner: 10, dict: Some(r) });
        d.set_location(ids[3], Location { pack: p, offset: 70, compressed_len: 5, len: 40, inner: 0, dict: Some(r) });
        let h = |n: u64| super::super::digests::hex(&dig(n));
        assert_eq!(d.location_key(ids[0]).unwrap(), (&PackName::Written(0), format!("8589934592 0 10 {}", h(1))));
        assert_eq!(d.location_key(ids[1]).unwrap().1, format!("7 10 20 {} sha256:bb@9+40:112", h(2)));
        assert_eq!(d.location_key(ids[2]), None, "not placed");
        // only stored packs are recorded: pack 0 of this conversion once it has its digest
        assert_eq!(d.location_keys_from(0), vec![("sha256:bb".to_string(), vec![format!("7 10 20 {} sha256:bb@9+40:112", h(2))])]);
        d.resolve_written(0, "sha256:aa");
        let all = d.location_keys_from(0);
        assert_eq!(all.iter().map(|(p, k)| (p.as_str(), k.len())).collect::<Vec<_>>(), vec![("sha256:aa", 2), ("sha256:bb", 1)]);
        assert_eq!(all[0].1[1], format!("70 0 40 {} sha256:bb@9+40:112", h(4)));
        assert_eq!(d.location_keys_from(2).len(), 1, "from an id on");
    }

    #[test]
    fn the_spool_plan_places_first_occurrences_of_unplaced_chunks() {
        let mut d = ChunkDict::new();
        let ids: Vec<u32> = (0..6).map(|n| d.intern(&dig(n), 100 + n as u32).0).collect();
        for (k, &id) in ids.iter().enumerate() {
            let compressed_len = if k == 2 { Some(33) } else { None };
            d.set_spooled(id, Spooled { offset: 1000 * k as u64, compressed_len });
        }
        d.claim(ids[4]);
        // files begin at 0, 2 (chunk 2: compressed alone; the boundary waits for chunk 3) and 5
        // (chunk 4, placed already: the boundary goes to chunk 5)
        let order = [ids[0], ids[1], ids[2], ids[0], ids[3], ids[4], ids[5], ids[1]];
        let plan = d.spool_plan(&order, &[0, 2, 5]).unwrap();
        assert_eq!(plan.ids, vec![ids[0], ids[1], ids[2], ids[3], ids[5]]);
        assert_eq!(plan.offsets, vec![0, 1000, 2000, 3000, 5000]);
        assert_eq!(plan.lens, vec![100, 101, 33, 103, 105]);
        assert_eq!(plan.raw, vec![true, true, false, true, true]);
        assert_eq!(plan.starts, vec![true, false, false, true, true]);
        let lost = d.intern(&dig(9), 5).0;
        assert!(d.spool_plan(&[lost], &[0]).is_err(), "an unplaced chunk with no bytes spooled");
        assert!(d.spool_plan(&[99], &[]).is_err(), "an unknown id");
    }

    #[test]
    fn truncate_forgets_what_came_after_the_mark() {
        let mut d = ChunkDict::new();
        for n in 0..1000 {
            d.intern(&dig(n), 1);
        }
        d.truncate(600);
        assert_eq!(d.len(), 600);
        assert_eq!(d.get(&dig(599)), Some(599));
        assert_eq!(d.get(&dig(600)), None);
        assert_eq!(d.get(&dig(999)), None);
        // forgotten chunks come back with new ids, old ones keep theirs
        assert_eq!(d.intern(&dig(900), 1), (600, true));
        assert_eq!(d.intern(&dig(5), 1), (5, false));
        for n in 0..600 {
            assert_eq!(d.get(&dig(n)), Some(n as u32));
        }
    }
}
