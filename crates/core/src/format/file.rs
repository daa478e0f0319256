//! Where a regular file's bytes are: its chunks in file order and the offset at which each starts.
//! The one offset -> chunk lookup of every reader (the mount, `cat`, prefetching): a read of
//! `[offset, offset + length)` becomes the pieces of the chunks that hold it.

use std::ops::Range;

/// A file's chunk map: TOC chunk indexes and their start offsets (plus the size at the end).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileMap {
    pub chunks: Vec<u32>,
    /// `starts[i]`: file offset of `chunks[i]`; `starts[chunks.len()]`: the file's size
    pub starts: Vec<u64>,
}

/// One chunk's part of a read: bytes `[from, to)` of chunk `chunk` (the file's `pos`-th), which go
/// at `at` in the read's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub pos: usize,
    pub chunk: u32,
    pub from: u64,
    pub to: u64,
    pub at: u64,
}

impl FileMap {
    /// `len_of(c)`: the length of TOC chunk `c` (None: no such chunk).
    pub fn new(chunks: Vec<u32>, len_of: impl Fn(u32) -> Option<u64>) -> Option<FileMap> {
        let mut starts = Vec::with_capacity(chunks.len() + 1);
        let mut at = 0u64;
        starts.push(0);
        for &c in &chunks {
            at = at.checked_add(len_of(c)?)?;
            starts.push(at);
        }
        Some(FileMap { chunks, starts })
    }

    pub fn size(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    /// Positions (in `chunks`) of the chunks holding any byte of `[offset, offset + length)`, the
    /// range clipped to the file.
    pub fn span(&self, offset: u64, length: u64) -> Range<usize> {
        let end = self.size().min(offset.saturating_add(length));
        if offset >= end {
            return 0..0;
        }
        // the last chunk starting at or before `offset`; zero-length chunks do not exist (format rule)
        let first = self.starts[..self.chunks.len()].partition_point(|&s| s <= offset) - 1;
        let last = self.starts[..self.chunks.len()].partition_point(|&s| s < end);
        first..last
    }

    /// The pieces of a read of `[offset, offset + length)` (clipped to the file), in file order.
    pub fn pieces(&self, offset: u64, length: u64) -> impl Iterator<Item = Piece> + '_ {
        let end = self.size().min(offset.saturating_add(length));
        self.span(offset, length).map(move |pos| {
            let s = self.starts[pos];
            Piece { pos, chunk: self.chunks[pos], from: offset.max(s) - s, to: end.min(self.starts[pos + 1]) - s, at: offset.max(s) - offset }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(lens: &[u64]) -> FileMap {
        FileMap::new((0..lens.len() as u32).collect(), |c| lens.get(c as usize).copied()).unwrap()
    }

    #[test]
    fn span_and_pieces_cover_exactly_the_read() {
        let m = map(&[10, 5, 20]);
        assert_eq!(m.starts, vec![0, 10, 15, 35]);
        assert_eq!(m.span(0, 1), 0..1);
        assert_eq!(m.span(9, 2), 0..2);
        assert_eq!(m.span(10, 5), 1..2);
        assert_eq!(m.span(14, 100), 1..3);
        assert_eq!(m.span(35, 1), 0..0);
        assert_eq!(m.span(3, 0), 0..0);
        assert_eq!(m.span(u64::MAX, u64::MAX), 0..0);
        let p: Vec<Piece> = m.pieces(8, 10).collect();
        assert_eq!(
            p,
            vec![
                Piece { pos: 0, chunk: 0, from: 8, to: 10, at: 0 },
                Piece { pos: 1, chunk: 1, from: 0, to: 5, at: 2 },
                Piece { pos: 2, chunk: 2, from: 0, to: 3, at: 7 },
            ]
        );
    }

    #[test]
    fn every_read_of_a_file_is_its_bytes() {
        // chunk c holds bytes whose value is their file offset (mod 251)
        let lens = [7u64, 1, 13, 64, 2, 30];
        let m = map(&lens);
        let file: Vec<u8> = (0..m.size()).map(|o| (o % 251) as u8).collect();
        for off in 0..=m.size() + 2 {
            for len in [0u64, 1, 2, 6, 7, 8, 20, 200] {
                let mut out = Vec::new();
                for p in m.pieces(off, len) {
                    assert_eq!(p.at as usize, out.len());
                    let s = m.starts[p.pos];
                    out.extend_from_slice(&file[(s + p.from) as usize..(s + p.to) as usize]);
                }
                let end = m.size().min(off + len);
                let want = if off < end { &file[off as usize..end as usize] } else { &[][..] };
                assert_eq!(out, want, "read [{off}, +{len})");
            }
        }
    }

    #[test]
    fn unknown_chunks_and_overflow_are_refused() {
        assert!(FileMap::new(vec![0, 9], |c| (c == 0).then_some(1)).is_none());
        assert!(FileMap::new(vec![0, 0], |_| Some(u64::MAX)).is_none());
        assert_eq!(FileMap::new(vec![], |_| None).unwrap().size(), 0);
    }
}
