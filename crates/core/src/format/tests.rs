//! Unit tests of the format reader: strict decoding, every rule, the merged tree's semantics, and a
//! bounded fuzz run over mutated TOCs (no input may panic, hang or pass the check inconsistently).

use super::tree::{NodeId, NodeKind, ROOT};
use super::*;
use serde_json::{json, Value};
use std::collections::HashMap;

const HEX: &str = "aa00000000000000000000000000000000000000000000000000000000000000";
const HEX2: &str = "bb00000000000000000000000000000000000000000000000000000000000000";

/// A TOC of the given layers (entries as JSON) with one pack, one frame and two 5-byte chunks.
fn toc(layers: Vec<Vec<Value>>) -> Value {
    json!({
        "version": 1,
        "chunker": { "kind": "cdc", "min": 16384, "avg": 65536, "max": 262144 },
        "packs": [format!("sha256:{HEX}")],
        "frames": [[0, 0, 20, 10]],
        "chunks": [[HEX, 0, 0, 5], [HEX2, 0, 5, 5]],
        "layers": layers.into_iter().map(|e| json!({ "entries": e })).collect::<Vec<_>>(),
    })
}

/// The same TOC as version 2 writes it: rows without digests, the digests in a table (returned).
fn toc_v2(layers: Vec<Vec<Value>>) -> (Value, Vec<u8>) {
    let mut v = toc(layers);
    let d = |h: &str| toc::parse_hex32(h).unwrap().0;
    let (table, r) = digests::build_table(&[d(HEX), d(HEX2)], 1);
    let mut sections = Vec::new();
    build::base64_encode(&mut sections, &r.hashes.concat());
    v["version"] = json!(2);
    v["chunks"] = json!([[0, 0, 5], [0, 5, 5]]);
    v["digests"] = json!({ "blob": r.blob, "section": 1, "sections": String::from_utf8(sections).unwrap() });
    (v, table)
}

fn blob(v: &Value) -> Vec<u8> {
    crate::frame::compress_frame(&[serde_json::to_string(v).unwrap().as_bytes()], 3).unwrap()
}

fn dir(p: &str) -> Value {
    json!({ "path": p, "type": "dir", "mode": 0o755 })
}
fn file(p: &str) -> Value {
    json!({ "path": p, "type": "reg", "mode": 0o644, "size": 5, "chunks": [0] })
}
fn link(p: &str, to: &str) -> Value {
    json!({ "path": p, "type": "symlink", "mode": 0o777, "link": to })
}
fn hard(p: &str, to: &str) -> Value {
    json!({ "path": p, "type": "hardlink", "link": to })
}
fn wh(p: &str) -> Value {
    json!({ "path": p, "type": "whiteout" })
}
fn opq(p: &str) -> Value {
    json!({ "path": p, "type": "opaque" })
}

fn check(v: &Value) -> std::result::Result<(Toc, Tree), Vec<Violation>> {
    check_toc(&blob(v)).map(|(t, tr, _)| (t, tr)).map_err(|r| r.violations)
}

/// The merged tree as "path kind [-> link]" lines, depth first (hardlinks as "path = first").
fn listing(v: &Value) -> Vec<String> {
    let (toc, tree) = check(v).unwrap_or_else(|e| panic!("{e:?}"));
    let mut out = Vec::new();
    let mut first = std::collections::HashMap::new();
    tree.walk(|p, _, _, id, is_first| {
        if !is_first {
            out.push(format!("{p} = {}", first[&id]));
            return;
        }
        first.insert(id, p.to_string());
        let n = tree.node(id);
        let e = tree.entry(&toc, id);
        let s = match n.kind {
            NodeKind::Dir => format!("{p} dir{}", if e.is_none() { " (implied)" } else { "" }),
            NodeKind::Reg => format!("{p} reg"),
            NodeKind::Symlink => format!("{p} -> {}", e.unwrap().link.as_deref().unwrap()),
            k => format!("{p} {k:?}"),
        };
        out.push(s);
    });
    out
}

fn messages(v: &Value) -> Vec<String> {
    match check(v) {
        Ok(_) => vec![],
        Err(e) => e.iter().map(|v| v.to_string()).collect(),
    }
}

#[test]
fn whiteouts_opaque_and_replacements() {
    let v = toc(vec![
        vec![dir("a"), file("a/x"), dir("a/y"), file("a/y/z"), dir("b"), file("b/old"), file("c"), file("d")],
        vec![wh("a/x"), opq("b"), file("b/new"), dir("c"), file("c/in"), link("d", "a")],
    ]);
    assert_eq!(listing(&v), ["a dir", "a/y dir", "a/y/z reg", "b dir", "b/new reg", "c dir", "c/in reg", "d -> a"]);
}

#[test]
fn symlinked_parents_resolve_inside_the_root() {
    let v = toc(vec![
        vec![link("lib", "/real"), dir("real"), link("rel", "../../../../real"), link("up", "..")],
        vec![file("lib/f1"), file("rel/f2"), file("up/f3")],
    ]);
    assert_eq!(listing(&v), ["f3 reg", "lib -> /real", "real dir", "real/f1 reg", "real/f2 reg", "rel -> ../../../../real", "up -> .."]);
}

#[test]
fn opaque_and_whiteout_through_symlinks_stay_inside() {
    // an absolute target that does not exist in the image: made inside the root (as containerd
    // makes a marker's parents), nothing outside
    let v = toc(vec![vec![link("a", "/etc"), file("f")], vec![opq("a"), wh("a/passwd")]]);
    assert_eq!(listing(&v), ["a -> /etc", "etc dir (implied)", "f reg"]);
    // a directory replaced by a symlink, then written through: the write follows it, inside the root
    let v = toc(vec![vec![dir("d"), dir("t")], vec![link("d", "/t")], vec![file("d/x")]]);
    assert_eq!(listing(&v), ["d -> /t", "t dir", "t/x reg"]);
}

#[test]
fn a_layers_markers_leave_what_the_same_layer_wrote_through_a_symlink() {
    // OCI image spec: whiteouts apply to the layers below only. `l/new` lands in `real`, which the
    // same layer makes opaque; `o/c` replaces `other/c`, which the same layer whites out.
    let v = toc(vec![
        vec![link("l", "real"), link("o", "/other"), dir("other"), file("other/c"), dir("real"), file("real/old"), dir("real/sub"), file("real/sub/x")],
        vec![file("l/new"), file("l/sub/y"), file("o/c"), wh("other/c"), opq("real")],
    ]);
    assert_eq!(listing(&v), ["l -> real", "o -> /other", "other dir", "other/c reg", "real dir", "real/new reg", "real/sub dir", "real/sub/y reg"]);
    // a whiteout of a directory this layer wrote into (through a link) keeps it, emptied of the rest
    let v = toc(vec![vec![link("a", "d"), dir("d"), file("d/old")], vec![file("a/new"), wh("d")]]);
    assert_eq!(listing(&v), ["a -> d", "d dir", "d/new reg"]);
}

#[test]
fn names_removed_with_their_directory_leave_the_link_count() {
    let v = toc(vec![vec![dir("d"), file("d/f"), hard("h", "d/f"), dir("o"), file("o/g"), hard("x", "o/g")], vec![wh("d"), opq("o")]]);
    let (_, tree) = check(&v).unwrap();
    assert_eq!(listing(&v), ["h reg", "o dir", "x reg"]);
    for name in ["h", "x"] {
        assert_eq!(tree.node(tree.node(ROOT).children[name]).nlink, 1, "{name}");
    }
}

#[test]
fn implied_parents_and_directory_metadata() {
    let v = toc(vec![vec![file("p/q/r")], vec![json!({ "path": "p", "type": "dir", "mode": 0o700, "uid": 5 })]]);
    let (t, tree) = check(&v).unwrap();
    assert_eq!(listing(&v), ["p dir", "p/q dir (implied)", "p/q/r reg"]);
    let p = tree.node(ROOT).children["p"];
    assert_eq!(tree.entry(&t, p).unwrap().uid, Some(5));
}

#[test]
fn hardlinks_share_nodes_across_layers() {
    let v = toc(vec![vec![file("a"), hard("b", "a")], vec![wh("a"), hard("c", "b")]]);
    assert_eq!(listing(&v), ["b reg", "c = b"]);
    let (_, tree) = check(&v).unwrap();
    let b = tree.node(ROOT).children["b"];
    assert_eq!(tree.node(b).nlink, 2);
}

#[test]
fn versions_are_read_in_one_pass_and_others_named() {
    // the versions this reader reads decode (one pass of the document)
    assert!(check(&toc(vec![vec![file("f")]])).is_ok());
    assert!(check(&toc_v2(vec![vec![file("f")]]).0).is_ok());
    // a later version is named as such, whether or not its document has this schema
    let mut v3 = toc(vec![vec![file("f")]]);
    v3["version"] = json!(3);
    let mut v3_other = json!({ "version": 3, "entries": {} });
    v3_other["other"] = json!([1, 2]);
    for v in [&v3, &v3_other] {
        let m = messages(v);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].contains("TOC version 3 is not supported"), "{m:?}");
    }
    let mut none = toc(vec![vec![file("f")]]);
    none.as_object_mut().unwrap().remove("version");
    assert!(messages(&none).iter().any(|m| m.contains("invalid TOC: no version")), "{:?}", messages(&none));
    let mut text = toc(vec![vec![file("f")]]);
    text["version"] = json!("1");
    assert!(messages(&text).iter().any(|m| m.contains("TOC version \"1\" is not supported")), "{:?}", messages(&text));
    // a supported version with a broken document: the parse error, with where it is
    let mut bad = toc(vec![vec![file("f")]]);
    bad["frames"] = json!("x");
    assert!(messages(&bad).iter().any(|m| m.contains("invalid TOC at byte")), "{:?}", messages(&bad));
}

#[test]
fn the_parents_cache_follows_replacements_and_symlinks() {
    let both = |v: &Value| {
        let t = toc::decode(serde_json::to_string(v).unwrap().as_bytes()).unwrap_or_else(|r| panic!("{:?}", r.violations));
        let (mut a, mut b) = (Report::default(), Report::default());
        let (cached, plain) = (Tree::build(&t, &mut a), Tree::build_uncached(&t, &mut b));
        assert_eq!(format!("{:?}", cached.nodes), format!("{:?}", plain.nodes));
        assert_eq!(format!("{:?}", a.violations), format!("{:?}", b.violations));
        a.violations.iter().map(|v| v.to_string()).collect::<Vec<_>>()
    };
    // neighbours through a symlink land in its target; a replaced target is seen by the next path
    let ok = toc(vec![vec![link("s", "t"), dir("t")], vec![file("s/f1"), file("s/f2"), file("s/g/h"), file("s/g/i"), file("t/j")]]);
    assert!(both(&ok).is_empty());
    assert_eq!(listing(&ok), ["s -> t", "t dir", "t/f1 reg", "t/f2 reg", "t/g dir (implied)", "t/g/h reg", "t/g/i reg", "t/j reg"].map(String::from).to_vec());
    let replaced = toc(vec![vec![link("s", "t"), dir("t"), link("u", "t")], vec![file("s/f1"), file("s/f2"), file("t"), file("u/f")]]);
    let m = both(&replaced);
    assert!(m.iter().any(|x| x.contains("\"t\" on the way is not a directory")), "{m:?}");
}

#[test]
fn rules_are_enforced() {
    let cases: Vec<(Value, &str)> = vec![
        (toc(vec![vec![hard("h", "d"), dir("d")]]), "out of canonical order"),
        (toc(vec![vec![dir("d"), hard("h", "d")]]), "hardlink target \"d\" is a directory"),
        (toc(vec![vec![hard("h", "nope")]]), "does not exist"),
        (toc(vec![vec![hard("h", "../etc/passwd")]]), "not a normalized relative path"),
        (toc(vec![vec![file("f"), file("f/x")]]), "\"f\" on the way is not a directory"),
        (toc(vec![vec![link(".", "/x")]]), "the root can only be a directory"),
        (toc(vec![vec![file("a/../b")]]), "not a normalized relative path"),
        (toc(vec![vec![file("/abs")]]), "not a normalized relative path"),
        (toc(vec![vec![json!({ "path": "f", "type": "reg", "mode": 0o644, "size": 6, "chunks": [0] })]]), "chunks add up to 5 bytes, size is 6"),
        (toc(vec![vec![json!({ "path": "f", "type": "fifo", "mode": 0o644, "chunks": [] })]]), "field chunks does not belong to a fifo entry"),
        (toc(vec![vec![json!({ "path": "f", "type": "char", "mode": 0o644 })]]), "needs devMajor and devMinor"),
        (toc(vec![vec![json!({ "path": "f", "type": "reg", "size": 5, "chunks": [0] })]]), "has no mode"),
        (toc(vec![vec![link("l", "")]]), "link is empty"),
        (toc(vec![vec![link("a", "b"), link("b", "a")], vec![file("a/x")]]), "too many levels of symbolic links"),
    ];
    for (v, want) in cases {
        let m = messages(&v);
        assert!(m.iter().any(|x| x.contains(want)), "want {want:?}, got {m:?}");
    }
}

#[test]
fn tables_are_checked() {
    let mut v = toc(vec![vec![file("f")]]);
    v["chunks"][1][0] = json!(HEX);
    assert!(messages(&v).iter().any(|m| m.contains("listed twice")));
    let mut v = toc(vec![vec![file("f")]]);
    v["frames"][0][3] = json!(1u64 << 30);
    assert!(messages(&v).iter().any(|m| m.contains("frame 0")));
    let mut v = toc(vec![vec![file("f")]]);
    v["chunks"][0][2] = json!(8);
    assert!(messages(&v).iter().any(|m| m.contains("does not fit frame 0")));
    let mut v = toc(vec![vec![file("f")]]);
    v["packs"][0] = json!("md5:abc");
    assert!(messages(&v).iter().any(|m| m.contains("is not a sha256 digest")));
}

#[test]
fn decoding_is_strict() {
    let base = serde_json::to_string(&toc(vec![vec![file("f")]])).unwrap();
    for (from, to, want) in [
        ("\"mode\":420", "\"mode\":\"420\"", "invalid type: string"),
        ("\"mode\":420", "\"mode\":420.0", "floating point"),
        ("\"mode\":420", "\"mode\":null", "null"),
        ("\"mode\":420", "\"mode\":420,\"mode\":2541", "duplicate field"),
        ("\"version\":1", "\"version\":7", "not supported"),
        ("\"type\":\"reg\"", "\"type\":\"sock\"", "unknown variant"),
    ] {
        let text = base.replacen(from, to, 1);
        assert_ne!(text, base, "{from}");
        let r = check_toc(&crate::frame::compress_frame(&[text.as_bytes()], 3).unwrap()).expect_err(want);
        assert!(r.violations[0].to_string().contains(want), "{want}: {:?}", r.violations);
    }
    // xattr names in document order must be sorted (serde_json's own maps sort, so edit the text)
    let x = serde_json::to_string(&toc(vec![vec![json!({ "path": "f", "type": "fifo", "mode": 0o644, "xattrs": { "a": "", "b": "AA==" } })]])).unwrap();
    let text = x.replacen("\"a\":\"\",\"b\":\"AA==\"", "\"b\":\"AA==\",\"a\":\"\"", 1);
    assert_ne!(text, x);
    let r = check_toc(&crate::frame::compress_frame(&[text.as_bytes()], 3).unwrap()).err().unwrap();
    assert!(r.violations[0].to_string().contains("not sorted"), "{:?}", r.violations);
    // unknown fields are ignored (optional additions within version 1)
    let text = base.replacen("\"mode\":420", "\"mode\":420,\"future\":[1,{}]", 1);
    assert!(check_toc(&crate::frame::compress_frame(&[text.as_bytes()], 3).unwrap()).is_ok());
    assert_eq!(toc::base64_decode("AAE="), Some(vec![0, 1]));
    assert_eq!(toc::base64_decode("AAF="), None, "non-canonical padding bits");
    assert_eq!(toc::base64_decode("A="), None);
}

#[test]
fn walk_visits_deep_trees_without_recursion() {
    let mut entries = vec![];
    let mut p = String::from("d");
    while p.len() < 4000 {
        entries.push(dir(&p));
        p.push_str("/d");
    }
    let v = toc(vec![entries]);
    assert_eq!(listing(&v).len(), 2000);
}

/// Mutations of valid TOCs: every outcome is a clean Ok or Err, never a panic; what passes builds
/// a tree whose every name resolves without a symlink. Bounded by OCICHUNK_FUZZ_SECS (default 5).
#[test]
fn a_version_2_toc_keeps_its_digests_in_the_table() {
    let (v, table) = toc_v2(vec![vec![file("f")]]);
    let (t, _) = check(&v).unwrap();
    assert_eq!(t.chunks[1], Chunk { frame: 0, offset: 5, len: 5 });
    assert_eq!(t.digests.get(0), None);
    t.digests.load(&table).unwrap();
    assert_eq!(t.digests.hex(1).unwrap(), HEX2);
    // every shape a version 2 TOC must not have
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut bad = |f: &dyn Fn(&mut Value), msg: &'static str| {
        let mut w = v.clone();
        f(&mut w);
        cases.push((w, msg));
    };
    bad(&|w| w["chunks"][0] = json!([HEX, 0, 0, 5]), "chunk rows are [frame, offset, length], without a digest");
    bad(&|w| w.as_object_mut().unwrap().remove("digests").map(drop).unwrap_or(()), "has no digests field");
    bad(&|w| w["digests"]["section"] = json!(0), "section of 0 chunks is out of range");
    bad(&|w| w["digests"]["blob"] = json!("sha256:xyz"), "is not a sha256 digest");
    bad(&|w| w["digests"]["sections"] = json!("AAAA"), "sections hold 3 bytes, 2 chunks in sections of 1 need 64");
    bad(&|w| w["digests"]["sections"] = json!("!!"), "sections is not base64");
    bad(&|w| w["digests"]["extra"] = json!(1), "unknown field `extra`");
    bad(&|w| w["chunks"][0] = json!([0, 0, 5, 1]), "chunk row is too long");
    bad(&|w| w["frames"][0] = json!([0, 0, 20, 10, 0]), "frame 0: dictionary 0 does not exist");
    bad(
        &|w| {
            w["dicts"] = json!([[0, 100, 50, 2 << 20]]);
            w["frames"][0] = json!([0, 0, 20, 10, 0]);
        },
        "dictionary 0: offset 100, 50 compressed / 2097152 bytes is out of range",
    );
    bad(&|w| w["frames"][0] = json!([0, 0, 20, 10, 0, 1]), "frame row is too long");
    bad(&|w| w["version"] = json!(1), "a version 1 TOC has no digests field");
    bad(
        &|w| {
            w["version"] = json!(1);
            w.as_object_mut().unwrap().remove("digests");
        },
        "every chunk row starts with its sha256 hex digest",
    );
    for (w, msg) in cases {
        let r = check_toc(&blob(&w)).err().unwrap_or_else(|| panic!("accepted: {w}"));
        assert!(r.violations.iter().any(|x| x.message.contains(msg)), "{msg}: {:?}", r.violations);
    }
    let mut v1 = toc(vec![vec![file("f")]]);
    v1["digests"] = v["digests"].clone();
    assert!(check(&v1).is_err(), "a version 1 TOC with a digests field");
    let mut v1 = toc(vec![vec![file("f")]]);
    v1["dicts"] = json!([[0, 100, 50, 1000]]);
    assert!(check(&v1).is_err(), "a version 1 TOC with dictionaries");
    // a frame with a dictionary that exists
    let mut w = v.clone();
    w["dicts"] = json!([[0, 100, 50, 1000]]);
    w["frames"][0] = json!([0, 0, 20, 10, 0]);
    let (t, _) = check(&w).unwrap();
    assert_eq!(t.frames[0].dict, Some(0));
}

#[test]
fn fuzz_toc_check() {
    let secs: u64 = std::env::var("OCICHUNK_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut seeds = vec![
        toc(vec![vec![dir("a"), file("a/x"), link("l", "/a"), hard("h", "a/x")], vec![wh("a/x"), opq("l"), file("l/y"), dir("z")]]),
        toc(vec![vec![link("a", "../../b"), file("f")], vec![file("a/c"), hard("g", "f")], vec![opq("."), dir("b")]]),
    ];
    seeds.extend(layer_cases());
    let (v2, table) = toc_v2(vec![vec![dir("a"), file("a/x"), link("l", "/a"), hard("h", "a/x")], vec![wh("a/x"), file("l/y")]]);
    seeds.push(v2);
    let mut passed = 0;
    let mut compared = 0;
    let atoms: Vec<Value> = vec![
        json!(null),
        json!(-1),
        json!(0),
        json!(1),
        json!(4294967296u64),
        json!(1.5),
        json!("x"),
        json!(""),
        json!("."),
        json!(".."),
        json!("a/../b"),
        json!("/etc"),
        json!("l"),
        json!("a/x"),
        json!([]),
        json!({}),
        json!("reg"),
        json!("dir"),
        json!("symlink"),
        json!("hardlink"),
        json!("whiteout"),
        json!("opaque"),
        json!("char"),
        json!(0o7777),
        json!(0o17777),
        json!(HEX),
    ];
    let mut rng: u64 = 0x9e3779b97f4a7c15;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let start = std::time::Instant::now();
    let mut runs = 0;
    while start.elapsed().as_secs() < secs {
        let mut v = seeds[next(seeds.len())].clone();
        for _ in 0..1 + next(4) {
            // pick a random leaf or container and replace it with an atom, or duplicate an entry
            let mut cur = &mut v;
            loop {
                let len = match cur {
                    Value::Array(a) => a.len(),
                    Value::Object(o) => o.len(),
                    _ => 0,
                };
                if len == 0 || next(4) == 0 {
                    break;
                }
                let i = next(len);
                cur = match cur {
                    Value::Array(a) => &mut a[i],
                    Value::Object(o) => o.values_mut().nth(i).unwrap(),
                    _ => unreachable!(),
                };
            }
            if let Value::Array(a) = cur {
                if !a.is_empty() && next(3) == 0 {
                    let i = next(a.len());
                    let dup = a[i].clone();
                    a.insert(next(a.len() + 1), dup);
                    continue;
                }
            }
            *cur = atoms[next(atoms.len())].clone();
        }
        let b = blob(&v);
        // the parents' cache changes nothing: the same nodes and violations as resolving every
        // path from the root
        if let Ok(t) = toc::decode(serde_json::to_string(&v).unwrap().as_bytes()) {
            let mut r = Report::default();
            t.validate(&mut r);
            if r.is_empty() {
                let (mut a, mut b) = (Report::default(), Report::default());
                let (cached, plain) = (Tree::build(&t, &mut a), Tree::build_uncached(&t, &mut b));
                assert_eq!(format!("{:?}", a.violations), format!("{:?}", b.violations), "{v}");
                assert_eq!(format!("{:?}", cached.nodes), format!("{:?}", plain.nodes), "{v}");
                compared += 1;
            }
        }
        if let Ok((t, tree, _)) = check_toc(&b) {
            let mut names = 0;
            tree.walk(|p, _, _, _, _| {
                assert!(toc::check_path(p, false).is_ok(), "{p}");
                names += 1;
            });
            assert!(names <= t.entry_count() * 3 + 1);
            // the layer views stacked by overlayfs show the same tree
            assert_layers_show_the_tree(&v);
            // a version 2 TOC takes its digest table, or a section of it, only as the TOC states it
            if t.digests.table_ref().is_some() {
                let i = next(3) as u32;
                let (o, l) = t.digests.section_span(i);
                let part = table.get(o as usize..(o + l) as usize).unwrap_or(&table[..0]);
                let _ = t.digests.add_section(i, part);
                let _ = t.digests.load(&table);
            }
            passed += 1;
        }
        runs += 1;
    }
    eprintln!("fuzz_toc_check: {runs} mutated TOCs in {secs} s, {passed} valid (their layer views checked), {compared} trees built with and without the parents' cache");
    assert!(runs > 10, "{runs} runs");
}

#[test]
fn view_gives_inodes_for_readers() {
    let v = toc(vec![vec![
        dir("d"),
        file("d/f"),
        hard("d/g", "d/f"),
        link("l", "d"),
        json!({ "path": "n", "type": "char", "mode": 0o666, "devMajor": 1, "devMinor": 3 }),
    ]]);
    let (t, tree) = check(&v).unwrap();
    let view = tree.view(&t);
    assert_eq!((t.digests.hex(0).unwrap(), t.digests.hex(1).unwrap()), (HEX.to_string(), HEX2.to_string()));
    let root = &view.inodes[0];
    assert_eq!((root.ino, root.kind, root.nlink), (1, "dir", 3));
    let names: Vec<&str> = root.children.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["d", "l", "n"]);
    let by_ino = |i: u64| view.inodes.iter().find(|n| n.ino == i).unwrap();
    let d = by_ino(root.children[0].1);
    assert_eq!(d.children.len(), 2);
    assert_eq!(d.children[0].1, d.children[1].1, "a hardlink shares its inode");
    let f = by_ino(d.children[0].1);
    assert_eq!((f.kind, f.nlink, f.size, f.chunks.clone()), ("reg", 2, 5, vec![0]));
    let l = by_ino(root.children[1].1);
    assert_eq!((l.kind, l.size, l.link.as_deref()), ("symlink", 1, Some("d")));
    let n = by_ino(root.children[2].1);
    assert_eq!((n.kind, n.rdev, n.dev_major, n.dev_minor), ("char", (1 << 8) | 3, Some(1), Some(3)));
    assert_eq!(view.inodes.len(), 5, "hardlinks once");
}

/// Metadata of the node at `path` as readers show it: (mode, uid, mtime, xattr names).
fn meta_at(v: &Value, path: &str) -> (u32, u32, i64, Vec<String>) {
    let (toc, tree) = check(v).unwrap_or_else(|e| panic!("{e:?}"));
    let mut found = None;
    tree.walk(|p, _, _, id, _| {
        if p == path {
            found = Some(id);
        }
    });
    let id = if path == "." { ROOT } else { found.unwrap_or_else(|| panic!("{path} not in the tree")) };
    let m = tree.meta(&toc, id);
    (m.mode, m.uid, m.mtime, m.xattrs.into_iter().map(|x| x.0).collect())
}

#[test]
fn merge_rules_follow_containerds_applier() {
    // the root's own entry is never applied: 0755, 0:0, mtime 0, no xattrs
    let root = json!({ "path": ".", "type": "dir", "mode": 0o700, "uid": 5, "mtime": 99, "xattrs": { "user.r": "eA==" } });
    assert_eq!(meta_at(&toc(vec![vec![root, file("f")]]), "."), (0o755, 0, 0, vec![]));
    // a directory entry over a directory: its mode, owner and mtime, the xattrs of both (its own win)
    let d1 = json!({ "path": "d", "type": "dir", "mode": 0o755, "xattrs": { "user.a": "MQ==", "user.b": "Mg==" } });
    let d2 = json!({ "path": "d", "type": "dir", "mode": 0o711, "uid": 3, "mtime": 7, "xattrs": { "user.b": "dHdv" } });
    let v = toc(vec![vec![d1], vec![d2]]);
    assert_eq!(meta_at(&v, "d"), (0o711, 3, 7, vec!["user.a".into(), "user.b".into()]));
    let (toc_, tree) = check(&v).unwrap();
    let id = tree.node(ROOT).children["d"];
    assert_eq!(tree.meta(&toc_, id).xattrs[1].1, b"two");
    // mtimes containerd cannot set show as 0
    let old = json!({ "path": "old", "type": "reg", "mode": 0o644, "mtime": -86400, "size": 5, "chunks": [0] });
    let new = json!({ "path": "new", "type": "reg", "mode": 0o644, "mtime": 9_223_372_037i64, "size": 5, "chunks": [0] });
    let last = json!({ "path": "last", "type": "reg", "mode": 0o644, "mtime": 9_223_372_036i64, "size": 5, "chunks": [0] });
    let v = toc(vec![vec![last, new, old]]);
    assert_eq!([meta_at(&v, "old").2, meta_at(&v, "new").2, meta_at(&v, "last").2], [0, 0, 9_223_372_036]);
    // a whiteout or opaque marker under a missing directory makes it
    let v = toc(vec![vec![file("f")], vec![wh("a/b/gone"), opq("c/d")]]);
    assert_eq!(listing(&v), ["a dir (implied)", "a/b dir (implied)", "c dir (implied)", "c/d dir (implied)", "f reg"]);
    // a hardlink to a lower layer's file that carries metadata gives it to the inode, every name
    let f = json!({ "path": "f", "type": "reg", "mode": 0o640, "uid": 7, "mtime": 1, "size": 5, "chunks": [0], "xattrs": { "user.a": "MQ==" } });
    let h = json!({ "path": "h", "type": "hardlink", "mode": 0o600, "uid": 2, "mtime": 3, "link": "f", "xattrs": { "user.b": "Mg==" } });
    let v = toc(vec![vec![f], vec![h, hard("h2", "f")]]);
    assert_eq!(meta_at(&v, "f"), (0o600, 2, 3, vec!["user.a".into(), "user.b".into()]));
    assert_eq!(meta_at(&v, "h2"), meta_at(&v, "f"));
    // a link to a symlink keeps the symlink's mode
    let s = link("s", "f");
    let h = json!({ "path": "h", "type": "hardlink", "mode": 0o600, "mtime": 3, "link": "s" });
    assert_eq!(meta_at(&toc(vec![vec![s], vec![h]]), "s"), (0o777, 0, 3, vec![]));
    // metadata on a hardlink comes with a mode, as on other entries
    let h = json!({ "path": "h", "type": "hardlink", "uid": 2, "link": "f" });
    assert!(messages(&toc(vec![vec![file("f")], vec![h]])).iter().any(|m| m.contains("field uid does not belong to a hardlink entry")));
}

/// overlayfs over the layer directories of [`layers::layer_views`] (bottom to top; a char 0/0 is a
/// whiteout, `trusted.overlay.opaque` hides what is below): path -> (kind, mode, uid, mtime,
/// xattrs, link, content node, inode).
type Shown = std::collections::BTreeMap<String, (String, u32, u32, i64, Vec<(String, Vec<u8>)>, Option<String>, Option<NodeId>, (usize, u64), u32)>;

fn overlay(v: &tree::TreeOut) -> Shown {
    use std::collections::BTreeMap;
    let by: HashMap<u64, &tree::InodeOut> = v.inodes.iter().map(|i| (i.ino, i)).collect();
    #[derive(Clone)]
    struct M {
        ino: (usize, u64),
        kids: BTreeMap<String, M>,
        dir: bool,
    }
    fn copy(by: &HashMap<u64, &tree::InodeOut>, layer: usize, ino: u64) -> M {
        let i = by[&ino];
        let dir = i.kind == "dir";
        let kids = i.children.iter().filter(|(_, c)| !is_wh(by[c])).map(|(n, c)| (n.clone(), copy(by, layer, *c))).collect();
        M { ino: (layer, ino), kids, dir }
    }
    fn is_wh(i: &tree::InodeOut) -> bool {
        i.kind == "char" && i.rdev == 0
    }
    fn merge(by: &HashMap<u64, &tree::InodeOut>, layer: usize, low: &mut M, ino: u64) {
        low.ino = (layer, ino);
        for (n, c) in &by[&ino].children {
            let ci = by[c];
            if is_wh(ci) {
                low.kids.remove(n);
            } else if ci.kind == "dir" && !ci.xattrs.iter().any(|x| x.0 == layers::OPAQUE_XATTR) && low.kids.get(n).is_some_and(|m| m.dir) {
                merge(by, layer, low.kids.get_mut(n).unwrap(), *c);
            } else {
                low.kids.insert(n.clone(), copy(by, layer, *c));
            }
        }
    }
    let top = by[&1];
    let mut root = M { ino: (0, 1), kids: BTreeMap::new(), dir: true };
    let mut order: Vec<(usize, u64)> = top.children.iter().map(|(n, l)| (n.parse().unwrap(), *l)).collect();
    order.sort();
    assert_eq!(order.iter().map(|o| o.0).collect::<Vec<_>>(), (0..order.len()).collect::<Vec<_>>());
    for (li, l) in order {
        merge(&by, li, &mut root, l);
    }
    let mut out = Shown::new();
    fn list(by: &HashMap<u64, &tree::InodeOut>, m: &M, path: &str, out: &mut Shown) {
        let i = by[&m.ino.1];
        let mut xattrs = i.xattrs.clone();
        xattrs.retain(|x| x.0 != layers::OPAQUE_XATTR);
        let nlink = if i.kind == "dir" { 0 } else { i.nlink };
        out.insert(path.to_string(), (i.kind.to_string(), i.mode, i.uid, i.mtime, xattrs, i.link.clone(), i.node.filter(|_| i.kind == "reg"), m.ino, nlink));
        for (n, c) in &m.kids {
            list(by, c, &if path == "." { n.clone() } else { format!("{path}/{n}") }, out);
        }
    }
    list(&by, &root, ".", &mut out);
    out
}

/// The merged view as [`overlay`] shows it (the inode: the node).
fn merged(v: &Value) -> Shown {
    let (toc, tree) = check(v).unwrap_or_else(|e| panic!("{e:?}"));
    let mut out = Shown::new();
    let mut add = |p: &str, id: NodeId| {
        let i = tree.inode_out(&toc, id, id as u64 + 1);
        let nlink = if i.kind == "dir" { 0 } else { i.nlink };
        out.insert(p.to_string(), (i.kind.to_string(), i.mode, i.uid, i.mtime, i.xattrs, i.link, i.node.filter(|_| i.kind == "reg"), (0, id as u64), nlink));
    };
    add(".", ROOT);
    tree.walk(|p, _, _, id, _| add(p, id));
    out
}

/// Overlay of the layer views shows the merged tree: every field, and the same names share an
/// inode (the layer a name shows from may differ; inodes are compared as groups).
fn assert_layers_show_the_tree(v: &Value) {
    let (toc, _) = check(v).unwrap();
    let views = layers::layer_views(&toc).unwrap_or_else(|e| panic!("{:?}", e.violations));
    let got = overlay(&views);
    let want = merged(v);
    let strip = |s: &Shown| s.iter().map(|(p, t)| (p.clone(), (t.0.clone(), t.1, t.2, t.3, t.4.clone(), t.5.clone(), t.6, t.8))).collect::<Vec<_>>();
    assert_eq!(strip(&got), strip(&want));
    // hardlink groups: names sharing an inode in one share it in the other
    let groups = |s: &Shown| {
        let mut g: HashMap<(usize, u64), Vec<String>> = HashMap::new();
        for (p, t) in s {
            if t.0 != "dir" {
                g.entry(t.7).or_default().push(p.clone());
            }
        }
        let mut v: Vec<Vec<String>> = g.into_values().collect();
        v.sort();
        v
    };
    assert_eq!(groups(&got), groups(&want));
}

#[test]
fn layer_views_stacked_by_overlayfs_show_the_merged_tree() {
    for v in &layer_cases() {
        assert_layers_show_the_tree(v);
    }
}

/// Multi-layer TOCs exercising every merge rule (also fuzz seeds).
fn layer_cases() -> Vec<Value> {
    let meta = |p: &str, mode: u32, mtime: i64| json!({ "path": p, "type": "dir", "mode": mode, "mtime": mtime, "xattrs": { "user.x": "eA==" } });
    let cases = vec![
        // whiteouts, opaque markers, replacements of every kind
        toc(vec![
            vec![dir("a"), file("a/x"), dir("a/y"), file("a/y/z"), dir("b"), file("b/old"), dir("b/sub"), file("c"), file("d"), dir("e"), file("e/f")],
            vec![wh("a/x"), opq("b"), file("b/new"), dir("c"), file("c/in"), link("d", "a"), file("e")],
            vec![wh("b"), dir("b"), file("b/again"), wh("e"), dir("e")],
        ]),
        // symlinked parents: a write through a link lands where the tree has it
        toc(vec![
            vec![link("lib", "/real"), dir("real"), file("real/base"), link("rel", "../../../../real")],
            vec![file("lib/f1"), dir("lib/sub"), file("lib/sub/deep"), wh("rel/base"), file("rel/f2")],
        ]),
        // hardlinks within a layer and to a lower layer; a group losing a name
        toc(vec![
            vec![file("f"), hard("g", "f"), hard("h", "f"), file("z")],
            vec![wh("g"), hard("k", "f")],
            vec![json!({ "path": "m", "type": "hardlink", "mode": 0o600, "uid": 3, "mtime": 9, "link": "z" })],
        ]),
        // a group that only loses a name
        toc(vec![vec![file("f"), hard("g", "f"), file("z")], vec![wh("g")]]),
        // a directory entry over a directory: new metadata, xattrs merged, children kept
        toc(vec![vec![meta("d", 0o755, 1), file("d/keep")], vec![json!({ "path": "d", "type": "dir", "mode": 0o700, "mtime": 2 })], vec![]]),
        // the root made opaque; markers under missing directories
        toc(vec![vec![file("top"), dir("x"), file("x/y")], vec![opq("."), wh("n/o/p"), file("only"), opq("q/r")]]),
    ];
    cases
}

#[test]
fn plan_reads_names_the_chunks_of_a_trace_in_order_each_once() {
    let big = json!({ "path": "b", "type": "reg", "mode": 0o644, "size": 10, "chunks": [1, 0] });
    let v = toc(vec![vec![big, dir("d"), file("d/a"), file("gone"), link("l", "d")], vec![wh("gone")]]);
    assert_eq!(messages(&v), Vec::<String>::new());
    let Ok(c) = Checked::open(&blob(&v)) else { panic!("the TOC is valid") };
    assert_eq!(c.lookup("/d/a"), c.lookup("d/./a"));
    assert!(c.lookup("/d/a").is_some());
    // symlinks are not followed, `..` is refused, a whiteout removes
    assert_eq!(c.lookup("/l/a"), None);
    assert_eq!(c.lookup("/d/../b"), None);
    assert_eq!(c.lookup("/gone"), None);
    // b's second half is chunk 0, its first chunk 1; a directory, a missing path, a read past the end: nothing
    let reads = [("/b", 5, 5), ("/d/a", 0, 1), ("/b", 0, u64::MAX), ("/d", 0, 1), ("/nope", 0, 1), ("/d/a", 5, 1)];
    assert_eq!(c.plan_reads(reads), vec![0, 1]);
    assert_eq!(c.plan_reads([("/b", 0, 1), ("/b", 4, 2)]), vec![1, 0]);
}

#[test]
fn a_stored_tocs_chunks_enter_the_dictionary_as_foreign_once() {
    use dict::{DictLocation, Location, PackName};
    let (mut v, table) = toc_v2(vec![vec![file("f")]]);
    v["dicts"] = json!([[0, 100, 50, 1000]]);
    v["frames"] = json!([[0, 0, 20, 5, 0], [0, 20, 20, 5]]);
    v["chunks"] = json!([[0, 0, 5], [1, 0, 5]]);
    let (t, _) = check(&v).unwrap();
    let mut d = ChunkDict::new();
    assert!(d.add_stored(&t).is_err(), "digests not loaded");
    assert_eq!(d.len(), 0);
    t.digests.load(&table).unwrap();
    // a chunk known before keeps its place
    let hex2 = toc::parse_hex32(HEX2).unwrap().0;
    let (known, _) = d.intern(&hex2, 5);
    let mine = Location { pack: d.pack_ref(PackName::Written(0)), offset: 7, compressed_len: 3, len: 5, inner: 0, dict: None };
    d.set_location(known, mine);
    assert_eq!(d.add_stored(&t).unwrap(), 1);
    let id = d.get(&toc::parse_hex32(HEX).unwrap().0).unwrap();
    assert!(d.is_foreign(id) && !d.is_foreign(known));
    assert_eq!(d.location(known), Some(mine));
    let at = d.location(id).unwrap();
    assert_eq!((at.offset, at.compressed_len, at.len, at.inner), (0, 20, 5, 0));
    assert_eq!(d.pack_name(at.pack), &PackName::Stored(format!("sha256:{HEX}")));
    let dl = d.dict_location(at.dict.unwrap());
    assert_eq!(dl, DictLocation { pack: at.pack, offset: 100, compressed_len: 50, len: 1000 });
    // the same TOC again adds nothing
    assert_eq!(d.add_stored(&t).unwrap(), 0);
    assert_eq!(d.len(), 2);
}
