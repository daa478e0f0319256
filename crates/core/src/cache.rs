//! The layout of the content-addressed chunk cache every process shares (`ocichunk` mount, `cat`,
//! lazy pulls): a chunk with SHA-256 `hex` is the file `<dir>/sha256/<hex[0..2]>/<hex>` holding its
//! uncompressed bytes; files are written under `<dir>/tmp` and renamed into place. Readers verify a
//! chunk's digest before using it. The one owner of these paths (the JavaScript cache asks here).

use std::path::{Path, PathBuf};

/// Where new chunk files are written before they are renamed into place.
pub const TMP_DIR: &str = "tmp";
/// Where chunk files are, one directory per first byte.
pub const CHUNK_DIR: &str = "sha256";

/// The cache file of chunk `hex` (64 lowercase hex digits; anything else is not a chunk name).
pub fn chunk_path(dir: &Path, hex: &str) -> PathBuf {
    debug_assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    dir.join(CHUNK_DIR).join(&hex[..2.min(hex.len())]).join(hex)
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_path_is_sha256_fanout() {
        let h = "ab".repeat(32);
        assert_eq!(super::chunk_path(std::path::Path::new("/c"), &h), std::path::PathBuf::from(format!("/c/sha256/ab/{h}")));
    }
}
