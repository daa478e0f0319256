//! Canonical entries straight from the tar scan (docs/format.md §2): what a tar header means for
//! the filesystem, without what the tar tool added. Paths normalized inside the root (no leading
//! '/', no '.' or '..' components), numeric ids, mode bits, mtimes clamped to the source date
//! epoch (unless kept), sorted xattrs, overlay whiteouts as explicit entries; owner names,
//! atime/ctime, device and inode numbers of the packing host and aufs bookkeeping dropped.
//!
//! The encoding handed to JavaScript ([`encode_entry`]) carries text as UTF-8 (checked here) and
//! xattr values as raw bytes: no latin1 round trip.

use super::toc::Kind;
use crate::tarscan::Header;
use crate::{Error, Result};

/// What shapes canonical entries beyond the tar's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CanonOptions {
    /// mtimes are clamped to at most this (seconds since the epoch) ...
    pub source_date_epoch: i64,
    /// ... unless kept as they are
    pub keep_mtime: bool,
}

/// One canonical entry.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonEntry {
    pub kind: Kind,
    /// normalized; "." is the root
    pub path: String,
    /// permission bits with setuid/setgid/sticky
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// content bytes (regular files)
    pub size: u64,
    pub mtime: i64,
    /// symlink target (verbatim) or hardlink target (normalized)
    pub link: Option<String>,
    /// (major, minor) of char and block devices
    pub dev: Option<(u32, u32)>,
    /// sorted by name bytes
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// hardlinks: mode, owner, mtime and xattrs are applied to the linked inode, as containerd
    /// applies a link header's (a target in a lower layer; within a layer they are folded into
    /// the group's entry, docs/format.md §3)
    pub link_meta: bool,
}

pub(crate) const WH: &str = ".wh.";
pub(crate) const OPAQUE: &str = ".wh..wh..opq";
const XATTR: &[u8] = b"SCHILY.xattr.";
/// Largest integer a JavaScript number holds exactly.
const SAFE: f64 = 9_007_199_254_740_991.0;

fn text(b: &[u8], what: &str) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| Error::unsupported(format!("{what}: path {:?} is not valid UTF-8", String::from_utf8_lossy(b))))
}

/// A member name as a path inside the root; anything escaping it is refused.
pub fn normalize_path(name: &str, what: &str) -> Result<String> {
    if name.contains('\0') {
        return Err(Error::unsafe_input(format!("{what}: path contains a NUL byte")));
    }
    if name.starts_with('/') {
        return Err(Error::unsafe_input(format!("{what}: absolute path {name:?} is not allowed in a layer")));
    }
    let mut out: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(Error::unsafe_input(format!("{what}: path {name:?} escapes the root with '..'"))),
            p => out.push(p),
        }
    }
    Ok(if out.is_empty() { ".".into() } else { out.join("/") })
}

/// A PAX numeric value read as tar tools' readers (and JavaScript's `Number`) read decimal text:
/// surrounding blanks ignored, an empty value is 0; None if it is not a finite number.
fn pax_number(v: &[u8]) -> Option<f64> {
    let blank = |b: &u8| matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0xa0);
    let start = v.iter().position(|b| !blank(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !blank(b)).map_or(start, |e| e + 1);
    let s = std::str::from_utf8(&v[start..end]).ok()?;
    if s.is_empty() {
        return Some(0.0);
    }
    let radix = |p: &str, r: u32| s.strip_prefix(p).or_else(|| s.strip_prefix(&p.to_uppercase())).map(|d| u64::from_str_radix(d, r).ok().map(|n| n as f64));
    if let Some(n) = radix("0x", 16).or_else(|| radix("0o", 8)).or_else(|| radix("0b", 2)) {
        return n;
    }
    // decimal only: no "inf"/"nan" spellings, no digit separators
    if !s.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E')) {
        return None;
    }
    s.parse::<f64>().ok().filter(|n| n.is_finite())
}

fn pax<'a>(h: &Header<'a>, key: &[u8]) -> Option<&'a [u8]> {
    // records are sorted by key and unique (the scan keeps the last of a key)
    h.pax.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The canonical entry of a tar header; None for headers with no filesystem meaning (aufs
/// bookkeeping: `.wh..wh.plnk`, `.wh..wh.aufs`).
pub fn canonical(h: &Header, o: &CanonOptions) -> Result<Option<CanonEntry>> {
    let name = text(h.name, "entry")?;
    let what = format!("entry {name:?}");
    let path = normalize_path(&name, &what)?;
    let mtime_raw = match pax(h, b"mtime") {
        Some(v) => pax_number(v).unwrap_or(0.0).floor(),
        None => h.mtime.floor(),
    };
    let mtime = if o.keep_mtime { mtime_raw } else { mtime_raw.min(o.source_date_epoch as f64) };
    if mtime.abs() > super::limits::MTIME as f64 {
        return Err(Error::corrupt(format!("{what}: mtime {mtime} is out of range")));
    }
    let id = |key: &[u8], header: f64| -> Result<u64> {
        let v = pax(h, key).and_then(pax_number).unwrap_or(header);
        if v.fract() != 0.0 || !(0.0..=SAFE).contains(&v) {
            return Err(Error::corrupt(format!("{what}: invalid uid/gid")));
        }
        Ok(v as u64)
    };
    let (uid, gid) = (id(b"uid", h.uid)?, id(b"gid", h.gid)?);
    let mut e = CanonEntry {
        kind: Kind::Reg,
        path,
        mode: h.mode & 0o7777,
        uid,
        gid,
        size: 0,
        mtime: mtime as i64,
        link: None,
        dev: None,
        xattrs: Vec::new(),
        link_meta: false,
    };
    let (dir, leaf) = match e.path.rfind('/') {
        Some(i) => (&e.path[..i], &e.path[i + 1..]),
        None => (".", e.path.as_str()),
    };
    if let Some(target) = leaf.strip_prefix(WH) {
        let join = |p: &str| if dir == "." { p.to_string() } else { format!("{dir}/{p}") };
        let (kind, path) = if leaf == OPAQUE {
            (Kind::Opaque, dir.to_string())
        } else if target.starts_with(WH) {
            return Ok(None); // aufs internals
        } else if matches!(target, "" | "." | "..") {
            return Err(Error::unsafe_input(format!("{what}: invalid whiteout")));
        } else {
            (Kind::Whiteout, join(target))
        };
        return Ok(Some(CanonEntry { kind, path, mode: 0, uid: 0, gid: 0, mtime: 0, ..e }));
    }
    for (k, v) in h.pax {
        if let Some(n) = k.strip_prefix(XATTR) {
            e.xattrs.push((text(n, &what)?, v.to_vec()));
        }
    }
    // a name given twice: the later record wins (as PAX says of repeated keywords)
    e.xattrs.reverse();
    e.xattrs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    e.xattrs.dedup_by(|later, kept| later.0 == kept.0);
    match h.flag {
        0 | b'0' | b'7' => {
            e.size = h.size as u64;
        }
        b'5' => e.kind = Kind::Dir,
        b'2' => {
            if h.link.is_empty() {
                return Err(Error::corrupt(format!("{what}: symlink without target")));
            }
            e.kind = Kind::Symlink;
            e.link = Some(text(h.link, &what)?);
        }
        b'1' => {
            let link = normalize_path(&text(h.link, &what)?, &format!("{what} (hardlink target)"))?;
            if link == "." {
                return Err(Error::unsafe_input(format!("{what}: hardlink to the root directory")));
            }
            if link == e.path {
                return Err(Error::corrupt(format!("{what}: hardlink to itself")));
            }
            e.kind = Kind::Hardlink;
            e.link = Some(link);
        }
        b'3' | b'4' => {
            e.kind = if h.flag == b'3' { Kind::Char } else { Kind::Block };
            e.dev = Some((h.devmajor, h.devminor));
        }
        b'6' => e.kind = Kind::Fifo,
        f => {
            let t = match f {
                b'S' => "gnu-sparse".to_string(),
                b'V' => "gnu-volume-header".to_string(),
                b'M' => "gnu-multivol".to_string(),
                b'D' => "gnu-dumpdir".to_string(),
                f => format!("type {:?}", (f as char).to_string()),
            };
            return Err(Error::unsupported(format!("{what}: unsupported tar entry type {t:?}")));
        }
    }
    Ok(Some(e))
}

fn put_u32(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(o: &mut Vec<u8>, b: &[u8]) {
    put_u32(o, b.len() as u32);
    o.extend_from_slice(b);
}

/// Entry kinds as [`encode_entry`] numbers them (0: a header with no entry).
pub fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::Reg => 1,
        Kind::Dir => 2,
        Kind::Symlink => 3,
        Kind::Hardlink => 4,
        Kind::Char => 5,
        Kind::Block => 6,
        Kind::Fifo => 7,
        Kind::Whiteout => 8,
        Kind::Opaque => 9,
    }
}

/// Little endian: u8 kind (0: no entry, nothing follows), u32 mode, f64 uid, gid, size, mtime,
/// u32 devMajor, devMinor, then length-prefixed (u32) UTF-8 path and link, a u32 count of xattrs
/// and each one's UTF-8 name and raw value, length-prefixed (src/layer/entries.ts decodes it).
pub fn encode_entry(o: &mut Vec<u8>, e: Option<&CanonEntry>) {
    let Some(e) = e else {
        o.push(0);
        return;
    };
    o.push(kind_code(e.kind));
    put_u32(o, e.mode);
    for v in [e.uid as f64, e.gid as f64, e.size as f64, e.mtime as f64] {
        o.extend_from_slice(&v.to_le_bytes());
    }
    let (major, minor) = e.dev.unwrap_or((0, 0));
    put_u32(o, major);
    put_u32(o, minor);
    put_bytes(o, e.path.as_bytes());
    put_bytes(o, e.link.as_deref().unwrap_or("").as_bytes());
    put_u32(o, e.xattrs.len() as u32);
    for (k, v) in &e.xattrs {
        put_bytes(o, k.as_bytes());
        put_bytes(o, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    fn hdr<'a>(flag: u8, name: &'a [u8], link: &'a [u8], pax: &'a [(&'a [u8], &'a [u8])]) -> Header<'a> {
        Header { flag, mode: 0o104755, uid: 1000.0, gid: 100.0, size: 5.0, mtime: 1_700_000_123.0, devmajor: 1, devminor: 3, name, link, pax }
    }
    const O: CanonOptions = CanonOptions { source_date_epoch: 1_600_000_000, keep_mtime: false };

    fn one(h: &Header) -> CanonEntry {
        canonical(h, &O).unwrap().unwrap()
    }

    #[test]
    fn paths_ids_modes_and_mtimes() {
        let e = one(&hdr(b'0', b"./usr//bin/./x", b"", &[]));
        assert_eq!((e.kind, e.path.as_str(), e.mode, e.uid, e.gid, e.size, e.mtime), (Kind::Reg, "usr/bin/x", 0o4755, 1000, 100, 5, 1_600_000_000));
        let kept = canonical(&hdr(b'0', b"x", b"", &[]), &CanonOptions { keep_mtime: true, ..O }).unwrap().unwrap();
        assert_eq!(kept.mtime, 1_700_000_123);
        assert_eq!(one(&hdr(b'5', b"./", b"", &[])).path, ".");
        // PAX ids and mtime win over the header's; a value that is not a number leaves the header's
        let pax: [(&[u8], &[u8]); 3] = [(b"gid", b" 7 "), (b"mtime", b"1500000000.75"), (b"uid", b"abc")];
        let e = one(&hdr(b'0', b"x", b"", &pax));
        assert_eq!((e.uid, e.gid, e.mtime), (1000, 7, 1_500_000_000));
        for bad in [&b"-1"[..], b"1.5", b"9007199254740992"] {
            let p: [(&[u8], &[u8]); 1] = [(b"uid", bad)];
            assert!(matches!(canonical(&hdr(b'0', b"x", b"", &p), &O), Err(e) if e.code() == Code::Corrupt), "{bad:?}");
        }
        let neg = Header { mtime: -300_000_000_000.0, ..hdr(b'0', b"x", b"", &[]) };
        assert!(matches!(canonical(&neg, &O), Err(e) if e.code() == Code::Corrupt));
    }

    #[test]
    fn paths_escaping_the_root_are_refused() {
        for (name, want) in [(&b"/etc/x"[..], "absolute path"), (b"a/../../x", "escapes the root"), (b"a\0b", "NUL")] {
            match canonical(&hdr(b'0', name, b"", &[]), &O) {
                Err(e) if e.code() == Code::Unsafe => assert!(e.message().contains(want), "{e}"),
                r => panic!("{name:?}: {r:?}"),
            }
        }
        assert!(matches!(canonical(&hdr(b'0', b"\xff", b"", &[]), &O), Err(e) if e.code() == Code::Unsupported));
        assert!(matches!(canonical(&hdr(b'1', b"a", b"../x", &[]), &O), Err(e) if e.code() == Code::Unsafe));
        assert!(matches!(canonical(&hdr(b'1', b"a", b"", &[]), &O), Err(e) if e.code() == Code::Unsafe));
        assert!(matches!(canonical(&hdr(b'1', b"a", b"./a", &[]), &O), Err(e) if e.code() == Code::Corrupt));
        assert!(matches!(canonical(&hdr(b'2', b"a", b"", &[]), &O), Err(e) if e.code() == Code::Corrupt));
        assert!(matches!(canonical(&hdr(b'S', b"a", b"", &[]), &O), Err(e) if e.code() == Code::Unsupported && e.message().contains("gnu-sparse")));
    }

    #[test]
    fn whiteouts_links_devices_and_xattrs() {
        let w = one(&hdr(b'0', b"etc/.wh.passwd", b"", &[]));
        assert_eq!((w.kind, w.path.as_str(), w.mode, w.uid, w.mtime), (Kind::Whiteout, "etc/passwd", 0, 0, 0));
        let o = one(&hdr(b'0', b"etc/.wh..wh..opq", b"", &[]));
        assert_eq!((o.kind, o.path.as_str()), (Kind::Opaque, "etc"));
        assert_eq!(one(&hdr(b'0', b".wh..wh..opq", b"", &[])).path, ".");
        assert_eq!(canonical(&hdr(b'0', b"a/.wh..wh.plnk", b"", &[]), &O).unwrap(), None);
        assert!(matches!(canonical(&hdr(b'0', b"a/.wh...", b"", &[]), &O), Err(e) if e.code() == Code::Unsafe));
        let l = one(&hdr(b'1', b"b", b"./a//c", &[]));
        assert_eq!((l.kind, l.link.as_deref()), (Kind::Hardlink, Some("a/c")));
        let s = one(&hdr(b'2', b"s", b"../../etc", &[]));
        assert_eq!(s.link.as_deref(), Some("../../etc")); // verbatim: resolved inside the root by readers
        let d = one(&hdr(b'4', b"dev/sda", b"", &[]));
        assert_eq!((d.kind, d.dev), (Kind::Block, Some((1, 3))));
        let x: [(&[u8], &[u8]); 3] = [(b"SCHILY.xattr.user.b", b"\xff\x00"), (b"SCHILY.xattr.security.capability", b"\x01"), (b"comment", b"x")];
        let e = one(&hdr(b'0', b"f", b"", &x));
        assert_eq!(e.xattrs, vec![("security.capability".to_string(), vec![1]), ("user.b".to_string(), vec![0xff, 0])]);
        assert_eq!(one(&hdr(b'0', b"f", b"", &[])).xattrs, vec![]);
        let twice: [(&[u8], &[u8]); 3] = [(b"SCHILY.xattr.user.a", b"1"), (b"SCHILY.xattr.user.b", b"x"), (b"SCHILY.xattr.user.a", b"2")];
        assert_eq!(one(&hdr(b'0', b"f", b"", &twice)).xattrs, vec![("user.a".to_string(), b"2".to_vec()), ("user.b".to_string(), b"x".to_vec())]);
    }

    #[test]
    fn pax_numbers_read_as_decimal_text() {
        assert_eq!(pax_number(b""), Some(0.0));
        assert_eq!(pax_number(b" 12\n"), Some(12.0));
        assert_eq!(pax_number(b"1e3"), Some(1000.0));
        assert_eq!(pax_number(b"0x1F"), Some(31.0));
        assert_eq!(pax_number(b"inf"), None);
        assert_eq!(pax_number(b"12abc"), None);
        assert_eq!(pax_number(b"1_0"), None);
    }
}
