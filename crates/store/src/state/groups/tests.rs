//! Tests of the frozen child groups: patched groups against groups built whole and the
//! naive walk, copies made by appends, chunk layout after batches.

use super::*;
use crate::state::fixtures::*;
use std::collections::{HashMap, HashSet};

use ward_core::{AgentId, EntryId, RegistrationEntry, SpiffeId, TrustDomain};

/// Checks every frozen group against the entries: exactly the children of its parent,
/// sorted across chunks, chunks neither empty nor oversized, length and descent marks
/// current.
fn check_groups(s: &State) {
    let parent_ids: HashSet<&str> = s.all_entries().map(|e| e.parent_id.as_str()).collect();
    for (hash, r) in &s.ids {
        let Some(g) = &r.group else { continue };
        let kids: Vec<&Child> = g.children().collect();
        assert_eq!(kids.len(), g.len);
        assert!(g.chunks().all(|c| !c.children.is_empty() && c.children.len() <= 2 * CHUNK));
        for w in kids.windows(2) {
            let order = w[0].cmp_id(w[1].key, w[1].entry.id.as_str());
            assert_eq!(order, std::cmp::Ordering::Less);
        }
        let mut want: Vec<&str> = s
            .all_entries()
            .filter(|e| g.parent.is(e.parent_id.as_str()))
            .map(|e| e.id.as_str())
            .collect();
        want.sort_unstable();
        let mut got: Vec<&str> = kids.iter().map(|c| c.entry.id.as_str()).collect();
        got.sort_unstable();
        assert_eq!(got, want, "group under hash {hash:x}");
        for c in &kids {
            assert!(Arc::ptr_eq(&c.entry, s.entry(&c.entry.id).unwrap()), "stale entry");
        }
        for chunk in g.chunks() {
            assert!(chunk.marks.as_ref().is_none_or(|m| !m.is_empty()), "empty marks kept");
            let marks = chunk.marks();
            assert!(marks.windows(2).all(|w| w[0].0 < w[1].0), "marks in order");
            assert!(marks.iter().all(|&(at, _)| (at as usize) < chunk.children.len()));
            for (i, c) in chunk.children.iter().enumerate() {
                let mark = marks.iter().find(|(at, _)| *at as usize == i);
                let parents = parent_ids.contains(c.entry.spiffe_id.as_str());
                assert_eq!(mark.is_some(), parents, "mark of {}", c.entry.id.as_str());
                if let Some(&(_, h)) = mark {
                    assert_eq!(h, key_hash(c.entry.spiffe_id.as_str()));
                }
            }
        }
        assert_eq!(g.descend, g.chunks().any(|c| !c.marks().is_empty()));
    }
}

#[test]
fn many_dirty_groups_built_on_two_threads_are_those_of_the_entries() {
    let mut s = State::new(TrustDomain::new("example.org").unwrap());
    let parents = PARALLEL_REFREEZE + 100;
    let mut number = 0;
    for p in 0..parents {
        let parent = format!("spiffe://example.org/p/{p}");
        for c in 0..2 {
            // The first child of each parent is the next parent: groups carry marks.
            let spiffe = match c {
                0 => format!("spiffe://example.org/p/{}", p + 1),
                _ => format!("spiffe://example.org/w/{p}"),
            };
            number += 1;
            assert!(s.insert_new_entry(entry(&format!("e-{p}-{c}"), &spiffe, &parent), number));
        }
    }
    assert!(s.dirty.len() >= PARALLEL_REFREEZE);
    s.refreeze_dirty_groups();
    assert!(s.dirty.is_empty());
    assert_eq!(s.ids.values().filter(|r| r.group.is_some()).count(), parents);
    check_groups(&s);
}

/// SPIRE's walk done naively from a parent → children map of every entry.
fn naive_walk(s: &State, agent: &AgentId) -> Vec<String> {
    let mut children: HashMap<&str, Vec<&RegistrationEntry>> = HashMap::new();
    for e in s.all_entries() {
        children.entry(e.parent_id.as_str()).or_default().push(e);
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![agent.0.as_str()];
    while let Some(p) = stack.pop() {
        if !seen.insert(p) {
            continue;
        }
        for e in children.get(p).into_iter().flatten() {
            out.push(e.id.as_str().to_owned());
            stack.push(e.spiffe_id.as_str());
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// A parent with hundreds of children changed a few at a time: the groups are patched
/// chunk by chunk (split when they grow, dropped when empty) and must always equal what
/// the entries say.
#[test]
fn patched_groups_match_the_entries() {
    let td = TrustDomain::new("example.org").unwrap();
    let mut s = State::new(td);
    let agents: Vec<String> =
        (0..2).map(|i| format!("spiffe://example.org/spire/agent/{i}")).collect();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    // Ids share 8-byte prefixes in runs so the full-id tie-break is exercised too.
    let id_of = |n: u64| format!("{:08}-{n}", n % 37);
    for n in 0..600 {
        let parent = &agents[(n % 2) as usize];
        s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), parent));
    }
    s.refreeze_dirty_groups();
    check_groups(&s);
    for round in 0..300 {
        for _ in 0..1 + next(4) {
            let n = next(900);
            let id = EntryId::new(&id_of(n)).unwrap();
            match next(5) {
                0 => {
                    s.remove_entry(&id);
                }
                1 => {
                    // Nested under another workload: toggles that one's descent mark.
                    let under = format!("spiffe://example.org/w/{}", next(900));
                    s.put_entry(entry(id.as_str(), &format!("spiffe://example.org/w/{n}"), &under));
                }
                _ => {
                    let parent = &agents[next(2) as usize];
                    s.put_entry(entry(id.as_str(), &format!("spiffe://example.org/w/{n}"), parent));
                }
            }
        }
        s.refreeze_dirty_groups();
        check_groups(&s);
        for a in &agents {
            let agent = AgentId(SpiffeId::parse(a).unwrap());
            assert_eq!(ids_of(&s, &agent), naive_walk(&s, &agent), "round {round}");
        }
    }
    // One more child: the agent's group is patched, keeping every chunk but the one the
    // child falls in.
    let agent = AgentId(SpiffeId::parse(&agents[0]).unwrap());
    let group_of = |s: &State| s.ids[&key_hash(agent.0.as_str())].group.clone().unwrap();
    let before = group_of(&s);
    let count = before.chunks().count();
    assert!(count > 2, "{count}");
    s.put_entry(entry("00000005-extra", "spiffe://example.org/extra", &agents[0]));
    s.refreeze_dirty_groups();
    let after = group_of(&s);
    assert_eq!(after.len, before.len + 1);
    let kept =
        before.chunks().filter(|c| after.chunks().any(|d| Arc::ptr_eq(&c.children, &d.children)));
    assert_eq!(kept.count(), count - 1);
    check_groups(&s);
}

/// Children whose ids sort after every other (server-chosen ids come in time order) go
/// in a new chunk merged with the small chunks at the tail: every chunk but the last
/// is kept as it was, full chunks among them, and the groups (descent marks included)
/// stay exactly what the entries say.
#[test]
fn children_appended_in_id_order_open_new_chunks() {
    let mut s = State::new(TrustDomain::new("example.org").unwrap());
    let agent = "spiffe://example.org/spire/agent/a";
    let hash = key_hash(agent);
    // Ids share their first 8 bytes, as time-ordered UUIDs made close together do.
    let id_of = |n: u64| format!("0193a5f2-{n:06}");
    for n in 0..3 {
        s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), agent));
    }
    s.refreeze_dirty_groups();
    let mut n = 3;
    while n < 700 {
        let before = s.ids[&hash].group.clone().unwrap();
        // One child at a time, and now and then two in one patch.
        let added = 1 + n % 2;
        for _ in 0..added {
            s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), agent));
            // Every third child parents an entry of its own: marked as it is appended,
            // and its mark carried along as the tail chunks merge.
            if n % 3 == 0 {
                let under = format!("spiffe://example.org/w/{n}");
                s.put_entry(entry(&format!("x-{n}"), "spiffe://example.org/x", &under));
            }
            n += 1;
        }
        s.refreeze_dirty_groups();
        if n % 50 < 2 {
            check_groups(&s);
        }
        let after = s.ids[&hash].group.clone().unwrap();
        assert!(after.chunks().all(|c| c.children.len() <= CHUNK), "at {n}");
        if before.len >= 16 {
            // Patched: `after` starts with chunks of `before`, shared, and those include
            // every full chunk of `before`; the chunks after them hold the small tail
            // merged with the new children: one chunk, or a full one and a remainder.
            let old: Vec<&Chunk> = before.chunks().collect();
            let new: Vec<&Chunk> = after.chunks().collect();
            let kept = old
                .iter()
                .zip(&new)
                .take_while(|(a, b)| Arc::ptr_eq(&a.children, &b.children))
                .count();
            assert!(old[kept..].iter().all(|c| c.len() < CHUNK), "at {n}: a full chunk copied");
            assert!(
                (1..=2).contains(&(new.len() - kept)),
                "at {n}: {} new chunks",
                new.len() - kept
            );
            assert_eq!(
                new[kept..].iter().map(|c| c.len()).sum::<usize>(),
                old[kept..].iter().map(|c| c.len()).sum::<usize>() + added as usize,
                "at {n}: the new chunks are the merged tail and the new children"
            );
            assert!(new.len() <= after.len / CHUNK + TAIL_CHUNKS, "at {n}: {} chunks", new.len());
        }
    }
    check_groups(&s);
    let g = s.ids[&hash].group.clone().unwrap();
    assert!(g.chunks().count() >= g.len / CHUNK, "{} chunks for {}", g.chunks().count(), g.len);
}

/// Appending 1,000 children one at a time, refreezing after each: a full chunk, once
/// made, is never copied again, the tail holds about log2([`CHUNK`]) small chunks, and
/// each child is copied about log2([`CHUNK`]) times in all, not about [`CHUNK`] / 2 as
/// when the last chunk was copied whole on every append.
#[test]
fn appended_children_are_copied_about_log2_chunk_times() {
    let mut s = State::new(TrustDomain::new("example.org").unwrap());
    let agent = "spiffe://example.org/spire/agent/a";
    let hash = key_hash(agent);
    let id_of = |n: u64| format!("0193a5f2-{n:06}");
    let total = 1000;
    let mut full: Vec<Arc<[Child]>> = Vec::new();
    let mut copied = 0;
    let mut before: Option<Arc<ChildGroup>> = None;
    for n in 0..total {
        s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), agent));
        s.refreeze_dirty_groups();
        let g = s.ids[&hash].group.clone().unwrap();
        // Children in chunks this group does not share with the one before, but the
        // new child: copies.
        let made: usize = g
            .chunks()
            .filter(|c| {
                before
                    .as_ref()
                    .is_none_or(|b| b.chunks().all(|d| !Arc::ptr_eq(&c.children, &d.children)))
            })
            .map(Chunk::len)
            .sum();
        copied += made - 1;
        for c in g.chunks().filter(|c| c.len() == CHUNK) {
            if !full.iter().any(|f| Arc::ptr_eq(f, &c.children)) {
                full.push(Arc::clone(&c.children));
            }
        }
        before = Some(g);
    }
    check_groups(&s);
    let g = s.ids[&hash].group.clone().unwrap();
    let len = usize::try_from(total).unwrap();
    assert_eq!(g.len, len);
    assert_eq!(full.len(), len / CHUNK);
    for f in &full {
        assert!(g.chunks().any(|c| Arc::ptr_eq(f, &c.children)), "a full chunk was copied");
    }
    let log2 = CHUNK.ilog2() as usize;
    let count = g.chunks().count();
    assert!(count <= len / CHUNK + log2 + 2, "{count} chunks for {len}");
    // Copying the last chunk on every append made about len * CHUNK / 2 copies.
    assert!(copied <= len * (log2 + 1), "{copied} copies for {len} children");
}

/// More than [`CHUNK`] children appended in one patch of a large group: they go in
/// full chunks of their own (and a small one merged with the tail), earlier full chunks
/// stay shared, and the group is what the entries say.
#[test]
fn many_children_appended_in_one_patch() {
    let mut s = State::new(TrustDomain::new("example.org").unwrap());
    let agent = "spiffe://example.org/spire/agent/a";
    let hash = key_hash(agent);
    let id_of = |n: u64| format!("0193a5f2-{n:06}");
    let put = |s: &mut State, n: u64| {
        s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), agent));
    };
    for n in 0..1200 {
        put(&mut s, n);
    }
    s.refreeze_dirty_groups();
    let mut next = 1200;
    for round in 0..6 {
        let before = s.ids[&hash].group.clone().unwrap();
        // Between 1 and 146 children, and one from the middle removed.
        for _ in 0..1 + round * 29 {
            put(&mut s, next);
            next += 1;
        }
        s.remove_entry(&EntryId::new(&id_of(round * 100 + 7)).unwrap());
        s.refreeze_dirty_groups();
        check_groups(&s);
        let after = s.ids[&hash].group.clone().unwrap();
        assert!(after.chunks().all(|c| c.len() <= CHUNK), "round {round}");
        let opened = before
            .chunks()
            .filter(|c| after.chunks().all(|d| !Arc::ptr_eq(&c.children, &d.children)));
        // The chunk of the removed child, and the small chunks at the tail.
        assert!(opened.filter(|c| c.len() == CHUNK).count() <= 1, "round {round}");
    }
}

/// Children appended in batches (a create of many entries under one parent per apply,
/// ids in time order): the small chunks appends leave stay at the tail, at most
/// [`TAIL_CHUNKS`] of them, as they do for single appends; none is stranded between
/// full chunks.
#[test]
fn children_appended_in_batches_leave_few_small_chunks() {
    let mut failed = Vec::new();
    for batch in [33u64, 40, 65, 100] {
        let mut s = State::new(TrustDomain::new("example.org").unwrap());
        let agent = "spiffe://example.org/spire/agent/a";
        let hash = key_hash(agent);
        let id_of = |n: u64| format!("0193a5f2-{n:06}");
        let mut n = 0;
        // A first child, then batches: every refreeze patches the group.
        s.put_entry(entry(&id_of(n), "spiffe://example.org/w/0", agent));
        n += 1;
        s.refreeze_dirty_groups();
        for _ in 0..30 {
            for _ in 0..batch {
                s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), agent));
                n += 1;
            }
            s.refreeze_dirty_groups();
        }
        check_groups(&s);
        let g = s.ids[&hash].group.clone().unwrap();
        let sizes: Vec<usize> = g.chunks().map(Chunk::len).collect();
        let small = sizes.iter().filter(|&&l| l < CHUNK).count();
        if sizes.len() > g.len / CHUNK + TAIL_CHUNKS || small > TAIL_CHUNKS {
            failed.push(format!(
                "batches of {batch}: {} chunks ({small} small) for {} children: {sizes:?}",
                sizes.len(),
                g.len
            ));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// In one patch, children appended to the last chunk without opening it, then changes
/// that open it (one of them re-touches an appended child, one removes an older child):
/// the group is still exactly what the entries say.
#[test]
fn appended_children_then_changes_in_the_same_chunk() {
    let mut s = State::new(TrustDomain::new("example.org").unwrap());
    let agent = "spiffe://example.org/spire/agent/a";
    let hash = key_hash(agent);
    let id_of = |n: u64| format!("0193a5f2-{n:06}");
    let put = |s: &mut State, n: u64, under: &str| {
        s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), under));
    };
    for n in 0..40 {
        put(&mut s, n, agent);
    }
    s.refreeze_dirty_groups();
    for round in 0..30u64 {
        let first = 40 + round * 3;
        // Appended without opening the last chunk...
        put(&mut s, first, agent);
        put(&mut s, first + 1, agent);
        // ...then an appended child touched again opens it, an older child goes away,
        // one more is appended to the opened chunk, and a child of the previous round
        // moves under another workload.
        put(&mut s, first + 1, agent);
        s.remove_entry(&EntryId::new(&id_of(first - 2)).unwrap());
        put(&mut s, first + 2, agent);
        put(&mut s, first - 1, "spiffe://example.org/w/0");
        s.refreeze_dirty_groups();
        check_groups(&s);
        let g = s.ids[&hash].group.clone().unwrap();
        let ids: Vec<String> = g.children().map(|c| c.entry.id.as_str().to_owned()).collect();
        assert!(ids.contains(&id_of(first)) && ids.contains(&id_of(first + 2)), "{round}");
        assert!(!ids.contains(&id_of(first - 1)) && !ids.contains(&id_of(first - 2)));
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A new id after every other (time order), under `parent_of(under)`.
    Append {
        under: u8,
    },
    /// The id `back` places before the newest put again under `parent_of(under)`.
    Put {
        back: u16,
        under: u8,
    },
    Remove {
        back: u16,
    },
    /// An id between two older ones.
    Middle {
        at: u16,
        under: u8,
    },
    Refreeze,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (0u8..8).prop_map(|under| Op::Append { under }),
        2 => (0u16..300, 0u8..8).prop_map(|(back, under)| Op::Put { back, under }),
        2 => (0u16..300).prop_map(|back| Op::Remove { back }),
        1 => (0u16..2000, 0u8..8).prop_map(|(at, under)| Op::Middle { at, under }),
        3 => Just(Op::Refreeze),
    ]
}

/// Two agents, or a workload (so the workload's descent mark changes).
fn parent_of(under: u8, newest: u64) -> String {
    match under {
        0..=3 => "spiffe://example.org/spire/agent/a".into(),
        4 => "spiffe://example.org/spire/agent/b".into(),
        u => format!("spiffe://example.org/w/{}", newest.saturating_sub(u64::from(u) * 3)),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    /// Mostly appends in id order, mixed with moves, removals, ids between old ones and
    /// refreezes at random points: every patched group is consistent and lists its
    /// children exactly as a group built whole from the parent index does.
    #[allow(clippy::arithmetic_side_effects)] // small numbers in a test
    #[test]
    fn patched_groups_with_appends_equal_groups_built_whole(
        start in 0u64..200,
        ops in proptest::collection::vec(op(), 1..400),
    ) {
        let mut s = State::new(TrustDomain::new("example.org").unwrap());
        // Time-ordered ids sharing their first 8 bytes, and ids that fall between them.
        let id_of = |n: u64| format!("0193a5f2-{n:06}0");
        let mid_of = |n: u64| format!("0193a5f2-{n:06}5");
        let put = |s: &mut State, id: &str, n: u64, under: &str| {
            s.put_entry(entry(id, &format!("spiffe://example.org/w/{n}"), under));
        };
        let mut next = 0u64;
        for _ in 0..start {
            put(&mut s, &id_of(next), next, "spiffe://example.org/spire/agent/a");
            next += 1;
        }
        s.refreeze_dirty_groups();
        check_groups(&s);
        for op in ops {
            match op {
                Op::Append { under } => {
                    put(&mut s, &id_of(next), next, &parent_of(under, next));
                    next += 1;
                }
                Op::Put { back, under } => {
                    let n = next.saturating_sub(1 + u64::from(back));
                    put(&mut s, &id_of(n), n, &parent_of(under, next));
                    next = next.max(n + 1);
                }
                Op::Remove { back } => {
                    let n = next.saturating_sub(1 + u64::from(back));
                    s.remove_entry(&EntryId::new(&id_of(n)).unwrap());
                }
                Op::Middle { at, under } => {
                    let n = u64::from(at) % next.max(1);
                    put(&mut s, &mid_of(n), n + 100_000, &parent_of(under, next));
                }
                Op::Refreeze => {
                    s.refreeze_dirty_groups();
                    check_groups(&s);
                }
            }
        }
        s.refreeze_dirty_groups();
        check_groups(&s);
        for (hash, r) in &s.ids {
            let Some(g) = &r.group else { continue };
            let whole = s.build_group(*hash).unwrap();
            let patched: Vec<&str> = g.children().map(|c| c.entry.id.as_str()).collect();
            let built: Vec<&str> = whole.children().map(|c| c.entry.id.as_str()).collect();
            proptest::prop_assert_eq!(patched, built);
        }
    }
}
