#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Crash safety: a child process applies a long command stream and is SIGKILLed at random
//! points; after each kill the store must reopen at some applied index at or past the last
//! one the child made durable with an explicit flush, holding exactly the state a model
//! reaches after that many commands.
//!
//! The child is this test binary re-run with `WARD_STORE_CRASH_CHILD=<dir>`: the same test
//! function then runs the child loop instead of the parent.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{ChangeSets, Model, assert_same_state};
use ward_core::{
    AgentId, EntryId, EntryPatch, RegistrationEntry, Selector, SelectorSet, SpiffeId, TrustDomain,
};
use ward_store::{AgentAttestation, Command, EntryUpdate, Store, StoreConfig};

const CHILD_ENV: &str = "WARD_STORE_CRASH_CHILD";
const KILLS: usize = 24;
/// The child flushes after every command whose index is a multiple of this.
const FLUSH_EVERY: u64 = 5;

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn agent(i: u64) -> AgentId {
    AgentId(td().spiffe_id(&format!("/spire/agent/c/{}", i % 6)).unwrap())
}

fn parent(r: u64) -> SpiffeId {
    match r % 10 {
        0..=5 => agent(r).0,
        6 => td().spiffe_id("/spire/server").unwrap(),
        n => td().spiffe_id(&format!("/w{}", n)).unwrap(),
    }
}

fn entry(r: u64) -> RegistrationEntry {
    let sel = ["u:1", "u:2", "n:g1", "n:g2"][(r >> 8) as usize % 4];
    RegistrationEntry {
        downstream: r & 1 == 1,
        hint: format!("h{}", (r >> 40) % 3),
        created_at: 1000,
        ..RegistrationEntry::new(
            EntryId::new(&format!("e{}", (r >> 12) % 60)).unwrap(),
            td().spiffe_id(&format!("/w{}", (r >> 20) % 10)).unwrap(),
            parent(r >> 28),
            SelectorSet::new(vec![Selector::parse(sel).unwrap()]),
        )
    }
}

/// Command `i` of the stream: a deterministic function of `i`.
fn command(i: u64) -> Command {
    let r = mix(i);
    match r % 10 {
        0..=3 => Command::CreateEntries((0..4).map(|k| entry(mix(r ^ k))).collect()),
        4 | 5 => {
            let e = entry(mix(r ^ 99));
            let patch = EntryPatch { parent_id: None, ..EntryPatch::all_of(&e) };
            Command::UpdateEntries(vec![EntryUpdate { id: e.id, patch }])
        }
        6 => Command::DeleteEntries(vec![entry(mix(r ^ 7)).id]),
        7 | 8 => Command::AttestAgent(AgentAttestation {
            id: agent(r >> 16),
            attestation_type: "c".into(),
            serial: format!("{}", i),
            expires_at: 100,
            selectors: SelectorSet::new(
                ["n:g1", "n:g2"]
                    .iter()
                    .take(1 + (r >> 24) as usize % 2)
                    .map(|s| Selector::parse(s).unwrap())
                    .collect(),
            ),
            can_reattest: true,
        }),
        _ => Command::DeleteAgent(agent(r >> 16)),
    }
}

fn config() -> StoreConfig {
    StoreConfig::new(td())
}

/// Child mode: continue the stream from the recovered index until killed.
fn child(dir: &str) {
    let store = Store::open(dir, config()).unwrap();
    let start = store.last_applied() + 1;
    for i in start..start + 1_000_000 {
        store.apply(i, &command(i)).unwrap();
        if i % FLUSH_EVERY == 0 {
            store.flush().unwrap();
            println!("durable {i}");
        }
    }
}

/// Child mode with the entry image: continue the stream, closing the store (flush and
/// image) every [`FLUSH_EVERY`] commands and reopening it every third close, until killed.
/// Prints `image` for each open that read the image.
fn image_child(dir: &str) {
    let open = || {
        let store = Store::open(dir, config()).unwrap();
        if store.opened_from_image() {
            println!("image");
        }
        store
    };
    let mut store = open();
    let start = store.last_applied() + 1;
    for i in start..start + 1_000_000 {
        store.apply(i, &command(i)).unwrap();
        if i % FLUSH_EVERY == 0 {
            store.close().unwrap();
            println!("durable {i}");
            if i % (3 * FLUSH_EVERY) == 0 {
                drop(store);
                store = open();
            }
        }
    }
}

/// Child mode with checkpoints: continue the stream, writing the entry image every
/// [`CHECKPOINT_EVERY_TEST`] commands without closing, until killed. Prints `image` if its
/// open read the image, and `durable <i>` after each checkpoint (which flushes).
fn checkpoint_child(dir: &str) {
    let store = Store::open(dir, config()).unwrap();
    if store.opened_from_image() {
        println!("image");
    }
    let start = store.last_applied() + 1;
    for i in start..start + 1_000_000 {
        store.apply(i, &command(i)).unwrap();
        if i % CHECKPOINT_EVERY_TEST == 0 {
            store.checkpoint().unwrap();
            println!("durable {i}");
        }
    }
}

/// How often [`checkpoint_child`] writes the image, in commands.
const CHECKPOINT_EVERY_TEST: u64 = 23;

#[test]
fn sigkill_during_apply_recovers_exact_prefix() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    kill_and_recover("sigkill_during_apply_recovers_exact_prefix");
}

#[test]
fn sigkill_while_closing_and_reopening_with_the_entry_image_recovers_exact_prefix() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        image_child(&dir);
        return;
    }
    let (child_images, parent_images) = kill_and_recover(
        "sigkill_while_closing_and_reopening_with_the_entry_image_recovers_exact_prefix",
    );
    assert!(child_images > 0, "no reopen read the image");
    eprintln!("opens from the image: {child_images} in the child, {parent_images} after kills");
}

#[test]
fn sigkill_between_checkpoints_recovers_exact_prefix_from_the_image_and_the_feed() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        checkpoint_child(&dir);
        return;
    }
    let (child_images, parent_images) = kill_and_recover(
        "sigkill_between_checkpoints_recovers_exact_prefix_from_the_image_and_the_feed",
    );
    // Every open after the first checkpoint reads the image and catches up from the feed.
    assert!(parent_images + 2 >= KILLS, "only {parent_images} of {KILLS} opens read the image");
    eprintln!("opens from the image: {child_images} in the child, {parent_images} after kills");
}

/// Runs test `name` as a child [`KILLS`] times, SIGKILLing it at random points; after each
/// kill the store must reopen at or past the last durable index with exactly the model's
/// state. Returns how many opens read the entry image: the child's and the parent's.
fn kill_and_recover(name: &str) -> (usize, usize) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let agents: Vec<AgentId> = (0..6).map(agent).collect();
    let mut model = Model::new(td());
    let mut model_index = 0u64;
    let mut last_durable = 0u64;
    let mut rng = 12345u64;
    let mut recovered = Vec::new();
    let mut feed: Vec<(u64, ChangeSets)> = Vec::new();
    let (mut child_images, mut parent_images) = (0, 0);
    for round in 0..KILLS {
        let mut proc = Process::new(&exe)
            .args([name, "--exact", "--nocapture"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = proc.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut images = 0usize;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("durable ") {
                    let _ = tx.send(n.parse::<u64>().unwrap());
                } else if line == "image" {
                    images += 1;
                }
            }
            images
        });
        // Wait until the child is applying, then let it run a random while.
        let first = rx.recv_timeout(Duration::from_secs(20)).expect("child made progress");
        last_durable = last_durable.max(first);
        rng = mix(rng);
        std::thread::sleep(Duration::from_millis(5 + rng % 120));
        proc.kill().unwrap(); // SIGKILL
        proc.wait().unwrap();
        child_images += reader.join().unwrap();
        for n in rx.try_iter() {
            last_durable = last_durable.max(n);
        }

        let store = Store::open(dir.path(), config()).unwrap();
        parent_images += usize::from(store.opened_from_image());
        let applied = store.last_applied();
        assert!(
            applied >= last_durable,
            "round {round}: recovered index {applied} is before durable index {last_durable}"
        );
        assert!(applied >= model_index, "round {round}: recovery went backwards");
        while model_index < applied {
            model_index += 1;
            let revision = model.revision;
            model.apply(&command(model_index));
            if model.revision != revision {
                feed.push((model.revision, model.last_change.clone()));
            }
        }
        assert_same_state(&store, &model, &agents);
        // The change feed holds one record per revision, none lost or repeated, whichever
        // write of a run (one per apply) the kill came after.
        let got: Vec<(u64, ChangeSets)> = store
            .changes_since(0, usize::MAX)
            .unwrap()
            .iter()
            .map(|c| (c.revision, ChangeSets::of(c)))
            .collect();
        assert_eq!(got, feed, "round {round}: change feed");
        recovered.push(applied);
        drop(store);
    }
    assert_eq!(recovered.len(), KILLS);
    assert!(recovered.last().copied().unwrap_or(0) > 0);
    eprintln!("recovered indices: {recovered:?} in {:.1?}", started.elapsed());
    (child_images, parent_images)
}

/// sled writes a snapshot of its page table to `snap.<lsn>.generating` before renaming it;
/// a process killed half-way through leaves a torn file that sled alone refuses to open
/// past. The store opens anyway, at the same state, and the torn file is gone.
#[test]
fn a_sled_snapshot_torn_by_a_kill_does_not_stop_the_store_opening() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new(td());
    {
        let store = Store::open(dir.path(), config()).unwrap();
        for i in 1..=40 {
            store.apply(i, &command(i)).unwrap();
            model.apply(&command(i));
        }
        store.flush().unwrap();
    }
    let torn = dir.path().join("snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&torn, vec![0x5a; 100]).unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    assert_eq!(store.last_applied(), 40);
    assert_same_state(&store, &model, &(0..6).map(agent).collect::<Vec<_>>());
    assert!(!torn.exists(), "the torn snapshot file is removed");
}
