//! The layout of the content-addressed chunk cache every process shares (`ocichunk` mount, `cat`,
//! lazy pulls): a chunk with SHA-256 `hex` is the file `<dir>/sha256/<hex[0..2]>/<hex>` holding its
//! uncompressed bytes; files are written under `<dir>/tmp` and renamed into place. Readers verify a
//! chunk's digest before using it. The one owner of these paths (the JavaScript cache asks here).

use crate::{Error, Result};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where new chunk files are written before they are renamed into place.
pub const TMP_DIR: &str = "tmp";
/// Where chunk files are, one directory per first byte.
pub const CHUNK_DIR: &str = "sha256";

/// The cache file of chunk `hex` (64 lowercase hex digits; anything else is not a chunk name).
pub fn chunk_path(dir: &Path, hex: &str) -> PathBuf {
    debug_assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    dir.join(CHUNK_DIR).join(&hex[..2.min(hex.len())]).join(hex)
}

/// Tells the temp files of one process apart (the process id tells processes apart).
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Store chunks `(hex, bytes)` whose digests the caller verified: each one not in the cache yet is
/// written to a temp file under [`TMP_DIR`] and renamed into place, so no reader ever sees a partial
/// chunk. Returns, per chunk, whether it was stored by this call (false: it was there already).
pub fn put_many(dir: &Path, chunks: &[(&str, &[u8])]) -> Result<Vec<bool>> {
    let tmp_dir = dir.join(TMP_DIR);
    let mut made: HashSet<PathBuf> = HashSet::new();
    let mut out = Vec::with_capacity(chunks.len());
    for &(hex, bytes) in chunks {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::invalid(format!("{hex:?} is not a sha256 hex digest")));
        }
        let fin = chunk_path(dir, hex);
        if fin.exists() {
            out.push(false);
            continue;
        }
        let tmp = tmp_dir.join(format!("{hex}.{}.{}", std::process::id(), TMP_SEQ.fetch_add(1, Ordering::Relaxed)));
        let written = (|| -> Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| Error::io(format!("create {}", tmp.display()), &e))?;
            f.write_all(bytes).map_err(|e| Error::io(format!("write {}", tmp.display()), &e))?;
            drop(f);
            let parent = fin.parent().expect("a chunk path has a directory");
            if !made.contains(parent) {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("mkdir {}", parent.display()), &e))?;
                made.insert(parent.to_path_buf());
            }
            if let Err(e) = std::fs::rename(&tmp, &fin) {
                // its directory removed meanwhile (by another process's eviction): once more
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(Error::io(format!("rename {}", tmp.display()), &e));
                }
                std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("mkdir {}", parent.display()), &e))?;
                std::fs::rename(&tmp, &fin).map_err(|e| Error::io(format!("rename {}", tmp.display()), &e))?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        out.push(true);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn put_many_stores_each_chunk_once_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(super::TMP_DIR)).unwrap();
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        let got = super::put_many(dir.path(), &[(&a, b"one"), (&b, b"two"), (&a, b"one")]).unwrap();
        assert_eq!(got, vec![true, true, false]);
        assert_eq!(std::fs::read(super::chunk_path(dir.path(), &b)).unwrap(), b"two");
        assert_eq!(super::put_many(dir.path(), &[(&b, b"two")]).unwrap(), vec![false]);
        assert_eq!(std::fs::read_dir(dir.path().join(super::TMP_DIR)).unwrap().count(), 0);
        // a name that is not a digest never becomes a path
        let e = super::put_many(dir.path(), &[("../../x", b"")]).unwrap_err();
        assert_eq!(e.code(), crate::Code::Invalid);
        // an unwritable temp directory: a typed I/O error, nothing stored
        std::fs::remove_dir(dir.path().join(super::TMP_DIR)).unwrap();
        let e = super::put_many(dir.path(), &[(&"ef".repeat(32), b"x")]).unwrap_err();
        assert_eq!(e.code(), crate::Code::NotFound);
        assert!(!super::chunk_path(dir.path(), &"ef".repeat(32)).exists());
    }

    #[test]
    fn chunk_path_is_sha256_fanout() {
        let h = "ab".repeat(32);
        assert_eq!(super::chunk_path(std::path::Path::new("/c"), &h), std::path::PathBuf::from(format!("/c/sha256/ab/{h}")));
    }
}
