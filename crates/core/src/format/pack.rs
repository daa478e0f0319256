//! The frame and pack writer (docs/format.md §3): new chunks, in the order the converter places them,
//! become zstd frames and frames become pack blobs.
//!
//! - Chunks of `group_below` bytes or more (the body of a large file) go into run frames: the
//!   consecutive ones of one file share a frame of up to `run_target` bytes, which closes before a
//!   chunk that would take it past that, when it is full and at the end of the file
//!   ([`FrameWriter::file_boundary`]). Smaller ones (small files, file tails, and with the default
//!   chunker every chunk) share a group frame, closed once it holds `group_target` bytes or before
//!   a chunk that would take it past that.
//! - Frames go into the current pack in the order they close; a pack is cut before a frame that
//!   would take a non-empty pack past `pack_target`, and at the end of every layer.
//!
//! What the output is depends only on the order and lengths of the chunks placed, the file
//! boundaries between them (and on the zstd level), never on how placements are batched: closed frames are sealed into batches of about
//! `batch_bytes`, compressed together on a pool ([`compress`]) and landed in order ([`FrameWriter::land`]),
//! which gives every chunk its location in the [`ChunkDict`] and tells the caller what to write
//! where. The caller owns the blob writers (a file, a registry upload): this module never does I/O.

use super::dict::{ChunkDict, DictLocation, Location, PackName};
use crate::frame::Dictionary;
use crate::{batch, Error, Result};
use rayon::prelude::*;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// zstd level of a stored dictionary's frame (it is small, and read by every cold reader of its
/// layer). Level 19 made it ~1% smaller in 26 ms instead of 10, while the layer's batches wait.
pub const DICT_FRAME_LEVEL: i32 = 15;

/// Buffers handed back after compression for the next group and run frames (fresh buffers cost
/// page faults every time).
pub type Recycler = Arc<Mutex<Spare>>;

#[derive(Default)]
pub struct Spare {
    groups: Vec<Vec<u8>>,
    runs: Vec<Vec<u8>>,
}

#[derive(Clone, Copy, Debug)]
pub struct PackOptions {
    pub level: i32,
    /// compression threads (0: the default pool)
    pub threads: usize,
    pub group_below: u32,
    pub group_target: u32,
    /// bytes of a run frame (consecutive chunks of `group_below` bytes or more of one file); below
    /// `group_below`, each such chunk is a frame of its own
    pub run_target: u32,
    pub pack_target: u64,
    pub batch_bytes: u64,
    /// bytes of each layer's zstd dictionary (0: none): trained from the layer's first
    /// `dict_sample` bytes of new chunks, used by the layer's group frames, and by its run frames
    /// unless a lower layer's dictionary is carried (docs/format.md §5)
    pub dict_size: u32,
    pub dict_sample: u64,
}

/// A closed frame's bytes: its own buffer (a group or a run frame), or compressed already.
enum Bytes {
    Group(Vec<u8>),
    Run(Vec<u8>),
    Pre(Vec<u8>),
}

struct FrameSpec {
    bytes: Bytes,
    len: u32,
    /// its chunks; none for a dictionary's frame
    ids: Vec<u32>,
    /// compressed with the carried dictionary (a lower layer's), not the layer's own
    carried: bool,
}

/// Closed frames waiting to be compressed, in order: with `dict`, the layer's dictionary, those
/// marked `carried` with `carried`, the dictionary carried from a lower layer.
#[derive(Default)]
pub struct Sealed {
    frames: Vec<FrameSpec>,
    dict: Option<Arc<Dictionary>>,
    carried: Option<Arc<Dictionary>>,
}

/// The dictionary a frame was compressed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameDict {
    None,
    /// the layer's own
    Layer,
    /// the one carried from a lower layer ([`FrameWriter::carried`])
    Carried,
}

/// A sealed batch compressed: its frames back to back in `data` (None: in the caller's buffer).
pub struct Compressed {
    pub data: Option<Vec<u8>>,
    pub frames: Vec<Landing>,
}

/// A compressed frame: its lengths and chunks (none: the frame holds the layer's dictionary), and
/// the dictionary it was compressed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Landing {
    pub compressed_len: u32,
    pub len: u32,
    pub ids: Vec<u32>,
    pub dict: FrameDict,
}

/// A frame to compress: its input (None: compressed already), its place in the output, its dictionary.
type Place<'a> = (Option<&'a [u8]>, &'a mut [u8], Option<&'a Dictionary>);

/// Compress a sealed batch's frames (the ones not compressed already) on `threads`, into `out`
/// when they fit (else into a new buffer); the batch's buffer goes back to `recycle`
/// ([`FrameWriter::recycler`]). Each frame is compressed straight into its place in the output
/// (room for zstd's bound each, closed up after), so compressing allocates nothing per frame.
pub fn compress(s: Sealed, level: i32, threads: usize, recycle: Option<&Recycler>, out: Option<&mut [u8]>) -> Result<Compressed> {
    crate::frame::check_level(level)?;
    let (dict, carried) = (s.dict.clone(), s.carried.clone());
    let (dict, carried) = (dict.as_deref(), carried.as_deref());
    // each frame's input (None: compressed already) and the room it takes in the output
    let inputs: Vec<(Option<&[u8]>, usize)> = s
        .frames
        .iter()
        .map(|f| match &f.bytes {
            Bytes::Group(g) | Bytes::Run(g) => (Some(&g[..]), zstd::zstd_safe::compress_bound(g.len())),
            Bytes::Pre(p) => (None, p.len()),
        })
        .collect();
    let room: usize = inputs.iter().map(|i| i.1).sum();
    let mut own = Vec::new();
    let into_out = matches!(&out, Some(o) if o.len() >= room);
    let dst: &mut [u8] = match out {
        Some(o) if into_out => o,
        _ => {
            own = vec![0u8; room];
            &mut own
        }
    };
    // the frames' places, in order
    // each frame's input, place and dictionary
    let mut places: Vec<Place> = Vec::with_capacity(inputs.len());
    let mut rest = &mut dst[..room];
    for (i, (input, n)) in inputs.iter().enumerate() {
        let (here, after) = std::mem::take(&mut rest).split_at_mut(*n);
        if let (None, Bytes::Pre(p)) = (input, &s.frames[i].bytes) {
            here.copy_from_slice(p);
        }
        let use_dict = if s.frames[i].carried { carried } else { dict };
        places.push((*input, here, use_dict));
        rest = after;
    }
    let lens: Vec<usize> = batch::run(threads, || {
        places
            .par_iter_mut()
            .map(|(input, here, use_dict)| match input {
                Some(d) => match use_dict {
                    Some(dict) => crate::frame::compress_frame_with_into(d, dict, here),
                    None => crate::frame::compress_frame_into(d, level, here),
                },
                None => Ok(here.len()),
            })
            .collect::<Result<Vec<_>>>()
    })??;
    drop(places);
    drop(inputs);
    // close up: frame i moves from its place down to the end of frame i - 1
    let (mut at, mut from) = (0usize, 0usize);
    let mut frames = Vec::with_capacity(s.frames.len());
    let (with_dict, with_carried) = (dict.is_some(), carried.is_some());
    let Sealed { frames: specs, .. } = s;
    let mut spare = Spare::default();
    for (f, &n) in specs.into_iter().zip(&lens) {
        let room = match &f.bytes {
            Bytes::Group(g) | Bytes::Run(g) => zstd::zstd_safe::compress_bound(g.len()),
            Bytes::Pre(p) => p.len(),
        };
        dst.copy_within(from..from + n, at);
        let clen = u32::try_from(n).map_err(|_| Error::invalid(format!("a frame of {n} compressed bytes")))?;
        match (f.bytes, recycle.is_some()) {
            (Bytes::Group(g), true) => spare.groups.push(g),
            (Bytes::Run(r), true) => spare.runs.push(r),
            _ => {}
        }
        let dict = match (f.ids.is_empty(), f.carried) {
            (true, _) => FrameDict::None,
            (false, true) if with_carried => FrameDict::Carried,
            (false, false) if with_dict => FrameDict::Layer,
            _ => FrameDict::None,
        };
        frames.push(Landing { compressed_len: clen, len: f.len, ids: f.ids, dict });
        at += n;
        from += room;
    }
    if let Some(r) = recycle {
        let mut pool = r.lock().unwrap_or_else(|p| p.into_inner());
        for g in spare.groups.into_iter().take(64usize.saturating_sub(pool.groups.len())) {
            pool.groups.push(g);
        }
        for r in spare.runs.into_iter().take(16usize.saturating_sub(pool.runs.len())) {
            pool.runs.push(r);
        }
    }
    let data = if into_out {
        None
    } else {
        own.truncate(at);
        Some(own)
    };
    Ok(Compressed { data, frames })
}

/// Compress each of `parts` (offset, length) of `data` into a frame of its own, as [`compress`]
/// compresses a run frame of one chunk (at `level`, with `dict`: [`FrameWriter::carried`]), on
/// `threads`, back to back into `out`; returns each frame's length. For a converter that compresses
/// big chunks before they are placed (the unsorted layers' first pass).
pub fn compress_alone(data: &[u8], parts: &[(usize, usize)], dict: Option<&Dictionary>, level: i32, threads: usize, out: &mut [u8]) -> Result<Vec<u32>> {
    crate::frame::check_level(level)?;
    let inputs = parts
        .iter()
        .map(|&(o, l)| data.get(o..o.saturating_add(l)).ok_or_else(|| Error::invalid(format!("part {o}+{l} is outside the {}-byte buffer", data.len()))))
        .collect::<Result<Vec<_>>>()?;
    let frames: Vec<Vec<u8>> = batch::run(threads, || {
        inputs
            .par_iter()
            .map(|d| {
                let mut f = vec![0u8; zstd::zstd_safe::compress_bound(d.len())];
                let n = match dict {
                    Some(dict) => crate::frame::compress_frame_with_into(d, dict, &mut f)?,
                    None => crate::frame::compress_frame_into(d, level, &mut f)?,
                };
                f.truncate(n);
                Ok(f)
            })
            .collect::<Result<Vec<_>>>()
    })??;
    batch::concat_into(&frames, out)
}

/// What the caller does with a landed frame's bytes, `data[start..start + len]` of its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    /// commit the open pack first
    pub close_before: bool,
    /// open pack number `pack` first (numbers count this writer's packs from 0)
    pub open: bool,
    pub pack: u32,
    pub start: usize,
    pub len: usize,
}

/// A frame being filled: its bytes and chunks (none: no frame open).
#[derive(Default)]
struct Filling {
    bytes: Vec<u8>,
    ids: Vec<u32>,
}

#[derive(Clone, Copy)]
enum Kind {
    Group,
    Run,
}

pub struct FrameWriter {
    o: PackOptions,
    cur: Sealed,
    cur_bytes: u64,
    /// the open group frame and the open run frame
    group: Filling,
    run: Filling,
    ready: VecDeque<Sealed>,
    /// ids claimed in this layer (a rollback unclaims them)
    placed: Vec<u32>,
    /// the open pack's number and size
    open: Option<(u32, u64)>,
    next_pack: u32,
    layer_first_pack: u32,
    pool: Recycler,
    /// the layer's dictionary sample (chunks in placement order), and whether sealed batches are
    /// held until it is trained
    sample: Vec<u8>,
    sample_sizes: Vec<usize>,
    holding: bool,
    layer_dict: Option<Arc<Dictionary>>,
    /// the dictionary's frame, to go first into the layer's first batch
    dict_frame: Option<(Vec<u8>, u32)>,
    /// where the layer's dictionary landed (the dictionary table's index)
    landed_dict: Option<u32>,
    /// the dictionary of the last layer below that had one (and where it landed): run frames
    /// are compressed with it, so that a big chunk's frame is known before the layer's own
    /// dictionary is trained (docs/format.md §5)
    carried: Option<(Arc<Dictionary>, u32)>,
}

impl FrameWriter {
    pub fn new(o: PackOptions) -> Result<FrameWriter> {
        crate::frame::check_level(o.level)?;
        if o.group_target == 0
            || o.pack_target == 0
            || o.batch_bytes == 0
            || o.batch_bytes > 1 << 30
            || o.dict_size > super::limits::DICT as u32
            || o.dict_sample > 1 << 30
        {
            return Err(Error::invalid(format!("pack options {o:?}")));
        }
        Ok(FrameWriter {
            o,
            cur: Sealed::default(),
            cur_bytes: 0,
            group: Filling::default(),
            run: Filling::default(),
            ready: VecDeque::new(),
            placed: Vec::new(),
            open: None,
            next_pack: 0,
            layer_first_pack: 0,
            pool: Recycler::default(),
            sample: Vec::new(),
            sample_sizes: Vec::new(),
            holding: false,
            layer_dict: None,
            dict_frame: None,
            landed_dict: None,
            carried: None,
        })
    }

    pub fn options(&self) -> &PackOptions {
        &self.o
    }

    /// Where [`compress`] hands batch buffers back.
    pub fn recycler(&self) -> Recycler {
        self.pool.clone()
    }

    /// Packs opened so far.
    pub fn packs(&self) -> u32 {
        self.next_pack
    }

    /// An image's first layer comes next: no dictionary is carried to it.
    pub fn begin_image(&mut self) {
        self.carried = None;
        self.reset_dict();
    }

    pub fn begin_layer(&mut self) {
        self.placed.clear();
        self.layer_first_pack = self.next_pack;
        // the layer before, finished, had a dictionary: it is carried to this one
        if let (Some(d), Some(at)) = (self.layer_dict.take(), self.landed_dict) {
            self.carried = Some((d, at));
        }
        self.reset_dict();
    }

    /// The dictionary run frames are compressed with in this layer, if a lower layer's is
    /// carried (else they use the layer's own, or none).
    pub fn carried(&self) -> Option<&Arc<Dictionary>> {
        self.carried.as_ref().map(|c| &c.0)
    }

    fn reset_dict(&mut self) {
        self.sample = Vec::new();
        self.sample_sizes = Vec::new();
        self.holding = self.o.dict_size > 0;
        self.layer_dict = None;
        self.dict_frame = None;
        self.landed_dict = None;
    }

    /// Take a placed chunk into the dictionary sample while it is being gathered; train when it is
    /// full.
    fn sample(&mut self, bytes: &[u8]) -> Result<()> {
        if !self.holding {
            return Ok(());
        }
        if bytes.len() >= 16 {
            let room = self.o.dict_sample as usize - self.sample.len();
            let n = bytes.len().min(room);
            self.sample.extend_from_slice(&bytes[..n]);
            self.sample_sizes.push(n);
        }
        if self.sample.len() as u64 >= self.o.dict_sample {
            self.train()?;
        }
        Ok(())
    }

    /// Train the layer's dictionary from the sample (none from less than 4 times its size) and
    /// release the batches held meanwhile.
    fn train(&mut self) -> Result<()> {
        if !self.holding {
            return Ok(());
        }
        self.holding = false;
        let size = self.o.dict_size as usize;
        let sample = std::mem::take(&mut self.sample);
        let sizes = std::mem::take(&mut self.sample_sizes);
        if sample.len() < 4 * size || sizes.len() < 8 {
            return Ok(());
        }
        if let Some(raw) = crate::frame::train_dictionary(&sample, &sizes, size, self.o.level) {
            let frame = crate::frame::compress_frame(&[&raw], DICT_FRAME_LEVEL)?;
            self.dict_frame = Some((frame, raw.len() as u32));
            self.layer_dict = Some(Arc::new(Dictionary::for_writing(raw, self.o.level)?));
        }
        Ok(())
    }

    fn close_frame(&mut self, f: FrameSpec) {
        self.cur_bytes += u64::from(f.len);
        self.cur.frames.push(f);
        if self.cur_bytes >= self.o.batch_bytes {
            self.seal();
        }
    }

    fn seal(&mut self) {
        if !self.cur.frames.is_empty() {
            self.ready.push_back(std::mem::take(&mut self.cur));
        }
        self.cur_bytes = 0;
    }

    fn close_group(&mut self) {
        self.close(Kind::Group);
    }

    fn close_run(&mut self) {
        self.close(Kind::Run);
    }

    fn filling(&mut self, kind: Kind) -> &mut Filling {
        match kind {
            Kind::Group => &mut self.group,
            Kind::Run => &mut self.run,
        }
    }

    /// Close the open frame of this kind, if any; the next one fills a recycled buffer.
    fn close(&mut self, kind: Kind) {
        if self.filling(kind).ids.is_empty() {
            return;
        }
        let spare = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            match kind {
                Kind::Group => pool.groups.pop(),
                Kind::Run => pool.runs.pop(),
            }
        };
        let open = self.filling(kind);
        let ids = std::mem::take(&mut open.ids);
        let bytes = std::mem::replace(&mut open.bytes, spare.unwrap_or_default());
        open.bytes.clear();
        let len = bytes.len() as u32;
        let bytes = match kind {
            Kind::Group => Bytes::Group(bytes),
            Kind::Run => Bytes::Run(bytes),
        };
        let carried = matches!(kind, Kind::Run) && self.carried.is_some();
        self.close_frame(FrameSpec { bytes, len, ids, carried });
    }

    /// Add a chunk to the open frame of this kind, which closes first if the chunk would take it
    /// past `target` bytes, and after, once it holds `target` bytes.
    fn fill(&mut self, kind: Kind, id: u32, bytes: &[u8], target: u32) {
        let open = self.filling(kind);
        if !open.ids.is_empty() && open.bytes.len() as u64 + bytes.len() as u64 > u64::from(target) {
            self.close(kind);
        }
        let open = self.filling(kind);
        open.bytes.extend_from_slice(bytes);
        open.ids.push(id);
        if open.bytes.len() as u64 >= u64::from(target) {
            self.close(kind);
        }
    }

    /// A file ends (or begins) here: the open run frame closes, so that a run frame never holds
    /// two files. Between two placements, one boundary or several are the same.
    pub fn file_boundary(&mut self) {
        self.close_run();
    }

    /// Place chunk `id` (its bytes given) unless it is placed already; claims it.
    pub fn place(&mut self, dict: &mut ChunkDict, id: u32, bytes: &[u8]) -> Result<()> {
        if !dict.unplaced(id) {
            return Ok(());
        }
        let len = dict.chunk_len(id);
        if bytes.len() != len as usize {
            return Err(Error::invalid(format!("chunk {id} is {len} bytes, {} given", bytes.len())));
        }
        dict.claim(id);
        self.placed.push(id);
        self.sample(bytes)?;
        if len >= self.o.group_below {
            self.fill(Kind::Run, id, bytes, self.o.run_target);
        } else {
            self.fill(Kind::Group, id, bytes, self.o.group_target);
        }
        Ok(())
    }

    /// Place chunk `id` as `frame`, a zstd frame of it alone compressed earlier by [`compress_alone`]
    /// with this writer's [`FrameWriter::carried`] dictionary (the same bytes [`compress`] would
    /// make), unless it is placed already.
    pub fn place_compressed(&mut self, dict: &mut ChunkDict, id: u32, frame: Vec<u8>) -> Result<()> {
        if !dict.unplaced(id) {
            return Ok(());
        }
        let len = dict.chunk_len(id);
        if len < self.o.group_below {
            return Err(Error::invalid(format!("chunk {id} of {len} bytes belongs in a group frame")));
        }
        if self.o.run_target >= self.o.group_below {
            return Err(Error::invalid("a precompressed chunk where big chunks share run frames"));
        }
        let carried = self.carried.as_ref().map(|c| c.0.clone());
        if self.o.dict_size > 0 && carried.is_none() {
            // compressed without a dictionary, where its frame takes the layer's own: compressed again
            let raw = crate::frame::decompress_frame(&frame, len as usize)?;
            return self.place(dict, id, &raw);
        }
        if self.holding {
            // the sample takes it as the raw chunk it is
            let mut raw = vec![0u8; len as usize];
            crate::frame::decompress_frame_with(&frame, &mut raw, carried.as_deref())?;
            self.sample(&raw)?;
        }
        dict.claim(id);
        self.placed.push(id);
        self.close_frame(FrameSpec { bytes: Bytes::Pre(frame), len, ids: vec![id], carried: carried.is_some() });
        Ok(())
    }

    /// End of a layer's placements: the group frame closes, what is left is sealed (and the
    /// dictionary trained from what the sample holds, if it is not yet).
    pub fn finish_layer(&mut self) -> Result<()> {
        self.close_run();
        self.close_group();
        self.seal();
        self.train()
    }

    /// Sealed batches waiting to be taken (none while the layer's dictionary sample is gathered).
    pub fn ready(&self) -> usize {
        if self.holding {
            0
        } else {
            self.ready.len()
        }
    }

    pub fn take_ready(&mut self) -> Option<Sealed> {
        if self.holding {
            return None;
        }
        let mut s = self.ready.pop_front()?;
        s.dict = self.layer_dict.clone();
        s.carried = self.carried.as_ref().map(|c| c.0.clone());
        if let Some((frame, len)) = self.dict_frame.take() {
            s.frames.insert(0, FrameSpec { bytes: Bytes::Pre(frame), len, ids: Vec::new(), carried: false });
        }
        Some(s)
    }

    /// A compressed batch lands, in the order batches were taken: its chunks get their locations
    /// (pack `PackName::Written(number)` of the dictionary's pack table) and the caller gets the
    /// writes that put its frames into packs.
    pub fn land(&mut self, dict: &mut ChunkDict, frames: &[Landing]) -> Result<Vec<Write>> {
        if let Some(&id) = frames.iter().flat_map(|f| &f.ids).find(|&&id| id as usize >= dict.len()) {
            return Err(Error::invalid(format!("chunk id {id} of {}", dict.len())));
        }
        let mut out = Vec::with_capacity(frames.len());
        let mut at = 0usize;
        for Landing { compressed_len: clen, len: ulen, ids, dict: with_dict } in frames {
            let mut close_before = false;
            if let Some((_, size)) = self.open {
                if size > 0 && size + u64::from(*clen) > self.o.pack_target {
                    close_before = true;
                    self.open = None;
                }
            }
            let open = self.open.is_none();
            let (pack, size) = *self.open.get_or_insert_with(|| {
                self.next_pack += 1;
                (self.next_pack - 1, 0)
            });
            let pref = dict.pack_ref(PackName::Written(pack));
            if ids.is_empty() {
                // the layer's dictionary, landing before any frame compressed with it
                self.landed_dict = Some(dict.add_dict(DictLocation { pack: pref, offset: size, compressed_len: *clen, len: *ulen }));
            }
            let used = match with_dict {
                FrameDict::None => None,
                FrameDict::Layer => Some(self.landed_dict.ok_or_else(|| Error::invalid("a frame compressed with a dictionary that has not landed"))?),
                FrameDict::Carried => {
                    Some(self.carried.as_ref().ok_or_else(|| Error::invalid("a frame compressed with a carried dictionary where none is"))?.1)
                }
            };
            let mut inner = 0u32;
            for &id in ids {
                dict.set_location(id, Location { pack: pref, offset: size, compressed_len: *clen, len: *ulen, inner, dict: used });
                inner += dict.chunk_len(id);
            }
            self.open = Some((pack, size + u64::from(*clen)));
            out.push(Write { close_before, open, pack, start: at, len: *clen as usize });
            at += *clen as usize;
        }
        Ok(out)
    }

    /// The caller committed the open pack (at the end of a layer, after the last batch landed).
    /// Buffers kept for the next batches go back to the allocator: what comes next (the next
    /// layer's scan, the TOC) does not find them in use.
    pub fn pack_closed(&mut self) {
        self.open = None;
        *self.pool.lock().unwrap_or_else(|p| p.into_inner()) = Spare::default();
        self.cur = Sealed::default();
    }

    /// Forget the layer: its chunks are unplaced again, its packs' numbers free (the caller drops
    /// their writers), nothing is pending.
    pub fn rollback_layer(&mut self, dict: &mut ChunkDict) {
        for &id in &self.placed {
            dict.unclaim(id);
        }
        self.placed.clear();
        self.cur = Sealed::default();
        self.cur_bytes = 0;
        self.group = Filling::default();
        self.run = Filling::default();
        self.ready.clear();
        self.open = None;
        self.next_pack = self.layer_first_pack;
        self.reset_dict();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    fn opts(batch_bytes: u64) -> PackOptions {
        PackOptions {
            level: 3,
            threads: 1,
            group_below: 1000,
            group_target: 3000,
            run_target: 0,
            pack_target: 10_000,
            batch_bytes,
            dict_size: 0,
            dict_sample: 0,
        }
    }

    fn chunk(n: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 7 + n * 13) % 251) as u8 ^ (i / 97) as u8).collect()
    }

    /// Compress and land every sealed batch, appending the frames to `packs`.
    fn drain(w: &mut FrameWriter, dict: &mut ChunkDict, packs: &mut Vec<Vec<u8>>) {
        while let Some(s) = w.take_ready() {
            let c = compress(s, w.options().level, 2, Some(&w.recycler()), None).unwrap();
            let data = c.data.clone().unwrap();
            for wr in w.land(dict, &c.frames).unwrap() {
                if wr.open {
                    assert_eq!(wr.pack as usize, packs.len());
                    packs.push(Vec::new());
                }
                packs[wr.pack as usize].extend_from_slice(&data[wr.start..wr.start + wr.len]);
            }
        }
    }

    /// Place chunks of these lengths (index = content), compress and land; returns the packs' bytes.
    fn run(lens: &[usize], batch_bytes: u64) -> (ChunkDict, Vec<Vec<u8>>, Vec<u32>) {
        run_with(opts(batch_bytes), lens, &[], chunk)
    }

    /// [`run`] with these options, file boundaries before the chunks `bounds` and chunk contents
    /// (`content(n, len)` for the `n`th chunk).
    fn run_with(o: PackOptions, lens: &[usize], bounds: &[usize], content: impl Fn(usize, usize) -> Vec<u8>) -> (ChunkDict, Vec<Vec<u8>>, Vec<u32>) {
        let mut dict = ChunkDict::new();
        let mut w = FrameWriter::new(o).unwrap();
        let mut packs: Vec<Vec<u8>> = Vec::new();
        let mut ids = Vec::new();
        w.begin_layer();
        for (n, &len) in lens.iter().enumerate() {
            let b = content(n, len);
            let (id, _) = dict.intern(&Sha256::digest(&b).into(), len as u32);
            ids.push(id);
            if bounds.contains(&n) {
                w.file_boundary();
            }
            w.place(&mut dict, id, &b).unwrap();
            drain(&mut w, &mut dict, &mut packs);
        }
        w.finish_layer().unwrap();
        drain(&mut w, &mut dict, &mut packs);
        w.pack_closed();
        (dict, packs, ids)
    }

    /// Every chunk (the `k`th of `lens`, [`chunk`]`(k, len)`) reads back from its pack.
    fn reads_back(dict: &ChunkDict, packs: &[Vec<u8>], ids: &[u32], lens: &[usize]) {
        for (k, &len) in lens.iter().enumerate() {
            let l = dict.location(ids[k]).unwrap();
            let PackName::Written(p) = dict.pack_name(l.pack).clone() else { panic!("a stored pack") };
            let f = &packs[p as usize][l.offset as usize..(l.offset + u64::from(l.compressed_len)) as usize];
            let raw = crate::frame::decompress_frame(f, l.len as usize).unwrap();
            assert_eq!(&raw[l.inner as usize..l.inner as usize + len], &chunk(k, len)[..], "chunk {k}");
        }
    }

    #[test]
    fn groups_small_chunks_and_gives_big_ones_frames_of_their_own() {
        let lens = [400, 500, 2500, 900, 1200, 300, 2999, 10, 5000, 100];
        let (dict, packs, ids) = run(&lens, 1 << 20);
        let loc = |k: usize| dict.location(ids[k]).unwrap();
        // big chunks close their frames at once, in order; the small ones share the group frame,
        // which closes at the end
        let big = [2, 4, 6, 8];
        for w in big.windows(2) {
            assert!(loc(w[0]).offset < loc(w[1]).offset);
        }
        for k in big {
            assert_eq!((loc(k).len, loc(k).inner), (lens[k] as u32, 0));
        }
        assert_eq!(loc(2).offset, 0);
        let small = [0, 1, 3, 5, 7, 9];
        let mut inner = 0;
        for k in small {
            assert_eq!((loc(k).offset, loc(k).inner, loc(k).len), (loc(0).offset, inner, 2210), "chunk {k}");
            inner += lens[k] as u32;
        }
        assert!(loc(0).offset > loc(8).offset);
        // every chunk reads back from its pack
        reads_back(&dict, &packs, &ids, &lens);
    }

    #[test]
    fn a_group_closes_before_a_chunk_that_would_overflow_it_and_when_full() {
        let (dict, _, ids) = run(&[900, 900, 900, 900, 600, 1500, 999], 1 << 20);
        let loc = |k: usize| dict.location(ids[k]).unwrap();
        assert_eq!((loc(0).len, loc(2).inner), (2700, 1800));
        // 900 + 600 + 1500 would not fit a group; 1500 is big anyway; 900 + 600 + 999 < 3000
        assert_eq!((loc(3).len, loc(4).inner, loc(6).inner), (2499, 900, 1500));
        let (dict, _, ids) = run(&[999, 999, 999, 3, 5], 1 << 20);
        let loc = |k: usize| dict.location(ids[k]).unwrap();
        assert_eq!(loc(0).len, 3000, "a group reaching the target closes");
        assert_eq!((loc(4).len, loc(4).inner), (5, 0));
    }

    #[test]
    fn the_big_chunks_of_one_file_share_run_frames() {
        let o = |batch_bytes| PackOptions { run_target: 5000, ..opts(batch_bytes) };
        // file A: 1500 1500 1500 400; file B: 1200 3000 2000 1100; file C: 1600
        let lens = [1500, 1500, 1500, 400, 1200, 3000, 2000, 1100, 1600];
        let bounds = [4, 8];
        let (dict, packs, ids) = run_with(o(1 << 20), &lens, &bounds, chunk);
        let loc = |k: usize| dict.location(ids[k]).unwrap();
        // A's big chunks share a frame; its tail goes to the group frame
        for (k, inner) in [(0, 0), (1, 1500), (2, 3000)] {
            assert_eq!((loc(k).offset, loc(k).inner, loc(k).len), (loc(0).offset, inner, 4500), "chunk {k}");
        }
        // B: a run closes before a chunk that would take it past the target, and at the file's end
        assert_eq!((loc(4).len, loc(5).inner), (4200, 1200));
        assert_eq!((loc(6).len, loc(6).inner, loc(7).inner), (3100, 0, 2000));
        assert_ne!(loc(6).offset, loc(4).offset);
        // C: a file of its own, never in B's run frame
        assert_eq!((loc(8).len, loc(8).inner), (1600, 0));
        assert_ne!(loc(8).offset, loc(6).offset);
        assert_eq!((loc(3).len, loc(3).inner), (400, 0), "the tail is grouped");
        // the same bytes whatever the batching; every chunk reads back
        let (_, again, _) = run_with(o(1), &lens, &bounds, chunk);
        assert_eq!(again, packs);
        reads_back(&dict, &packs, &ids, &lens);
        // a run that reaches the target closes at once
        let (dict, _, ids) = run_with(o(1 << 20), &[2500, 2500, 1000], &[], chunk);
        assert_eq!((dict.location(ids[1]).unwrap().len, dict.location(ids[2]).unwrap().inner), (5000, 0));
        // no boundaries given: one file's chunks, runs cut by size only
        let (dict, _, ids) = run_with(o(1 << 20), &lens, &[], chunk);
        assert_eq!(dict.location(ids[8]).unwrap().offset, dict.location(ids[7]).unwrap().offset);
    }

    #[test]
    fn output_does_not_depend_on_batching_and_packs_are_cut_at_frames() {
        let lens: Vec<usize> = (0..300).map(|i| [40, 700, 1500, 2900, 90, 4000][i % 6] + i).collect();
        let (d1, a, _) = run(&lens, 1);
        let (d2, b, _) = run(&lens, 1 << 30);
        assert_eq!(a, b);
        assert!(a.len() > 3, "{} packs", a.len());
        for p in &a[..a.len() - 1] {
            assert!(p.len() as u64 <= 10_000 + 6000, "pack of {}", p.len());
        }
        for id in 0..lens.len() as u32 {
            assert_eq!(d1.location(id), d2.location(id));
        }
    }

    /// [`run`] with a dictionary per layer, and contents a dictionary can learn from.
    fn run_dict(lens: &[usize], batch_bytes: u64) -> (ChunkDict, Vec<Vec<u8>>, Vec<u32>) {
        let o = PackOptions { dict_size: 4096, dict_sample: 64 << 10, ..opts(batch_bytes) };
        run_with(o, lens, &[], |n, len| format!("def f{}(x):\n    return json.dumps(x) # {}\n", n % 50, n).bytes().cycle().take(len).collect())
    }

    #[test]
    fn a_layer_dictionary_is_trained_from_its_first_chunks_and_every_frame_uses_it() {
        let lens: Vec<usize> = (0..400).map(|i| [300, 700, 1500, 90, 2500][i % 5] + i).collect();
        let (d1, a, ids) = run_dict(&lens, 1);
        let (_, b, _) = run_dict(&lens, 1 << 30);
        assert_eq!(a, b, "the same bytes whatever the batching");
        // the dictionary's frame comes first in the layer's first pack; every frame names it
        let loc = d1.location(ids[0]).unwrap();
        let r = loc.dict.expect("frames compressed with the layer's dictionary");
        let at = d1.dict_location(r);
        assert_eq!((at.offset, at.len), (0, 4096));
        let raw = crate::frame::decompress_frame(&a[0][..at.compressed_len as usize], at.len as usize).unwrap();
        let dict = Dictionary::for_reading(raw);
        for (k, &len) in lens.iter().enumerate() {
            let l = d1.location(ids[k]).unwrap();
            assert_eq!(l.dict, Some(r), "chunk {k}");
            let PackName::Written(p) = d1.pack_name(l.pack).clone() else { panic!("a stored pack") };
            let f = &a[p as usize][l.offset as usize..(l.offset + u64::from(l.compressed_len)) as usize];
            let mut out = vec![0u8; l.len as usize];
            crate::frame::decompress_frame_with(f, &mut out, Some(&dict)).unwrap();
            assert_eq!(Sha256::digest(&out[l.inner as usize..l.inner as usize + len]).as_slice(), d1.digest(ids[k]), "chunk {k}");
        }
        // a layer too small to learn from has no dictionary
        let (d2, _, ids2) = run_dict(&[500, 600, 700], 1 << 20);
        assert_eq!(d2.location(ids2[0]).unwrap().dict, None);
    }

    /// Two layers with a dictionary each (contents a dictionary can learn from, other in the second
    /// layer), `batch_bytes` per batch; with `ahead`, the second layer's big chunks are compressed
    /// by [`compress_alone`] before they are placed, as an unsorted layer's first pass does.
    /// Returns the dictionary, every pack's bytes, and the second layer's chunk ids.
    fn two_layers(lens: &[usize], batch_bytes: u64, ahead: bool) -> (ChunkDict, Vec<Vec<u8>>, Vec<u32>) {
        let o = PackOptions { dict_size: 4096, dict_sample: 64 << 10, ..opts(batch_bytes) };
        let content = |layer: usize, n: usize, len: usize| -> Vec<u8> {
            format!("def f{}_{layer}(x):\n    return json.dumps(x) # {} {layer}\n", n % 50, n).bytes().cycle().take(len).collect()
        };
        let mut dict = ChunkDict::new();
        let mut w = FrameWriter::new(o).unwrap();
        let mut packs: Vec<Vec<u8>> = Vec::new();
        let mut ids = Vec::new();
        for layer in 0..2 {
            w.begin_layer();
            assert_eq!(w.carried().is_some(), layer == 1, "layer {layer}");
            ids.clear();
            for (n, &len) in lens.iter().enumerate() {
                let b = content(layer, n, len);
                let (id, _) = dict.intern(&Sha256::digest(&b).into(), len as u32);
                ids.push(id);
                if ahead && layer == 1 && len >= o.group_below as usize {
                    let mut out = vec![0u8; len + 1024];
                    let sizes = compress_alone(&b, &[(0, len)], w.carried().map(|d| &**d), o.level, 1, &mut out).unwrap();
                    w.place_compressed(&mut dict, id, out[..sizes[0] as usize].to_vec()).unwrap();
                } else {
                    w.place(&mut dict, id, &b).unwrap();
                }
                drain(&mut w, &mut dict, &mut packs);
            }
            w.finish_layer().unwrap();
            drain(&mut w, &mut dict, &mut packs);
            w.pack_closed();
        }
        // the next layer would carry the second's; the next image's first layer carries none
        w.begin_layer();
        assert!(w.carried().is_some());
        w.begin_image();
        w.begin_layer();
        assert!(w.carried().is_none(), "an image's first layer");
        // every chunk of the second layer reads back with the dictionary its frame names
        for (k, &len) in lens.iter().enumerate() {
            let l = dict.location(ids[k]).unwrap();
            let d = dict.dict_location(l.dict.expect("every frame has a dictionary"));
            let PackName::Written(dp) = dict.pack_name(d.pack).clone() else { panic!("a stored pack") };
            let raw = crate::frame::decompress_frame(&packs[dp as usize][d.offset as usize..(d.offset + u64::from(d.compressed_len)) as usize], d.len as usize)
                .unwrap();
            let PackName::Written(p) = dict.pack_name(l.pack).clone() else { panic!("a stored pack") };
            let f = &packs[p as usize][l.offset as usize..(l.offset + u64::from(l.compressed_len)) as usize];
            let mut out = vec![0u8; l.len as usize];
            crate::frame::decompress_frame_with(f, &mut out, Some(&Dictionary::for_reading(raw))).unwrap();
            assert_eq!(&out[l.inner as usize..l.inner as usize + len], &content(1, k, len)[..], "chunk {k}");
        }
        (dict, packs, ids)
    }

    #[test]
    fn big_chunks_take_the_dictionary_of_the_layer_below_and_may_be_compressed_ahead() {
        let lens: Vec<usize> = (0..400).map(|i| [300, 700, 1500, 90, 2500][i % 5] + i).collect();
        let (d, packs, ids) = two_layers(&lens, 1 << 20, false);
        let first = d.location(0).unwrap().dict.expect("the first layer's dictionary");
        for (k, &len) in lens.iter().enumerate() {
            let l = d.location(ids[k]).unwrap().dict.unwrap();
            if len >= 1000 {
                assert_eq!(l, first, "chunk {k}: a big chunk's frame takes the carried dictionary");
            } else {
                assert_ne!(l, first, "chunk {k}: a group frame takes the layer's own");
            }
        }
        // the same bytes whatever the batching, and with big chunks compressed before they are placed
        assert_eq!(two_layers(&lens, 1, false).1, packs);
        let (d2, ahead, _) = two_layers(&lens, 1 << 20, true);
        assert_eq!(ahead, packs);
        for id in 0..d.len() as u32 {
            assert_eq!(d2.location(id), d.location(id));
        }
        assert_eq!(two_layers(&lens, 1, true).1, packs);
    }

    #[test]
    fn repeats_are_placed_once_and_a_rollback_unplaces() {
        let mut dict = ChunkDict::new();
        let mut w = FrameWriter::new(opts(1 << 20)).unwrap();
        let b = chunk(1, 1500);
        let (id, _) = dict.intern(&Sha256::digest(&b).into(), 1500);
        w.begin_layer();
        w.place(&mut dict, id, &b).unwrap();
        w.place(&mut dict, id, &b).unwrap();
        w.finish_layer().unwrap();
        let s = w.take_ready().unwrap();
        assert_eq!(s.frames.len(), 1);
        assert!(w.take_ready().is_none());
        assert!(!dict.unplaced(id));
        w.rollback_layer(&mut dict);
        assert!(dict.unplaced(id));
        assert_eq!(w.packs(), 0);
        assert!(w.place(&mut dict, id, &b[..10]).is_err(), "a length that is not the chunk's");
        // a precompressed frame lands as given
        let f = crate::frame::compress_frame(&[&b], 3).unwrap();
        w.place_compressed(&mut dict, id, f.clone()).unwrap();
        w.finish_layer().unwrap();
        let mut out = vec![0u8; 1 << 16];
        let c = compress(w.take_ready().unwrap(), 3, 1, None, Some(&mut out)).unwrap();
        assert!(c.data.is_none(), "it fits the caller's buffer");
        assert_eq!(&out[..f.len()], &f[..]);
        let wr = w.land(&mut dict, &c.frames).unwrap();
        assert_eq!(wr, vec![Write { close_before: false, open: true, pack: 0, start: 0, len: f.len() }]);
    }
}
