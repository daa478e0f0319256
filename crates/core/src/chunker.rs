//! Cutting file contents into chunks.
//!
//! * `Cdc { min, avg, max }`: FastCDC (Xia et al., 2016/2020): a gear rolling hash, no cut before
//!   `min`, a harder mask (more bits) before `avg` and an easier one after it (normalized chunking,
//!   level 1), and a forced cut at `max`. Defaults 16 KiB / 64 KiB / 256 KiB.
//! * `Fixed { size }`: a cut every `size` bytes.
//! * `File { max }`: the whole file is one chunk, split only every `max` bytes (default 64 MiB).
//!
//! Streaming: [`cut`] reports only *complete* chunks unless `eof`; a cut depends only on the bytes
//! from the chunk's start, so re-feeding the unfinished tail with more data appended gives exactly
//! the chunks that feeding the whole file at once gives.

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkerParams {
    Cdc { min: usize, avg: usize, max: usize },
    Fixed { size: usize },
    File { max: usize },
}

pub const DEFAULT_CDC: ChunkerParams = ChunkerParams::Cdc { min: 16 << 10, avg: 64 << 10, max: 256 << 10 };

impl ChunkerParams {
    /// Largest chunk this chunker can produce (a caller's carry-over never exceeds it).
    pub fn max_len(&self) -> usize {
        match *self {
            ChunkerParams::Cdc { max, .. } => max,
            ChunkerParams::Fixed { size } => size,
            ChunkerParams::File { max } => max,
        }
    }

    pub fn validate(&self) -> Result<()> {
        // the format's limit on one chunk (crates/core/src/format, docs/format.md §8)
        const LIMIT: usize = crate::format::limits::CHUNK as usize;
        match *self {
            ChunkerParams::Cdc { min, avg, max } => {
                if !(64..=LIMIT).contains(&min) || !(256..=LIMIT).contains(&avg) || max > LIMIT {
                    return Err(Error::invalid(format!("cdc chunker sizes out of range (min {min} >= 64, avg {avg} >= 256, max {max} <= 64 MiB)")));
                }
                if !(min <= avg && avg <= max) {
                    return Err(Error::invalid(format!("cdc chunker needs min <= avg <= max (got {min}/{avg}/{max})")));
                }
                Ok(())
            }
            ChunkerParams::Fixed { size } | ChunkerParams::File { max: size } => {
                if size == 0 || size > LIMIT {
                    return Err(Error::invalid(format!("chunk size {size} must be between 1 byte and 64 MiB")));
                }
                Ok(())
            }
        }
    }
}

/// 256 pseudo-random 64-bit values (splitmix64 from a fixed seed): part of the format, never change.
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut s: u64 = 0x6f63_6963_6875_6e6b; // "ocichunk"
    let mut i = 0;
    while i < 256 {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
};

fn mask(bits: u32) -> u64 {
    let bits = bits.clamp(1, 63);
    !0u64 << (64 - bits)
}

/// Roll the gear hash over `bytes`; the index of the first byte after which `h & mask == 0`.
#[inline(always)]
fn scan(bytes: &[u8], h: &mut u64, mask: u64) -> Option<usize> {
    let mut x = *h;
    let mut chunks = bytes.chunks_exact(4);
    let mut base = 0;
    for c in &mut chunks {
        x = (x << 1).wrapping_add(GEAR[c[0] as usize]);
        if x & mask == 0 {
            return Some(base);
        }
        x = (x << 1).wrapping_add(GEAR[c[1] as usize]);
        if x & mask == 0 {
            return Some(base + 1);
        }
        x = (x << 1).wrapping_add(GEAR[c[2] as usize]);
        if x & mask == 0 {
            return Some(base + 2);
        }
        x = (x << 1).wrapping_add(GEAR[c[3] as usize]);
        if x & mask == 0 {
            return Some(base + 3);
        }
        base += 4;
    }
    for &b in chunks.remainder() {
        x = (x << 1).wrapping_add(GEAR[b as usize]);
        if x & mask == 0 {
            return Some(base);
        }
        base += 1;
    }
    *h = x;
    None
}

/// Length of the first chunk of `data`, or None if it is not complete yet (only when !eof).
fn cdc_first(data: &[u8], min: usize, avg: usize, max: usize, eof: bool) -> Option<usize> {
    let n = data.len();
    if n == 0 {
        return None;
    }
    if n <= min {
        return if eof || n == max { Some(n) } else { None };
    }
    let bits = avg.next_power_of_two().trailing_zeros();
    let mask_s = mask(bits + 1);
    let mask_l = mask(bits.saturating_sub(1));
    let end = n.min(max);
    let normal = avg.min(end);
    // The hot loop: iterators (no bounds checks), the hash update kept to one dependent add.
    let mut h: u64 = 0;
    if let Some(at) = scan(&data[min..normal], &mut h, mask_s) {
        return Some(min + at + 1);
    }
    let from = normal.max(min);
    if let Some(at) = scan(&data[from..end], &mut h, mask_l) {
        return Some(from + at + 1);
    }
    if end == max || eof {
        Some(end)
    } else {
        None
    }
}

/// Lengths of the complete chunks at the start of `data` (all of it, when `eof`).
pub fn cut(data: &[u8], params: ChunkerParams, eof: bool) -> Vec<u32> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let len = match params {
            ChunkerParams::Cdc { min, avg, max } => cdc_first(rest, min, avg, max, eof),
            ChunkerParams::Fixed { size } | ChunkerParams::File { max: size } => {
                if rest.len() >= size {
                    Some(size)
                } else if eof {
                    Some(rest.len())
                } else {
                    None
                }
            }
        };
        match len {
            Some(l) => {
                out.push(l as u32);
                pos += l;
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn cdc_sizes_within_bounds_and_cover_input() {
        let d = data(5 << 20, 7);
        let p = DEFAULT_CDC;
        let c = cut(&d, p, true);
        assert_eq!(c.iter().map(|&x| x as usize).sum::<usize>(), d.len());
        for &l in &c[..c.len() - 1] {
            assert!((16 << 10..=256 << 10).contains(&(l as usize)), "chunk {l}");
        }
        let avg = d.len() / c.len();
        assert!(avg > 40 << 10 && avg < 110 << 10, "average {avg}");
    }

    #[test]
    fn streaming_equals_whole() {
        let d = data(3 << 20, 11);
        for p in [DEFAULT_CDC, ChunkerParams::Fixed { size: 100_000 }, ChunkerParams::File { max: 1 << 20 }] {
            let whole = cut(&d, p, true);
            for piece in [7_919usize, 65_537, 300_000, 1 << 20] {
                let mut got = Vec::new();
                let mut start = 0; // start of the unfinished chunk
                let mut fed = 0;
                while fed < d.len() {
                    fed = (fed + piece).min(d.len());
                    let eof = fed == d.len();
                    let cs = cut(&d[start..fed], p, eof);
                    for l in cs {
                        start += l as usize;
                        got.push(l);
                    }
                }
                assert_eq!(got, whole, "{p:?} piece {piece}");
            }
        }
    }

    #[test]
    fn boundaries_resynchronize_after_an_edit() {
        let d = data(2 << 20, 3);
        let mut e = d.clone();
        e.splice(1000..1000, [1u8, 2, 3, 4, 5]);
        let a = cut(&d, DEFAULT_CDC, true);
        let b = cut(&e, DEFAULT_CDC, true);
        // after the first few chunks, the rest is the same sequence
        let tail_a: Vec<_> = a.iter().rev().take(a.len() - 3).collect();
        let tail_b: Vec<_> = b.iter().rev().take(a.len() - 3).collect();
        assert_eq!(tail_a, tail_b);
    }

    /// The plain byte-at-a-time loop the format was defined with.
    fn cdc_first_reference(data: &[u8], min: usize, avg: usize, max: usize, eof: bool) -> Option<usize> {
        let n = data.len();
        if n == 0 {
            return None;
        }
        if n <= min {
            return if eof || n == max { Some(n) } else { None };
        }
        let bits = avg.next_power_of_two().trailing_zeros();
        let (mask_s, mask_l) = (mask(bits + 1), mask(bits.saturating_sub(1)));
        let end = n.min(max);
        let normal = avg.min(end);
        let mut h: u64 = 0;
        for i in min..end {
            h = (h << 1).wrapping_add(GEAR[data[i] as usize]);
            if h & (if i < normal { mask_s } else { mask_l }) == 0 {
                return Some(i + 1);
            }
        }
        if end == max || eof {
            Some(end)
        } else {
            None
        }
    }

    #[test]
    fn unrolled_loop_equals_reference() {
        // low-entropy data too, so that cuts fall in every position of the unrolled loop
        let mut d = data(3 << 20, 5);
        for (i, b) in d.iter_mut().enumerate().skip(1 << 20).take(1 << 20) {
            *b = if i % 7 == 0 { *b } else { b'a' };
        }
        for (min, avg, max) in [(16 << 10, 64 << 10, 256 << 10), (64, 256, 1024), (100, 300, 301), (4096, 4096, 4096), (2048, 8192, 65536)] {
            let mut pos = 0;
            while pos < d.len() {
                let a = cdc_first(&d[pos..], min, avg, max, true);
                let b = cdc_first_reference(&d[pos..], min, avg, max, true);
                assert_eq!(a, b, "{min}/{avg}/{max} at {pos}");
                // also an unfinished prefix
                let cut_short = &d[pos..(pos + max / 2 + 3).min(d.len())];
                assert_eq!(cdc_first(cut_short, min, avg, max, false), cdc_first_reference(cut_short, min, avg, max, false));
                pos += a.unwrap();
            }
        }
    }

    #[test]
    fn validates_params() {
        assert!(ChunkerParams::Cdc { min: 10, avg: 64, max: 100 }.validate().is_err());
        assert!(ChunkerParams::Cdc { min: 4096, avg: 1024, max: 1 << 20 }.validate().is_err());
        assert!(ChunkerParams::Fixed { size: 0 }.validate().is_err());
        assert!(DEFAULT_CDC.validate().is_ok());
    }

    #[test]
    fn empty_and_tiny() {
        assert!(cut(&[], DEFAULT_CDC, true).is_empty());
        assert_eq!(cut(b"abc", DEFAULT_CDC, true), vec![3]);
        assert!(cut(b"abc", DEFAULT_CDC, false).is_empty());
    }
}
