//! Hostile input within a heap budget. This test binary counts every byte the Rust heap holds (a
//! counting global allocator; its tests run one at a time), so a parser that trusts a size it
//! reads (a tar header's, a PAX or long-name record's, a zstd frame's) shows as a peak, not only
//! as a slow machine. Deterministic cases first, then bounded fuzz runs of raw bytes: tar streams
//! (plain, gzip, zstd) through the layer scan and TOC blobs (mutated JSON text and mutated zstd
//! frames) through the TOC check. Every outcome is a result or an error with a code, never a
//! panic, and within the budget.
//!
//! OCICHUNK_FUZZ_SECS bounds each fuzz run (default 5); OCICHUNK_FUZZ_SEED replays a run (the seed
//! is printed at the start of each; a failure prints it with the test's output).
//! (zstd's own buffers are malloc'd by libzstd, outside this count; its decoder's window is
//! capped by libzstd at 128 MiB by default.)

use ocichunk_core::chunker::DEFAULT_CDC;
use ocichunk_core::error::Code;
use ocichunk_core::format::canonical::CanonOptions;
use ocichunk_core::format::{check_toc, Checked};
use ocichunk_core::tarscan::{batch_size, BufferPool, Compression, LayerScan};
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new > l.size() {
                grew(new - l.size());
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The tests of this binary run one at a time: the heap count is the process's.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `f` returns, and the most heap it held beyond what was live before it ran.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

const MIB: usize = 1 << 20;

/// The layer scan's budget beyond its buffer pool: batch headers (closed at 1 MiB, two batches
/// pending), one PAX or long-name record (at most 1 MiB), decoder state and the chunk tables.
const SCAN_BUDGET: usize = 16 * MIB;

fn fuzz_secs() -> u64 {
    std::env::var("OCICHUNK_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5)
}

/// A xorshift64* generator seeded by OCICHUNK_FUZZ_SEED, else by the clock (printed, to replay).
struct Rng(u64);

impl Rng {
    fn new(what: &str) -> Rng {
        let seed = std::env::var("OCICHUNK_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1));
        eprintln!("{what}: OCICHUNK_FUZZ_SEED={seed}");
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545f4914f6cdd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

// ---- tar streams ----

fn header(name: &[u8], flag: u8, size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0001750\0");
    h[116..124].copy_from_slice(b"0001750\0");
    if size > 0o77777777777 {
        h[124] = 0x80; // base-256
        h[128..136].copy_from_slice(&size.to_be_bytes());
    } else {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    }
    h[136..148].copy_from_slice(b"14000000000\0");
    h[156] = flag;
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn entry(t: &mut Vec<u8>, name: &[u8], flag: u8, data: &[u8]) {
    entry_to(t, name, flag, data, b"");
}

/// An entry with a link target in the header.
fn entry_to(t: &mut Vec<u8>, name: &[u8], flag: u8, data: &[u8], link: &[u8]) {
    let mut h = header(name, flag, data.len() as u64);
    if !link.is_empty() {
        h[157..157 + link.len()].copy_from_slice(link);
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }
    t.extend(h);
    t.extend_from_slice(data);
    t.resize(t.len().div_ceil(512) * 512, 0);
}

/// One PAX record, its length prefix counting itself.
fn pax(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut n = body + 1;
    while n != body + n.to_string().len() {
        n = body + n.to_string().len();
    }
    let mut r = format!("{n} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn gzip(t: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(t).unwrap();
    gz.finish().unwrap()
}

fn text(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            b'a' + (s % 26) as u8
        })
        .collect()
}

/// Scan `t` as the binding does (a scan thread fed pieces of `piece` bytes), releasing batches as
/// they come; the number of entries.
fn scan(t: &[u8], piece: usize, batch: usize, pool: &std::sync::Arc<BufferPool>) -> ocichunk_core::error::Result<u64> {
    let canon = CanonOptions { source_date_epoch: 0, keep_mtime: false };
    let mut th = LayerScan::new(Compression::Sniff, DEFAULT_CDC, batch, 2, pool.clone(), Some(canon))?.spawn_stream()?;
    let mut entries = 0u64;
    let mut take = |bs: Vec<ocichunk_core::tarscan::Batch>| -> ocichunk_core::error::Result<()> {
        for b in bs {
            entries += b.entries as u64;
            pool.release(b.buffer)?;
        }
        Ok(())
    };
    for p in t.chunks(piece.max(1)).map(Some).chain([None]) {
        loop {
            let (bs, taken) = th.offer(p.map(<[u8]>::to_vec))?;
            take(bs)?;
            if taken {
                break;
            }
        }
    }
    loop {
        let (bs, eof) = th.next_batches()?;
        take(bs)?;
        if eof {
            break;
        }
    }
    take(th.finish()?)?;
    Ok(entries)
}

/// Scan within the budget, in batches of `batch` bytes (the binding's: 1 MiB); the outcome must
/// be entries or an error with a code of hostile input. Also the heap the scan held.
fn scan_bounded(t: &[u8], piece: usize, batch: usize, what: &str) -> (Result<u64, (Code, String)>, usize) {
    // a pool per scan (a scan closes its pool when it ends), allocated before counting
    let pool = BufferPool::new(4, batch_size(DEFAULT_CDC, batch)).unwrap();
    let (r, peak) = peak_of(|| scan(t, piece, batch, &pool));
    assert!(peak <= SCAN_BUDGET, "{what}: the scan held {} MiB of heap", peak / MIB);
    let r = r.map_err(|e| {
        assert!(matches!(e.code(), Code::Corrupt | Code::Unsupported | Code::Unsafe), "{what}: {:?}: {e}", e.code());
        (e.code(), e.to_string())
    });
    (r, peak)
}

/// Seeds: ustar files and a directory, PAX records (path, linkpath, size, mtime, xattrs, a global
/// header), GNU long names and links, hardlinks, symlinks, devices; plain, gzip and zstd.
fn tar_seeds() -> Vec<Vec<u8>> {
    let mut t = Vec::new();
    entry(&mut t, b"d/", b'5', b"");
    entry(&mut t, b"d/a", b'0', &text(70_000, 1));
    entry(&mut t, b"d/b", b'0', b"small\n");
    let mut p = pax(b"path", "d/pax-ñame".as_bytes());
    p.extend(pax(b"SCHILY.xattr.user.k", b"v\0\xff"));
    p.extend(pax(b"mtime", b"1700000000.5"));
    p.extend(pax(b"uid", b"4294967295"));
    entry(&mut t, b"PaxHeaders/x", b'x', &p);
    entry(&mut t, b"x", b'0', &text(3000, 2));
    entry(&mut t, b"pax_global_header", b'g', &pax(b"comment", b"ignored"));
    entry(&mut t, b"././@LongLink", b'L', &[b'n'; 300]);
    entry(&mut t, b"long", b'0', b"long name\n");
    entry(&mut t, b"././@LongLink", b'K', b"d/a\0");
    entry(&mut t, b"h", b'1', b"");
    entry_to(&mut t, b"s", b'2', b"", b"d/b");
    entry(&mut t, b"c", b'3', b"");
    entry(&mut t, b"f", b'6', b"");
    entry(&mut t, b"d/.wh.gone", b'0', b"");
    t.extend(vec![0u8; 1024]);
    let mut u = Vec::new();
    entry(&mut u, b"PaxHeaders/y", b'x', &[pax(b"size", b"20"), pax(b"linkpath", b"target")].concat());
    entry(&mut u, b"y", b'0', &text(20, 3));
    entry(&mut u, b"z", b'0', &text(200_000, 4));
    u.extend(vec![0u8; 1024]);
    let (g, z) = (gzip(&t), zstd::bulk::compress(&u, 3).unwrap());
    vec![t, u, g, z]
}

#[test]
fn hostile_sizes_stay_within_the_heap_budget() {
    let _one = serial();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // a file claiming 2^49 bytes, with 1 MiB behind it
        ("huge file", [header(b"f", b'0', 1 << 49), vec![7u8; MIB]].concat()),
        // PAX and long-name records claiming far more than the 1 MiB they may have
        ("huge PAX record", [header(b"p", b'x', 1 << 40), vec![b'9'; 4096]].concat()),
        ("huge long name", [header(b"././@LongLink", b'L', 1 << 33), vec![b'n'; 4096]].concat()),
        ("huge long link", [header(b"././@LongLink", b'K', (1 << 20) + 1), vec![b'n'; 4096]].concat()),
        // a PAX record whose length prefix claims more than its header holds
        ("PAX length beyond the record", {
            let mut t = Vec::new();
            entry(&mut t, b"p", b'x', b"999999999 path=x\n");
            t
        }),
    ];
    for (what, t) in &cases {
        assert!(scan_bounded(t, 65536, MIB, what).0.is_err(), "{what}: accepted");
    }
    // the largest records allowed, many entries, and a gzip stream inflating 256x: all within budget
    let mut t = Vec::new();
    let mut p = Vec::new();
    while p.len() < MIB - 4096 {
        p.extend(pax(format!("SCHILY.xattr.user.{}", p.len()).as_bytes(), &[b'v'; 200]));
    }
    entry(&mut t, b"PaxHeaders/big", b'x', &p);
    entry(&mut t, b"big", b'0', b"");
    entry(&mut t, b"././@LongLink", b'L', &[b'n'; MIB - 1]);
    entry(&mut t, b"n", b'0', b"");
    for i in 0..40_000 {
        entry(&mut t, format!("many/{i}").as_bytes(), b'0', b"");
    }
    entry(&mut t, b"zeros", b'0', &vec![0u8; 48 * MIB]);
    t.extend(vec![0u8; 1024]);
    let g = gzip(&t);
    assert!(g.len() * 50 < t.len());
    assert_eq!(scan_bounded(&t, 1 << 16, MIB, "large records").0, Ok(40_003));
    assert_eq!(scan_bounded(&g, 1 << 16, MIB, "gzip, 256x").0, Ok(40_003));
}

#[test]
fn fuzz_tar_scan_within_budget() {
    let _one = serial();
    let seeds = tar_seeds();
    for (i, s) in seeds.iter().enumerate() {
        scan_bounded(s, 4096, MIB, &format!("seed {i}")).0.unwrap_or_else(|e| panic!("seed {i}: {e:?}"));
    }
    let mut rng = Rng::new("fuzz_tar_scan_within_budget");
    let junk: [&[u8]; 12] =
        [b"0", b"7777777", b"\x80\xff\xff\xff\xff\xff\xff\xff", b"\xff\xff\xff\xff", b"-1", b" ", b"\0", b"99999999999", b"L", b"x", b"../../e", b"/abs"];
    let (start, secs) = (Instant::now(), fuzz_secs());
    let (mut runs, mut refused, mut most) = (0u64, 0u64, 0usize);
    while start.elapsed().as_secs() < secs {
        let mut t = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let len = t.len();
            match rng.below(7) {
                // junk over a header field (or anywhere) of a random block
                0 | 1 => {
                    let at = rng.below(len / 512) * 512 + [0, 100, 124, 136, 148, 156, 157, 257, 345][rng.below(9)];
                    for (k, &c) in junk[rng.below(junk.len())].iter().enumerate() {
                        if at + k < len {
                            t[at + k] = c;
                        }
                    }
                }
                // bits flipped (compressed streams too); an input cut to nothing gets random bytes instead
                2 if len > 0 => {
                    for _ in 0..1 + rng.below(3) {
                        let i = rng.below(len);
                        t[i] ^= 1 << rng.below(8);
                    }
                }
                // cut short
                3 => t.truncate(rng.below(len + 1)),
                // a block repeated or dropped
                4 if len >= 1024 => {
                    let b = rng.below(len / 512) * 512;
                    let block = t[b..b + 512].to_vec();
                    if rng.below(2) == 0 {
                        t.splice(b..b, block);
                    } else {
                        t.drain(b..b + 512);
                    }
                }
                // a digit of a PAX length or an octal field changed
                5 => {
                    let digits: Vec<usize> = t.iter().enumerate().filter(|(_, c)| c.is_ascii_digit()).map(|(i, _)| i).take(4096).collect();
                    if !digits.is_empty() {
                        let i = digits[rng.below(digits.len())];
                        t[i] = b'0' + rng.below(10) as u8;
                    }
                }
                // random bytes appended
                _ => {
                    let n = rng.below(2048);
                    t.extend((0..n).map(|_| rng.next() as u8));
                }
            }
        }
        // small batches: more batch boundaries per input, and less of the budget spent zeroing buffers
        let piece = 1 + rng.below(20_000);
        let (r, peak) = scan_bounded(&t, piece, 64 << 10, &format!("run {runs}"));
        refused += r.is_err() as u64;
        most = most.max(peak);
        runs += 1;
    }
    eprintln!("fuzz_tar_scan_within_budget: {runs} inputs in {secs} s, {refused} refused, at most {} KiB of heap", most >> 10);
    assert!(runs > 0);
}

// ---- TOC blobs ----

const HEX: [&str; 3] = [
    "aa00000000000000000000000000000000000000000000000000000000000000",
    "bb00000000000000000000000000000000000000000000000000000000000000",
    "cc00000000000000000000000000000000000000000000000000000000000000",
];

fn toc_seeds() -> Vec<Vec<u8>> {
    let base = |layers: serde_json::Value| {
        json!({
            "version": 1,
            "chunker": { "kind": "cdc", "min": 16384, "avg": 65536, "max": 262144 },
            "packs": [format!("sha256:{}", HEX[0])],
            "frames": [[0, 0, 20, 15]],
            "chunks": [[HEX[0], 0, 0, 5], [HEX[1], 0, 5, 5], [HEX[2], 0, 10, 5]],
            "layers": layers,
        })
        .to_string()
        .into_bytes()
    };
    vec![
        base(json!([
            { "entries": [
                { "path": ".", "type": "dir", "mode": 0o755 },
                { "path": "a", "type": "dir", "mode": 0o755, "uid": 1000, "gid": 1000, "mtime": 1_700_000_000 },
                { "path": "a/f", "type": "reg", "mode": 0o644, "size": 10, "chunks": [0, 1], "xattrs": { "user.k": "dg==" } },
                { "path": "a/h", "type": "hardlink", "link": "a/f" },
                { "path": "l", "type": "symlink", "mode": 0o777, "link": "../a" },
                { "path": "n", "type": "char", "mode": 0o600, "devMajor": 1, "devMinor": 3 },
            ] },
            { "entries": [
                { "path": "a/f", "type": "whiteout" },
                { "path": "l", "type": "opaque" },
                { "path": "l/g", "type": "reg", "mode": 0o644, "size": 5, "chunks": [2] },
                { "path": "ñ", "type": "reg", "mode": 0o4755, "size": 0, "chunks": [] },
            ] },
        ])),
        base(json!([{ "entries": [{ "path": "x", "type": "reg", "mode": 0o644, "size": 15, "chunks": [0, 1, 2] }] }])),
    ]
}

fn blob(json: &[u8]) -> Vec<u8> {
    ocichunk_core::frame::compress_frame(&[json], 3).unwrap()
}

/// The TOC check within a budget proportional to the JSON; what passes must be usable by every
/// reader: the same verdict again, a view, chunk maps covering each file exactly.
fn check_bounded(b: &[u8], json_len: usize, what: &str) -> bool {
    check_peak(b, json_len, what).0
}

/// [`check_bounded`], and the heap the check held.
fn check_peak(b: &[u8], json_len: usize, what: &str) -> (bool, usize) {
    let budget = MIB + 16 * json_len;
    let (r, peak) = peak_of(|| check_toc(b).map(|(t, tree, _)| (t.entry_count(), tree.nodes.len())));
    assert!(peak <= budget, "{what}: the check held {} KiB of heap for {} bytes of JSON", peak >> 10, json_len);
    match r {
        Err(report) => {
            assert!(!report.violations.is_empty(), "{what}: refused without a reason");
            (false, peak)
        }
        Ok(counts) => {
            let c = Checked::open(b).unwrap_or_else(|r| panic!("{what}: passed once, then not: {:?}", r.violations));
            assert_eq!(counts, (c.toc.entry_count(), c.tree.nodes.len()), "{what}");
            let view = c.tree.view(&c.toc);
            for i in &view.inodes {
                if i.kind == "reg" {
                    let m = c.file(i.ino).unwrap_or_else(|| panic!("{what}: inode {} has no chunk map", i.ino));
                    assert_eq!(m.size(), i.size, "{what}: inode {}", i.ino);
                    let covered: u64 = m.pieces(0, i.size).map(|p| p.to - p.from).sum();
                    assert_eq!(covered, i.size, "{what}: inode {}", i.ino);
                }
            }
            (true, peak)
        }
    }
}

#[test]
fn toc_bombs_stay_within_the_heap_budget() {
    let _one = serial();
    // a small frame decompressing beyond the 128 MiB the TOC's JSON may have
    let spaces = vec![b' '; (128 << 20) + 4096];
    let bomb = ocichunk_core::frame::compress_frame(&[&spaces], 1).unwrap();
    drop(spaces);
    let (r, peak) = peak_of(|| check_toc(&bomb).map(|_| ()));
    let report = r.expect_err("a bomb passed");
    assert!(report.violations[0].message.contains("exceeds"), "{}", report.violations[0]);
    assert!(peak <= 129 * MIB, "a TOC bomb held {} MiB of heap", peak / MIB);
    // deep nesting, long strings, many numbers: refused, within budget
    for (what, json) in [
        ("deep nesting", [b"{\"version\":1,\"layers\":".to_vec(), vec![b'['; 100_000]].concat()),
        ("a long string", [b"{\"version\":1,\"packs\":[\"".to_vec(), vec![b'x'; 8 * MIB], b"\"]}".to_vec()].concat()),
        ("many numbers", [b"{\"version\":1,\"chunks\":[".to_vec(), b"[0,0,0,1],".repeat(400_000), b"0]}".to_vec()].concat()),
    ] {
        assert!(!check_bounded(&blob(&json), json.len(), what), "{what}: accepted");
    }
}

#[test]
fn fuzz_toc_bytes_within_budget() {
    let _one = serial();
    let seeds = toc_seeds();
    for (i, s) in seeds.iter().enumerate() {
        assert!(check_bounded(&blob(s), s.len(), &format!("seed {i}")), "seed {i} refused");
    }
    let mut rng = Rng::new("fuzz_toc_bytes_within_budget");
    let tokens: [&[u8]; 24] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"\"",
        b"null",
        b"-0",
        b"1e999",
        b"18446744073709551616",
        b"4294967296",
        b"0.5",
        b"\"\\u0000\"",
        b"\"\\ud800\"",
        b"\xff\xfe",
        b"\"path\":\"..\"",
        b"\"chunks\":[0,0,0]",
        b"\"type\":\"hardlink\"",
        b"\"link\":\"/\"",
        b"\"mode\":\"4755\"",
        b"\"version\":1,",
        b"\"size\":",
        b"\"xattrs\":{\"a\":\"=\"}",
    ];
    let (start, secs) = (Instant::now(), fuzz_secs());
    let (mut runs, mut passed, mut most) = (0u64, 0u64, 0usize);
    while start.elapsed().as_secs() < secs {
        let mut j = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(3) {
            let len = j.len();
            let at = rng.below(len + 1);
            match rng.below(6) {
                0 => j.splice(at..at, tokens[rng.below(tokens.len())].iter().copied()).for_each(drop),
                1 if at < len => {
                    let to = (at + 1 + rng.below(16)).min(len);
                    j.drain(at..to);
                }
                2 if at < len => {
                    // a piece of the document repeated: keys given twice, entries duplicated
                    let to = (at + 1 + rng.below(200)).min(len);
                    let piece = j[at..to].to_vec();
                    let to2 = rng.below(len + 1);
                    j.splice(to2..to2, piece);
                }
                3 if at < len => j[at] ^= 1 << rng.below(8),
                4 if at < len => j[at] = b"0123456789"[rng.below(10)],
                _ => j.truncate(at),
            }
        }
        let mut b = blob(&j);
        // sometimes the frame itself: bits flipped, cut, or bytes behind it
        match rng.below(8) {
            0 => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.truncate(rng.below(b.len())),
            2 => b.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            _ => {}
        }
        let (ok, peak) = check_peak(&b, j.len(), &format!("run {runs}"));
        passed += ok as u64;
        most = most.max(peak);
        runs += 1;
    }
    eprintln!("fuzz_toc_bytes_within_budget: {runs} inputs in {secs} s, {passed} passed the check, at most {} KiB of heap", most >> 10);
    assert!(runs > 10, "{runs} runs");
}
