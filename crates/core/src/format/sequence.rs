//! The order a layer's file contents are placed in (docs/format.md §4, §5), taken in one pass over
//! a layer that is nearly in canonical order.
//!
//! Frames hold chunks in canonical order. Most layers come in one of two orders: a directory walk's
//! (component by component, which is canonical order) or the byte order of whole paths (what sorting
//! a diff's list of changed paths gives: `etc/python3.11/x` before `etc/python3/y`, since `.` sorts
//! below `/`). In the second, an entry can only be followed by a canonically smaller one where its
//! path has a byte below `/` right after the path of a directory `D` whose children have not come yet:
//! `D/...` follows `D.x` in byte order. Such an entry is **held** (its chunks wait in the spool) until
//! the scan is past `D`'s children (a path at or above `D` + `"0"` in byte order), then **released**
//! in canonical order; every other entry is placed as it comes.
//!
//! Whatever the layer's real order, what is placed is checked: regular files and hardlinks leave in
//! strictly increasing canonical order, no later entry replaces one of them (the last entry per path
//! wins), and a hardlink group's content stays at its member first in canonical order. When a check
//! fails the layer is converted again in two passes. So the placement is canonical order's either
//! way, and the frames the same bytes.

use super::canonical::{CanonEntry, OPAQUE, WH};
use super::toc::{order_key, parent_and_name, rank, Kind};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

/// Places in a path looked at for a directory it may wait for (real paths have a few: `-`, `.`).
const MAX_CANDIDATES: usize = 32;

/// What becomes of one entry's content as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// placed as it comes (also a header with no file: its content is placed as it comes, as it
    /// always was)
    Now = 0,
    /// spooled until released
    Held = 1,
}

/// Entries in arrival order in; their routes, and what leaves the hold when, out.
#[derive(Default)]
pub struct Sequencer {
    /// directories of this layer seen so far
    dirs: HashSet<String>,
    /// directories that something of this layer was seen in
    parents: HashSet<String>,
    /// paths of the regular files and hardlinks taken so far
    content: HashSet<String>,
    /// hardlink targets not seen (yet) in this layer
    link_targets: HashSet<String>,
    /// held entries by canonical key (each path holds once)
    held: BinaryHeap<Reverse<Held>>,
    /// the canonical key of the last content entry that left (placed or released)
    last: Option<Vec<u8>>,
}

/// A held entry: its canonical key, its index among the drafts, and where the children of the
/// directories it waits for end (`children_end`).
type Held = (Vec<u8>, u32, Vec<Vec<u8>>);

/// An entry that breaks what one pass can do: the path to name (the layer is then read again).
pub type Late = String;

/// The name an entry had in the tar, as far as order goes (whiteouts and opaque markers are named
/// for what they hide).
fn tar_name(e: &CanonEntry) -> String {
    match e.kind {
        Kind::Whiteout => match parent_and_name(&e.path) {
            ("", base) => format!("{WH}{base}"),
            (dir, base) => format!("{dir}/{WH}{base}"),
        },
        Kind::Opaque => format!("{}/{OPAQUE}", e.path),
        _ => e.path.clone(),
    }
}

/// Where `D`'s children end in byte order: `D` followed by `0`, the byte after `/`. A name at or
/// above it is past them.
fn children_end(d: &str) -> Vec<u8> {
    let mut end = d.as_bytes().to_vec();
    end.push(b'0');
    end
}

impl Sequencer {
    /// The next entry (draft `idx`) arrives. `released` gets the drafts that leave the hold before
    /// it, in canonical order; returns the entry's route.
    pub fn arrive(&mut self, idx: u32, e: &CanonEntry, released: &mut Vec<u32>) -> Result<Route, Late> {
        let (p, _) = parent_and_name(&e.path);
        if !self.parents.contains(p) {
            self.parents.insert(p.to_string());
        }
        if e.kind == Kind::Dir {
            self.dirs.insert(e.path.clone());
        }
        // what waited for directories this entry is past leaves first
        if !self.held.is_empty() {
            let name = tar_name(e);
            while self.held.peek().is_some_and(|Reverse((_, _, ends))| ends.iter().all(|end| name.as_bytes() >= &end[..])) {
                let Some(Reverse((key, i, _))) = self.held.pop() else { break };
                self.leave(key, &e.path)?;
                released.push(i);
            }
        }
        if rank(e.kind) == 1 && self.content.contains(&e.path) {
            // a later entry of the same path replaces a file whose chunks are placed or held
            return Err(e.path.clone());
        }
        if matches!(e.kind, Kind::Reg | Kind::Hardlink) && self.link_targets.contains(&e.path) {
            // a hardlink came before its target (or the next link of a chain): its group's content
            // may belong to that earlier link
            return Err(e.path.clone());
        }
        match e.kind {
            Kind::Reg => {}
            Kind::Hardlink => {
                let t = e.link.clone().unwrap_or_default();
                if self.content.contains(&t) {
                    if order_key(&t) >= order_key(&e.path) {
                        // the group's content goes to this link, canonically first
                        return Err(e.path.clone());
                    }
                } else {
                    self.link_targets.insert(t);
                }
            }
            _ => return Ok(Route::Now),
        }
        self.content.insert(e.path.clone());
        let key = order_key(&e.path);
        let p = e.path.as_bytes();
        // (the first MAX_CANDIDATES places only: a hostile path of thousands of such bytes costs no
        // more; a blocker missed makes the order check fail later, and the layer takes two passes)
        let ends: Vec<Vec<u8>> = (1..p.len())
            .filter(|&i| p[i] < b'/' && p[i - 1] != b'/' && e.path.is_char_boundary(i))
            .take(MAX_CANDIDATES)
            .map(|i| &e.path[..i])
            .filter(|d| self.dirs.contains(*d) && !self.parents.contains(*d))
            .map(children_end)
            .collect();
        let behind = self.held.peek().is_some_and(|Reverse((k, _, _))| *k < key);
        if ends.is_empty() && !behind {
            self.leave(key, &e.path)?;
            return Ok(Route::Now);
        }
        self.held.push(Reverse((key, idx, ends)));
        Ok(Route::Held)
    }

    /// The layer's end: everything still held leaves, in canonical order.
    pub fn finish(&mut self, released: &mut Vec<u32>) -> Result<(), Late> {
        while let Some(Reverse((key, i, _))) = self.held.pop() {
            self.leave(key, "")?;
            released.push(i);
        }
        Ok(())
    }

    /// A content entry leaves (placed or released): strictly after the one before, canonically.
    fn leave(&mut self, key: Vec<u8>, arriving: &str) -> Result<(), Late> {
        if self.last.as_ref().is_some_and(|l| *l >= key) {
            return Err(if arriving.is_empty() { String::from_utf8_lossy(&key).replace('\0', "/") } else { arriving.to_string() });
        }
        self.last = Some(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::build::tests::ent;

    /// Routes and release points of entries in arrival order: `name` placed, `(name)` held,
    /// `>name` released before the next entry (or at the end); Err with the path that broke it.
    fn run(es: &[CanonEntry]) -> Result<Vec<String>, String> {
        let mut s = Sequencer::default();
        let mut out = Vec::new();
        let mut rel = Vec::new();
        for (i, e) in es.iter().enumerate() {
            let r = s.arrive(i as u32, e, &mut rel)?;
            out.extend(rel.drain(..).map(|j| format!(">{}", es[j as usize].path)));
            if matches!(e.kind, Kind::Reg | Kind::Hardlink) {
                out.push(if r == Route::Held { format!("({})", e.path) } else { e.path.clone() });
            }
        }
        s.finish(&mut rel)?;
        out.extend(rel.drain(..).map(|j| format!(">{}", es[j as usize].path)));
        Ok(out)
    }

    #[test]
    fn byte_order_of_whole_paths_is_taken_in_one_pass() {
        use Kind::*;
        // what sorting a diff's paths gives: python3.11 before python3's children
        let es = [
            ent(Dir, "etc", None),
            ent(Reg, "etc/a", None),
            ent(Dir, "etc/python3", None),
            ent(Dir, "etc/python3.11", None),
            ent(Reg, "etc/python3.11/site.py", None),
            ent(Reg, "etc/python3.11/z", None),
            ent(Reg, "etc/python3/debian_config", None),
            ent(Reg, "etc/python3/x.cfg", None),
            ent(Reg, "etc/rc.local", None),
        ];
        assert_eq!(
            run(&es).unwrap(),
            [
                "etc/a",
                "(etc/python3.11/site.py)",
                "(etc/python3.11/z)",
                "etc/python3/debian_config",
                "etc/python3/x.cfg",
                ">etc/python3.11/site.py",
                ">etc/python3.11/z",
                "etc/rc.local"
            ]
        );
        // a directory walk's order (canonical) holds nothing: python3's children came first
        let walk = [0, 1, 2, 6, 7, 3, 4, 5, 8].map(|i| es[i].clone());
        assert_eq!(
            run(&walk).unwrap(),
            ["etc/a", "etc/python3/debian_config", "etc/python3/x.cfg", "etc/python3.11/site.py", "etc/python3.11/z", "etc/rc.local"]
        );
        // held until the end when nothing comes after python3's children
        assert_eq!(run(&es[..8]).unwrap()[5..], [">etc/python3.11/site.py", ">etc/python3.11/z"]);
        // no directory `etc/python3` in the layer: nothing to wait for
        let es2 = [ent(Reg, "etc/python3.11/x", None), ent(Reg, "etc/rc", None)];
        assert_eq!(run(&es2).unwrap(), ["etc/python3.11/x", "etc/rc"]);
    }

    #[test]
    fn a_path_full_of_bytes_below_slash_is_looked_at_in_a_bounded_number_of_places() {
        use Kind::*;
        let long = "a".to_string() + &"-".repeat(4000);
        let mut es = vec![ent(Dir, "a", None)];
        es.extend((0..2000).map(|i| ent(Reg, &format!("{long}{i:05}"), None)));
        // each waits for a's children, which never come: released at the end, in order (the first
        // MAX_CANDIDATES places of each path looked at, not its 4000)
        let r = run(&es).unwrap();
        assert_eq!(r.len(), 4000);
        assert!(r[..2000].iter().all(|x| x.starts_with('(')) && r[2000..].iter().all(|x| x.starts_with('>')));
    }

    #[test]
    fn what_one_pass_cannot_place_in_canonical_order_is_refused() {
        use Kind::*;
        // a child of a directory the layer does not name, after a sibling that sorts above it
        assert_eq!(run(&[ent(Reg, "a.b", None), ent(Reg, "a/c", None)]), Err("a/c".into()));
        // plain disorder
        assert_eq!(run(&[ent(Reg, "b", None), ent(Reg, "a", None)]), Err("a".into()));
        // the same path twice: the last wins, the first's chunks would be placed for nothing
        assert_eq!(run(&[ent(Reg, "a", None), ent(Reg, "a", None)]), Err("a".into()));
        assert_eq!(run(&[ent(Reg, "a", None), ent(Symlink, "a", Some("b"))]), Err("a".into()));
        // a hardlink canonically before its target holds the group's content
        assert_eq!(run(&[ent(Reg, "b5", None), ent(Hardlink, "b", Some("b5"))]), Err("b".into()));
        assert_eq!(run(&[ent(Hardlink, "b", Some("c")), ent(Reg, "c", None)]), Err("c".into()));
        // ... or before a link of a chain that ends at it (found by fuzz_sequence)
        assert_eq!(run(&[ent(Hardlink, "a.b", Some("c")), ent(Reg, "b", None), ent(Hardlink, "c", Some("b"))]), Err("c".into()));
        // ... after it, the target keeps it; a link to what the layer does not hold is no content
        assert_eq!(run(&[ent(Reg, "a", None), ent(Hardlink, "b", Some("a"))]).unwrap(), ["a", "b"]);
        assert_eq!(run(&[ent(Hardlink, "b", Some("lower")), ent(Reg, "c", None)]).unwrap(), ["b", "c"]);
        // entries without content never break the order; a whiteout beside the file it hides is fine
        assert_eq!(run(&[ent(Dir, "z", None), ent(Reg, "a", None), ent(Whiteout, "a", None), ent(Symlink, "0", Some("a"))]).unwrap(), ["a"]);
    }

    /// Random layers in byte order, canonical order or shuffled: whenever one pass takes a layer,
    /// it places the regular files' contents exactly in the order two passes would (canonical
    /// order after the last entry per path wins and hardlink groups are settled); it never panics.
    #[test]
    fn fuzz_sequence() {
        use crate::format::build::{canonical_order, Draft};
        let secs: u64 = std::env::var("OCICHUNK_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
        let mut rng: u64 = std::env::var("OCICHUNK_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1);
        eprintln!("fuzz_sequence: OCICHUNK_FUZZ_SEED={rng}");
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n.max(1) as u64) as usize
        };
        let names = ["a", "b", "a.b", "a-b", "a.d", "b0", "a b", "c"];
        let kinds = [Kind::Dir, Kind::Dir, Kind::Reg, Kind::Reg, Kind::Reg, Kind::Hardlink, Kind::Symlink, Kind::Whiteout, Kind::Opaque];
        let start = std::time::Instant::now();
        let (mut runs, mut taken) = (0u64, 0u64);
        while start.elapsed().as_secs() < secs {
            let n = 1 + next(30);
            let mut es: Vec<CanonEntry> = Vec::with_capacity(n);
            for _ in 0..n {
                let depth = 1 + next(3);
                let path = (0..depth).map(|_| names[next(names.len())]).collect::<Vec<_>>().join("/");
                let kind = kinds[next(kinds.len())];
                let link = match kind {
                    Kind::Hardlink if !es.is_empty() && next(4) > 0 => Some(es[next(es.len())].path.clone()),
                    Kind::Hardlink | Kind::Symlink => Some(names[next(names.len())].to_string()),
                    _ => None,
                };
                es.push(ent(kind, &path, link.as_deref()));
            }
            match next(4) {
                0 | 1 => es.sort_by_cached_key(tar_name),
                2 => es.sort_by_key(|e| order_key(&e.path)),
                _ => {}
            }
            runs += 1;
            let mut seq = Sequencer::default();
            let mut placed: Vec<u32> = Vec::new();
            let mut rel = Vec::new();
            let mut ok = true;
            for (i, e) in es.iter().enumerate() {
                match seq.arrive(i as u32, e, &mut rel) {
                    Ok(r) => {
                        placed.append(&mut rel);
                        if r == Route::Now && matches!(e.kind, Kind::Reg | Kind::Hardlink) {
                            placed.push(i as u32);
                        }
                    }
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok || seq.finish(&mut rel).is_err() {
                continue;
            }
            placed.append(&mut rel);
            taken += 1;
            // one chunk per regular file, named by the file's index: two passes place them in the
            // order canonical_order gives
            let drafts: Vec<Draft> =
                es.iter().enumerate().map(|(i, e)| Draft { entry: e.clone(), chunks: (e.kind == Kind::Reg).then(|| vec![i as u32]) }).collect();
            let want: Vec<u32> = canonical_order(drafts).into_iter().filter_map(|d| d.chunks).flatten().collect();
            let got: Vec<u32> = placed.into_iter().filter(|&i| es[i as usize].kind == Kind::Reg).collect();
            assert_eq!(got, want, "entries {:?}", es.iter().map(|e| (e.kind, e.path.clone(), e.link.clone())).collect::<Vec<_>>());
        }
        eprintln!("fuzz_sequence: {runs} layers in {secs} s, {taken} taken in one pass");
        assert!(runs > 10 && taken > 0, "{runs} runs, {taken} in one pass");
    }
}
