//! The mount's read path without a mount (no /dev/fuse, no root): `Shared::read` over a checked
//! TOC and a chunk cache in a temp dir, with a fetcher that stands in for the registry. Reads that
//! span chunks, fetch-ahead, clipping at the end of a file, errors as errno values, damaged cache
//! content, the read trace.

use ocichunk_core::format::Checked;
use ocichunk_core::lazyfs::{Fetcher, Shared};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

const CHUNK: usize = 256 << 10;
const CHUNKS: usize = 8;

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Chunk `i`: bytes that differ from every other chunk's (a piece from the wrong place shows).
fn chunk(i: usize) -> Vec<u8> {
    (0..CHUNK).map(|k| ((k * 31 + i * 97 + k / 251) % 256) as u8).collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// write the chunks asked for into the cache
    Good,
    /// answer an error
    Fail,
    /// write other bytes than the chunks'
    Damage,
    /// answer success without writing anything
    Nothing,
}

/// The registry's stand-in: writes chunks into the cache as the mount's fetcher does.
struct FakeFetcher {
    cache: PathBuf,
    chunks: Vec<Vec<u8>>,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<Mutex<Vec<Vec<u32>>>>,
}

impl Fetcher for FakeFetcher {
    fn fetch(&self, chunks: Vec<u32>, done: Box<dyn FnOnce(Result<(), String>) + Send>) {
        self.requests.lock().unwrap().push(chunks.clone());
        let mode = *self.mode.lock().unwrap();
        if mode == Mode::Fail {
            return done(Err("registry said no".into()));
        }
        if mode == Mode::Good || mode == Mode::Damage {
            for c in chunks {
                let data = &self.chunks[c as usize];
                let p = ocichunk_core::cache::chunk_path(&self.cache, &hex(&Sha256::digest(data)));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                let bytes = if mode == Mode::Damage { vec![0u8; data.len()] } else { data.clone() };
                std::fs::write(p, bytes).unwrap();
            }
        }
        // from another thread, as the real fetcher answers
        std::thread::spawn(move || done(Ok(())));
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    shared: Shared,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<Mutex<Vec<Vec<u32>>>>,
    data: Vec<u8>,
    /// inode numbers by name
    ino: std::collections::HashMap<String, u64>,
}

/// A TOC with `big` (CHUNKS chunks), `tiny` (the first 10 bytes of chunk 0, a chunk of its own),
/// `empty`, a directory and a symlink; an empty cache.
fn fixture(record: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut chunks: Vec<Vec<u8>> = (0..CHUNKS).map(chunk).collect();
    chunks.push(chunk(0)[..10].to_vec());
    let mut rows = Vec::new();
    let mut at = 0;
    for c in &chunks {
        rows.push(json!([hex(&Sha256::digest(c)), 0, at, c.len()]));
        at += c.len();
    }
    let toc = json!({
        "version": 1,
        "chunker": { "kind": "fixed", "size": CHUNK },
        "packs": [format!("sha256:{}", "ab".repeat(32))],
        "frames": [[0, 0, 1000, at]],
        "chunks": rows,
        "layers": [{ "entries": [
            { "path": ".", "type": "dir", "mode": 0o755 },
            { "path": "big", "type": "reg", "mode": 0o644, "size": CHUNK * CHUNKS, "chunks": (0..CHUNKS).collect::<Vec<_>>() },
            { "path": "d", "type": "dir", "mode": 0o755 },
            { "path": "empty", "type": "reg", "mode": 0o644, "size": 0, "chunks": [] },
            { "path": "l", "type": "symlink", "mode": 0o777, "link": "big" },
            { "path": "tiny", "type": "reg", "mode": 0o644, "size": 10, "chunks": [CHUNKS] },
        ] }],
    });
    let blob = ocichunk_core::frame::compress_frame(&[toc.to_string().as_bytes()], 3).unwrap();
    let checked = Arc::new(Checked::open(&blob).map_err(|r| format!("{:?}", r.violations)).unwrap());
    let view = checked.tree.view(&checked.toc);
    let ino = view.inodes[0].children.iter().cloned().collect();
    let mode = Arc::new(Mutex::new(Mode::Good));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let data = chunks[..CHUNKS].concat();
    let fetcher = FakeFetcher { cache: cache.clone(), chunks, mode: mode.clone(), requests: requests.clone() };
    let shared = Shared::new(checked, cache.clone(), Box::new(fetcher), record, false).unwrap();
    Fixture { _dir: dir, cache, shared, mode, requests, data, ino }
}

fn cached_files(cache: &Path) -> usize {
    let Ok(top) = std::fs::read_dir(cache.join("sha256")) else { return 0 };
    top.map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count()).sum()
}

#[test]
fn reads_across_chunks_fetch_what_is_missing_and_read_ahead() {
    let f = fixture(false);
    let big = f.ino["big"];
    // bytes 200 KiB..300 KiB: the end of chunk 0, the start of chunk 1
    let got = f.shared.read(big, 200 << 10, 100 << 10).unwrap();
    assert_eq!(got, f.data[200 << 10..300 << 10]);
    // one request: the read's chunks, then the file's next chunks up to 256 KiB past the read
    assert_eq!(*f.requests.lock().unwrap(), vec![vec![0, 1, 2]]);
    // read ahead: no request for chunk 2
    assert_eq!(f.shared.read(big, 512 << 10, 200 << 10).unwrap(), f.data[512 << 10..712 << 10]);
    assert_eq!(f.requests.lock().unwrap().len(), 1);
    // further on: only what is not cached yet, and what follows
    assert_eq!(f.shared.read(big, 6 * CHUNK as u64 - 1, 2).unwrap(), f.data[6 * CHUNK - 1..6 * CHUNK + 1]);
    assert_eq!(f.requests.lock().unwrap()[1], vec![5, 6, 7]);
    // the whole file in the kernel's 128 KiB reads: chunk 3 and, read ahead with it, 4; the rest cached
    let mut all = Vec::new();
    for off in (0..f.data.len()).step_by(128 << 10) {
        all.extend(f.shared.read(big, off as u64, 128 << 10).unwrap());
    }
    assert_eq!(all, f.data);
    assert_eq!(f.requests.lock().unwrap()[2], vec![3, 4]);
    assert_eq!(f.requests.lock().unwrap().len(), 3);
    assert_eq!(cached_files(&f.cache), CHUNKS);
    assert_eq!(f.shared.stats.chunks_hashed.load(Ordering::Relaxed), CHUNKS as u64);
}

#[test]
fn reads_are_clipped_to_the_file() {
    let f = fixture(false);
    let (big, tiny, empty) = (f.ino["big"], f.ino["tiny"], f.ino["empty"]);
    let size = f.data.len() as u64;
    assert_eq!(f.shared.read(big, size - 10, 4096).unwrap(), f.data[f.data.len() - 10..]);
    assert!(f.shared.read(big, size, 4096).unwrap().is_empty());
    assert!(f.shared.read(big, u64::MAX - 1, 4096).unwrap().is_empty());
    assert_eq!(f.shared.read(tiny, 0, 4096).unwrap(), f.data[..10]);
    assert_eq!(f.shared.read(tiny, 3, 4).unwrap(), f.data[3..7]);
    let before = f.requests.lock().unwrap().len();
    assert!(f.shared.read(empty, 0, 4096).unwrap().is_empty());
    assert_eq!(f.requests.lock().unwrap().len(), before, "an empty file fetches nothing");
}

#[test]
fn errors_are_errno_values() {
    let f = fixture(false);
    assert_eq!(f.shared.read(f.ino["d"], 0, 10).unwrap_err().0, libc::EISDIR);
    assert_eq!(f.shared.read(f.ino["l"], 0, 10).unwrap_err().0, libc::EISDIR);
    assert_eq!(f.shared.read(1, 0, 10).unwrap_err().0, libc::EISDIR);
    assert_eq!(f.shared.read(999_999, 0, 10).unwrap_err().0, libc::ENOENT);

    *f.mode.lock().unwrap() = Mode::Fail;
    let (errno, msg) = f.shared.read(f.ino["big"], 0, 10).unwrap_err();
    assert_eq!((errno, msg.as_str()), (libc::EIO, "registry said no"));

    // the fetcher says yes but the chunk never arrives: asked twice, then EIO
    *f.mode.lock().unwrap() = Mode::Nothing;
    let before = f.requests.lock().unwrap().len();
    let (errno, msg) = f.shared.read(f.ino["big"], 0, 10).unwrap_err();
    assert_eq!(errno, libc::EIO);
    assert!(msg.contains("missing"), "{msg}");
    assert_eq!(f.requests.lock().unwrap().len() - before, 2);
    assert_eq!(f.shared.stats.reads.load(Ordering::Relaxed), 0);
}

#[test]
fn damaged_cache_content_is_never_served_and_is_removed() {
    let f = fixture(false);
    *f.mode.lock().unwrap() = Mode::Damage;
    let (errno, _) = f.shared.read(f.ino["tiny"], 0, 10).unwrap_err();
    assert_eq!(errno, libc::EIO);
    assert_eq!(cached_files(&f.cache), 0, "damaged chunks are removed from the cache");
    // once the registry sends the right bytes, the same mount reads them
    *f.mode.lock().unwrap() = Mode::Good;
    assert_eq!(f.shared.read(f.ino["tiny"], 0, 10).unwrap(), f.data[..10]);
}

#[test]
fn the_trace_records_every_read() {
    let f = fixture(true);
    let (big, tiny) = (f.ino["big"], f.ino["tiny"]);
    f.shared.read(big, 4096, 100).unwrap();
    f.shared.read(tiny, 0, 10).unwrap();
    f.shared.read(big, 1 << 30, 1).unwrap();
    let trace = f.shared.trace.as_ref().unwrap().lock().unwrap().clone();
    assert_eq!(trace, vec![(big, 4096, 100), (tiny, 0, 10), (big, 1 << 30, 1)]);
    assert!(fixture(false).shared.trace.is_none());
}
