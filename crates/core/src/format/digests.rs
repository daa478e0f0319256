//! The chunk digests of a TOC (docs/format.md §3 "Chunk digests"). Version 1 lists each chunk's
//! SHA-256 in its `chunks` row; version 2 keeps them out of the TOC, in a digest table blob of 32
//! raw bytes per chunk in chunk order, and the TOC holds the SHA-256 of each section of
//! `section` chunks. A reader that needs every digest (restore, verify, a converter reusing the
//! TOC) loads the whole table; a lazy reader loads only the sections of the chunks it reads, each
//! checked against the TOC before any of its digests is used.

use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::RwLock;

/// Chunks per section of a digest table written by this version (docs/format.md §3): 32 chunks,
/// 1 KiB per section, 32 bytes of the TOC per section.
pub const SECTION: u32 = 32;
/// Largest section a reader accepts.
pub const SECTION_MAX: u32 = 1 << 16;

/// Where a version 2 TOC's digests are: the table blob's digest, chunks per section and each
/// section's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    /// `sha256:<hex>` of the digest table blob
    pub blob: String,
    pub section: u32,
    pub hashes: Vec<[u8; 32]>,
}

#[derive(Debug)]
struct State {
    table: Vec<[u8; 32]>,
    /// per section: its digests are in `table`, checked
    known: Vec<bool>,
    missing: usize,
}

/// The digests of a TOC's chunks, as far as a reader has loaded them.
#[derive(Debug)]
pub struct DigestTable {
    count: usize,
    table_ref: Option<TableRef>,
    state: RwLock<State>,
}

impl DigestTable {
    /// Version 1: every digest from the TOC itself.
    pub fn inline(digests: Vec<[u8; 32]>) -> DigestTable {
        let count = digests.len();
        DigestTable { count, table_ref: None, state: RwLock::new(State { table: digests, known: vec![true], missing: 0 }) }
    }

    /// Version 2: nothing known until sections or the whole table are loaded. `r.hashes` must hold
    /// one hash per section of `count` chunks (the TOC check makes sure).
    pub fn external(count: usize, r: TableRef) -> DigestTable {
        let sections = r.hashes.len();
        DigestTable { count, table_ref: Some(r), state: RwLock::new(State { table: vec![[0; 32]; count], known: vec![false; sections], missing: sections }) }
    }

    pub fn len(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The table blob and its sections (version 2); None when the TOC holds the digests.
    pub fn table_ref(&self) -> Option<&TableRef> {
        self.table_ref.as_ref()
    }

    /// Bytes of the table blob (version 2): 32 per chunk.
    pub fn blob_size(&self) -> u64 {
        self.count as u64 * 32
    }

    fn section(&self) -> usize {
        self.table_ref.as_ref().map_or(self.count.max(1), |r| r.section as usize)
    }

    /// Sections of the table.
    pub fn sections(&self) -> usize {
        self.table_ref.as_ref().map_or(1, |r| r.hashes.len())
    }

    /// The section holding chunk `c`'s digest.
    pub fn section_of(&self, c: u32) -> u32 {
        (c as usize / self.section()) as u32
    }

    /// Byte range `(offset, length)` of section `i` in the table blob.
    pub fn section_span(&self, i: u32) -> (u64, u64) {
        let s = self.section();
        let first = i as usize * s;
        let n = s.min(self.count.saturating_sub(first));
        (first as u64 * 32, n as u64 * 32)
    }

    /// Every digest is known.
    pub fn complete(&self) -> bool {
        self.state.read().unwrap_or_else(|e| e.into_inner()).missing == 0
    }

    /// Chunk `c`'s digest, if its section is loaded.
    pub fn get(&self, c: u32) -> Option<[u8; 32]> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let c = c as usize;
        if c >= self.count || !st.known[c / self.section()] {
            return None;
        }
        Some(st.table[c])
    }

    /// Chunk `c`'s digest as 64 hex digits, if known.
    pub fn hex(&self, c: u32) -> Option<String> {
        self.get(c).map(|d| hex(&d))
    }

    /// The sections, in order and once each, that hold digests of `chunks` not loaded yet.
    pub fn missing_sections(&self, chunks: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        if st.missing == 0 {
            return Vec::new();
        }
        let mut out: Vec<u32> =
            chunks.into_iter().filter(|&c| (c as usize) < self.count).map(|c| self.section_of(c)).filter(|&s| !st.known[s as usize]).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Load section `i` from its bytes, checked against the TOC. Ok(false): it was loaded already.
    pub fn add_section(&self, i: u32, bytes: &[u8]) -> Result<bool, String> {
        let Some(r) = &self.table_ref else { return Ok(false) };
        let Some(want) = r.hashes.get(i as usize) else {
            return Err(format!("digest table section {i} does not exist ({} sections)", r.hashes.len()));
        };
        let (_, len) = self.section_span(i);
        if bytes.len() as u64 != len {
            return Err(format!("digest table section {i}: {} bytes, the TOC says {len}", bytes.len()));
        }
        let got: [u8; 32] = Sha256::digest(bytes).into();
        if &got != want {
            return Err(format!("digest table section {i}: content hashes to sha256:{}, the TOC says sha256:{}", hex(&got), hex(want)));
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        if st.known[i as usize] {
            return Ok(false);
        }
        let first = i as usize * r.section as usize;
        for (k, d) in bytes.chunks_exact(32).enumerate() {
            st.table[first + k].copy_from_slice(d);
        }
        st.known[i as usize] = true;
        st.missing -= 1;
        Ok(true)
    }

    /// Load the whole table blob (its digest checked by whoever read it): every section is checked
    /// against the TOC, and no digest may be listed twice (docs/format.md §3).
    pub fn load(&self, blob: &[u8]) -> Result<(), String> {
        if self.table_ref.is_none() {
            return Err("this TOC holds its chunk digests itself (version 1): it has no digest table".into());
        }
        if blob.len() as u64 != self.blob_size() {
            return Err(format!("digest table of {} bytes, the TOC has {} chunks ({} bytes)", blob.len(), self.count, self.blob_size()));
        }
        let mut seen = HashSet::with_capacity(self.count);
        for (c, d) in blob.chunks_exact(32).enumerate() {
            if !seen.insert(d) {
                return Err(format!("digest table: chunk {c}: sha256:{} is listed twice", hex(d)));
            }
        }
        for i in 0..self.sections() as u32 {
            let (off, len) = self.section_span(i);
            self.add_section(i, &blob[off as usize..(off + len) as usize])?;
        }
        Ok(())
    }

    /// Every digest in chunk order, when all are known.
    pub fn all(&self) -> Option<Vec<[u8; 32]>> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        (st.missing == 0).then(|| st.table.clone())
    }
}

/// The table blob and its [`TableRef`] for digests in chunk order (the writer's side).
pub fn build_table(digests: &[[u8; 32]], section: u32) -> (Vec<u8>, TableRef) {
    let mut blob = Vec::with_capacity(digests.len() * 32);
    for d in digests {
        blob.extend_from_slice(d);
    }
    let hashes = blob.chunks(section as usize * 32).map(|s| Sha256::digest(s).into()).collect();
    let digest = format!("sha256:{}", hex(&Sha256::digest(&blob)));
    (blob, TableRef { blob: digest, section, hashes })
}

pub fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| Sha256::digest((i as u64).to_le_bytes()).into()).collect()
    }

    #[test]
    fn sections_load_one_by_one_and_are_checked() {
        let d = digests(70);
        let (blob, r) = build_table(&d, 32);
        assert_eq!(r.hashes.len(), 3);
        let t = DigestTable::external(70, r.clone());
        assert_eq!(t.get(33), None);
        assert_eq!(t.missing_sections([1, 40, 33, 69]), vec![0, 1, 2]);
        assert_eq!(t.section_span(2), (64 * 32, 6 * 32));
        let (o, l) = t.section_span(1);
        let mut bad = blob[o as usize..(o + l) as usize].to_vec();
        bad[5] ^= 1;
        assert!(t.add_section(1, &bad).unwrap_err().contains("hashes to"));
        assert!(t.add_section(1, &bad[..32]).unwrap_err().contains("the TOC says 1024"));
        assert!(t.add_section(1, &blob[o as usize..(o + l) as usize]).unwrap());
        assert!(!t.add_section(1, &blob[o as usize..(o + l) as usize]).unwrap());
        assert_eq!(t.get(33), Some(d[33]));
        assert_eq!(t.get(31), None);
        assert!(!t.complete());
        assert_eq!(t.missing_sections([1, 40, 33, 69]), vec![0, 2]);
        let full = DigestTable::external(70, r);
        full.load(&blob).unwrap();
        assert!(full.complete());
        assert_eq!(full.all().unwrap(), d);
        assert_eq!(full.hex(0).unwrap(), hex(&d[0]));
    }

    #[test]
    fn a_table_that_is_not_the_tocs_is_refused() {
        let d = digests(40);
        let (mut blob, r) = build_table(&d, 32);
        let t = DigestTable::external(40, r.clone());
        assert!(t.load(&blob[..blob.len() - 32]).unwrap_err().contains("the TOC has 40 chunks"));
        blob[40 * 32 - 1] ^= 1;
        assert!(t.load(&blob).unwrap_err().contains("section 1"));
        // a digest listed twice, even under hashes that match (a TOC author can recompute them)
        let mut twice = d.clone();
        twice[39] = twice[2];
        let (blob2, r2) = build_table(&twice, 32);
        assert!(DigestTable::external(40, r2).load(&blob2).unwrap_err().contains("chunk 39"));
        assert!(DigestTable::inline(d).load(&blob).is_err());
    }
}
