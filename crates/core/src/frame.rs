//! Independent zstd frames: content size in the header, no checksum (chunks are verified by
//! SHA-256), single-threaded per frame so the bytes never depend on the thread count.

use crate::{Error, Result};
use std::cell::RefCell;

thread_local! {
    static CCTX: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

pub fn check_level(level: i32) -> Result<()> {
    let range = zstd::compression_level_range();
    if !range.contains(&level) {
        return Err(Error::invalid(format!("zstd level {level} outside {}..={}", range.start(), range.end())));
    }
    Ok(())
}

/// One zstd frame whose content is the concatenation of `parts`.
pub fn compress_frame(parts: &[&[u8]], level: i32) -> Result<Vec<u8>> {
    check_level(level)?;
    let joined;
    let input: &[u8] = if parts.len() == 1 {
        parts[0]
    } else {
        joined = parts.concat();
        &joined
    };
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l != level).unwrap_or(true) {
            let comp = zstd::bulk::Compressor::new(level).map_err(|e| Error::io("zstd init", &e))?;
            *c = Some((level, comp));
        }
        let (_, comp) = c.as_mut().unwrap();
        comp.compress(input).map_err(|e| Error::io("zstd compress", &e))
    })
}

/// [`compress_frame`] of one part into `dst` (at least zstd's bound for `data`, else an error);
/// returns the frame's length. The same bytes as [`compress_frame`].
pub fn compress_frame_into(data: &[u8], level: i32, dst: &mut [u8]) -> Result<usize> {
    check_level(level)?;
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l != level).unwrap_or(true) {
            let comp = zstd::bulk::Compressor::new(level).map_err(|e| Error::io("zstd init", &e))?;
            *c = Some((level, comp));
        }
        let (_, comp) = c.as_mut().unwrap();
        comp.compress_to_buffer(data, dst).map_err(|e| Error::io("zstd compress", &e))
    })
}

/// [`compress_frame`] with a compressor of its own, freed on return: for a large input compressed
/// once at a high level (a TOC), whose compressor's tables (tens of MiB) the thread would keep.
/// The same bytes as [`compress_frame`].
pub fn compress_frame_once(data: &[u8], level: i32) -> Result<Vec<u8>> {
    check_level(level)?;
    let mut comp = zstd::bulk::Compressor::new(level).map_err(|e| Error::io("zstd init", &e))?;
    comp.compress(data).map_err(|e| Error::io("zstd compress", &e))
}

/// Decompress one frame that must hold exactly `expected_len` bytes.
pub fn decompress_frame(frame: &[u8], expected_len: usize) -> Result<Vec<u8>> {
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| Error::io("zstd init", &e))?);
        }
        let out = d.as_mut().unwrap().decompress(frame, expected_len).map_err(|e| Error::corrupt(format!("zstd: {e}")))?;
        if out.len() != expected_len {
            return Err(Error::corrupt(format!("frame holds {} bytes, expected {expected_len}", out.len())));
        }
        Ok(out)
    })
}

/// A zstd dictionary (docs/format.md §5): its bytes, the level frames are compressed at with it, and
/// a table for decompressing. Frames compressed with it name it by the id in its header.
pub struct Dictionary {
    raw: Vec<u8>,
    /// for writing: the level, and an id naming it in each thread's [`PrefixCompressor`] cache
    writing: Option<(i32, u64)>,
    ddict: zstd::zstd_safe::DDict<'static>,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary").field("bytes", &self.raw.len()).finish()
    }
}

impl Dictionary {
    /// For decompressing only.
    pub fn for_reading(raw: Vec<u8>) -> Dictionary {
        let ddict = zstd::zstd_safe::DDict::create(&raw);
        Dictionary { raw, writing: None, ddict }
    }

    /// For compressing at `level` and decompressing.
    pub fn for_writing(raw: Vec<u8>, level: i32) -> Result<Dictionary> {
        check_level(level)?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ddict = zstd::zstd_safe::DDict::create(&raw);
        Ok(Dictionary { raw, writing: Some((level, id)), ddict })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.raw
    }
}

/// Compresses with one dictionary whose bytes lie in its own buffer, each frame's source copied
/// right after them. zstd then sees the dictionary's content and the source as one contiguous
/// window (its prefix mode) instead of two segments (extDict mode, what a dictionary kept apart
/// gives): the same dictionary and tables, frames any zstd decoder reads with the dictionary, and
/// ~10% less CPU for frames of 32-128 KiB at level 6 (docs/benchmarks.md, 2026-12-05). The bytes
/// depend only on the dictionary, the level and the source, never on the thread or what it
/// compressed before (every frame starts from a copy of the dictionary's tables).
struct PrefixCompressor {
    id: u64,
    dict_len: usize,
    /// an allocation of `len` bytes: the dictionary's, then room for a source. Only ever reached
    /// through this pointer (never through a Rust reference, which would claim the bytes zstd
    /// reads through the CDict); freed in Drop, after the CDict.
    base: *mut u8,
    len: usize,
    cdict: *mut zstd_sys::ZSTD_CDict,
}

impl PrefixCompressor {
    fn new(dict: &Dictionary, level: i32, id: u64, room: usize) -> Result<PrefixCompressor> {
        let dict_len = dict.raw.len();
        let len = dict_len.checked_add(room).ok_or_else(|| Error::invalid("zstd: a source too large for a frame"))?;
        let base = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
        let mut c = PrefixCompressor { id, dict_len, base, len, cdict: std::ptr::null_mut() };
        // SAFETY: `base` holds `len` >= `dict_len` bytes, apart from `dict.raw`. The CDict refers
        // to base[..dict_len] (by reference), which is never written again and lives as long as
        // the CDict (Drop frees the CDict first).
        unsafe {
            std::ptr::copy_nonoverlapping(dict.raw.as_ptr(), base, dict_len);
            c.cdict = zstd_sys::ZSTD_createCDict_byReference(base.cast(), dict_len, level);
        }
        if c.cdict.is_null() {
            return Err(Error::invalid("zstd: cannot prepare the dictionary for compressing"));
        }
        Ok(c)
    }

    fn room(&self) -> usize {
        self.len - self.dict_len
    }

    fn compress(&mut self, cctx: &RawCCtx, src: &[u8], dst: &mut [u8]) -> Result<usize> {
        if src.len() > self.room() {
            return Err(Error::invalid(format!("zstd: a {}-byte source where {} fit", src.len(), self.room())));
        }
        // SAFETY: base[dict_len..dict_len + src.len()] lies inside the allocation (checked above)
        // and apart from `src`; zstd reads the source there, right after the dictionary's bytes,
        // and writes at most dst.len() bytes into dst; the CDict and the context are live.
        let n = unsafe {
            let at = self.base.add(self.dict_len);
            std::ptr::copy_nonoverlapping(src.as_ptr(), at, src.len());
            zstd_sys::ZSTD_compress_usingCDict(cctx.0, dst.as_mut_ptr().cast(), dst.len(), at.cast(), src.len(), self.cdict)
        };
        if unsafe { zstd_sys::ZSTD_isError(n) } != 0 {
            return Err(Error::invalid(format!("zstd: {}", zstd::zstd_safe::get_error_name(n))));
        }
        Ok(n)
    }
}

impl Drop for PrefixCompressor {
    fn drop(&mut self) {
        // SAFETY: the CDict (possibly null, which zstd ignores) is freed once, before the bytes it
        // refers to; `base` came from Box::into_raw of a boxed slice of `len` bytes.
        unsafe {
            zstd_sys::ZSTD_freeCDict(self.cdict);
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.base, self.len)));
        }
    }
}

/// A compression context of zstd's own API (the prefixes above are compressed through it).
struct RawCCtx(*mut zstd_sys::ZSTD_CCtx);

impl Drop for RawCCtx {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createCCtx, freed once.
        unsafe { zstd_sys::ZSTD_freeCCtx(self.0) };
    }
}

/// A thread's context and the dictionaries it compressed with last (a layer's own and the carried
/// one), newest first.
struct Prefixes {
    cctx: Option<RawCCtx>,
    kept: Vec<PrefixCompressor>,
}

thread_local! {
    static PREFIX: RefCell<Prefixes> = const { RefCell::new(Prefixes { cctx: None, kept: Vec::new() }) };
    static DICT_DCTX: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// How many dictionaries each thread keeps prepared (a batch mixes a layer's own and the carried one).
const PREFIX_KEEP: usize = 2;

/// One frame of `src` compressed with `dict` (at the level it was prepared for), content size in
/// the header, no checksum.
pub fn compress_frame_with(src: &[u8], dict: &Dictionary) -> Result<Vec<u8>> {
    let mut out = vec![0u8; zstd::zstd_safe::compress_bound(src.len())];
    let n = compress_frame_with_into(src, dict, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// [`compress_frame_with`] into `dst` (room for zstd's bound): the frame's length.
pub fn compress_frame_with_into(src: &[u8], dict: &Dictionary, dst: &mut [u8]) -> Result<usize> {
    let (level, id) = dict.writing.ok_or_else(|| Error::invalid("dictionary prepared for reading only"))?;
    PREFIX.with(|p| {
        let mut guard = p.borrow_mut();
        let Prefixes { cctx, kept: p } = &mut *guard;
        // this dictionary's compressor goes first; prepared (again) when missing or too small
        let found = p.iter().position(|c| c.id == id);
        if let Some(i) = found {
            let c = p.remove(i);
            p.insert(0, c);
        }
        if found.is_none() || p[0].room() < src.len() {
            if found.is_some() {
                p.remove(0);
            }
            // room for a frame of most sizes at once
            p.insert(0, PrefixCompressor::new(dict, level, id, src.len().max(1 << 20))?);
            p.truncate(PREFIX_KEEP);
        }
        if cctx.is_none() {
            // SAFETY: a plain allocation; null (out of memory) is checked.
            let c = unsafe { zstd_sys::ZSTD_createCCtx() };
            if c.is_null() {
                return Err(Error::invalid("zstd: cannot allocate a compression context"));
            }
            *cctx = Some(RawCCtx(c));
        }
        p[0].compress(cctx.as_ref().unwrap(), src, dst)
    })
}

/// Decompress one frame into `out`, which it must fill exactly; with `dict` when the frame was
/// compressed with one.
pub fn decompress_frame_with(frame: &[u8], out: &mut [u8], dict: Option<&Dictionary>) -> Result<()> {
    let Some(dict) = dict else { return crate::batch::decompress_frame_into(frame, out) };
    let n = DICT_DCTX.with(|d| {
        let mut d = d.borrow_mut();
        let dctx = d.get_or_insert_with(zstd::zstd_safe::DCtx::create);
        dctx.decompress_using_ddict(&mut *out, frame, &dict.ddict).map_err(|e| Error::corrupt(format!("zstd: {}", zstd::zstd_safe::get_error_name(e))))
    })?;
    if n != out.len() {
        return Err(Error::corrupt(format!("frame holds {n} bytes, expected {}", out.len())));
    }
    Ok(())
}

/// Train a dictionary of at most `size` bytes from samples (`data`, cut at `sizes`), for frames of
/// `level`: fastCover with fixed parameters, single-threaded, so the same samples always give the
/// same dictionary (with the zstd version pinned in Cargo.lock). None when zstd finds too little
/// to learn from.
pub fn train_dictionary(data: &[u8], sizes: &[usize], size: usize, level: i32) -> Option<Vec<u8>> {
    use zstd_sys::*;
    if sizes.iter().sum::<usize>() != data.len() || sizes.is_empty() {
        return None;
    }
    let mut out = vec![0u8; size];
    let params = ZDICT_fastCover_params_t {
        k: 1024,
        d: 8,
        f: 20,
        steps: 0,
        nbThreads: 0,
        splitPoint: 1.0,
        accel: 10,
        shrinkDict: 0,
        shrinkDictMaxRegression: 0,
        zParams: ZDICT_params_t { compressionLevel: level, notificationLevel: 0, dictID: 0 },
    };
    // SAFETY: `out` has room for `size` bytes; `sizes` adds up to `data.len()` (checked above).
    let r = unsafe { ZDICT_trainFromBuffer_fastCover(out.as_mut_ptr().cast(), out.len(), data.as_ptr().cast(), sizes.as_ptr(), sizes.len() as u32, params) };
    // SAFETY: a plain function of the returned code
    if unsafe { ZDICT_isError(r) } != 0 {
        return None;
    }
    out.truncate(r);
    Some(out)
}

/// Decompress a whole buffer (one or more frames) of at most `max_len` bytes of output. The output
/// grows by doubling but never beyond `max_len` bytes, whatever the input claims or holds.
pub fn decompress_bytes(data: &[u8], max_len: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut dec = zstd::stream::read::Decoder::new(data).map_err(|e| Error::corrupt(format!("zstd: {e}")))?;
    let mut out = Vec::new();
    let mut piece = vec![0u8; (64 << 10).min(max_len.saturating_add(1))];
    loop {
        let n = match dec.read(&mut piece) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::corrupt(format!("zstd: {e}"))),
        };
        if n > max_len - out.len() {
            return Err(Error::corrupt(format!("decompressed data exceeds {max_len} bytes")));
        }
        if out.len() + n > out.capacity() {
            // read_to_end would double past the limit (a 128 MiB cap, a 256 MiB buffer)
            let cap = (out.capacity() * 2).clamp(out.len() + n, max_len);
            out.reserve_exact(cap - out.len());
        }
        out.extend_from_slice(&piece[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_concatenation() {
        let a = b"hello hello hello hello ".repeat(100);
        let b = b"world".repeat(50);
        let f = compress_frame(&[&a, &b], 3).unwrap();
        let out = decompress_frame(&f, a.len() + b.len()).unwrap();
        assert_eq!(&out[..a.len()], &a[..]);
        assert_eq!(&out[a.len()..], &b[..]);
        // a frame is a valid zstd stream on its own, with its content size
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&f).unwrap(), Some((a.len() + b.len()) as u64));
        assert_eq!(decompress_bytes(&f, 1 << 20).unwrap(), out);
    }

    #[test]
    fn corrupt_and_wrong_size_are_errors() {
        let d = vec![7u8; 100_000];
        let mut f = compress_frame(&[&d], 3).unwrap();
        assert!(decompress_frame(&f, 99_999).is_err());
        let n = f.len();
        f[n / 2] ^= 0xff;
        f[n - 1] ^= 0xff;
        let r = decompress_frame(&f, 100_000);
        assert!(r.is_err() || r.unwrap() != d);
        assert!(decompress_frame(b"not zstd at all", 10).is_err());
        assert!(decompress_bytes(&compress_frame(&[&d], 3).unwrap(), 1000).is_err());
    }

    #[test]
    fn dictionaries_train_the_same_and_round_trip() {
        let samples: Vec<Vec<u8>> =
            (0..2000).map(|i| format!("import json, sys # module {i}\ndef f{i}(x):\n    return x * {}\n", i * 7).repeat(1 + i % 5).into_bytes()).collect();
        let sizes: Vec<usize> = samples.iter().map(Vec::len).collect();
        let data = samples.concat();
        let a = train_dictionary(&data, &sizes, 16 << 10, 6).unwrap();
        assert_eq!(train_dictionary(&data, &sizes, 16 << 10, 6).unwrap(), a, "deterministic");
        assert!(a.len() <= 16 << 10);
        let d = Dictionary::for_writing(a.clone(), 6).unwrap();
        let src = samples[77].clone();
        let f = compress_frame_with(&src, &d).unwrap();
        assert!(f.len() < compress_frame(&[&src], 6).unwrap().len(), "the dictionary helps");
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&f).unwrap(), Some(src.len() as u64));
        let mut out = vec![0u8; src.len()];
        decompress_frame_with(&f, &mut out, Some(&Dictionary::for_reading(a))).unwrap();
        assert_eq!(out, src);
        // without it, or into a buffer of another size: errors, never garbage
        assert!(decompress_frame_with(&f, &mut out, None).is_err());
        let mut short = vec![0u8; src.len() - 1];
        assert!(decompress_frame_with(&f, &mut short, Some(&d)).is_err());
        assert!(train_dictionary(b"ab", &[1], 1024, 3).is_none(), "sizes must add up");
    }

    #[test]
    fn dictionary_frames_depend_on_their_source_alone() {
        let samples: Vec<Vec<u8>> = (0..3000).map(|i| format!("fn item_{i}() -> u32 {{ {} }}\n// {}\n", i * 31, "x".repeat(i % 40)).into_bytes()).collect();
        let sizes: Vec<usize> = samples.iter().map(Vec::len).collect();
        let raw = train_dictionary(&samples.concat(), &sizes, 8 << 10, 6).unwrap();
        let d = Dictionary::for_writing(raw.clone(), 6).unwrap();
        let other = Dictionary::for_writing(raw.clone(), 3).unwrap();
        let third = Dictionary::for_writing(raw.clone(), 9).unwrap();
        let small = samples[100..140].concat();
        // bigger than the room a thread prepares first: prepared again
        let big: Vec<u8> = (0..(1usize << 20) + 4096).map(|i| (i * 7 % 251) as u8 ^ samples[i % 3000][0]).collect();
        let first = compress_frame_with(&small, &d).unwrap();
        let first_big = compress_frame_with(&big, &d).unwrap();
        // whatever the thread compressed before, with this dictionary or others, the same bytes
        for _ in 0..2 {
            compress_frame_with(&big, &other).unwrap();
            compress_frame_with(&samples[7], &third).unwrap();
            assert_eq!(compress_frame_with(&small, &d).unwrap(), first);
            assert_eq!(compress_frame_with(&big, &d).unwrap(), first_big);
        }
        let elsewhere = std::thread::spawn({
            let (small, raw) = (small.clone(), raw.clone());
            move || compress_frame_with(&small, &Dictionary::for_writing(raw, 6).unwrap()).unwrap()
        });
        assert_eq!(elsewhere.join().unwrap(), first, "another thread, another preparation: the same frame");
        for (f, src) in [(&first, &small), (&first_big, &big)] {
            let mut out = vec![0u8; src.len()];
            decompress_frame_with(f, &mut out, Some(&Dictionary::for_reading(raw.clone()))).unwrap();
            assert_eq!(&out, src);
        }
        assert!(compress_frame_with(&small, &Dictionary::for_reading(raw)).is_err(), "prepared for reading only");
    }

    #[test]
    fn level_checked() {
        assert!(compress_frame(&[b"x"], 99).is_err());
    }
}
