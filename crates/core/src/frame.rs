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
    fn level_checked() {
        assert!(compress_frame(&[b"x"], 99).is_err());
    }
}
