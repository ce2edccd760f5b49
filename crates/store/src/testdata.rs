//! The standard data set for tests, benches and load tests.
//!
//! With scale `n`: `n` agents with 10 workload entries each, and `n / 100` node-alias
//! entries, alias `g` matching agents `100g .. 100g + 99` by the node selector
//! `test:group:g<g>` and parenting 5 entries. Every agent is therefore authorized for 15
//! entries. [`DataSet::SMALL`] (`1k`, `n = 100`) and [`DataSet::LARGE`] (`1m`,
//! `n = 100,000`, 1,006,000 entries) are the sizes the benches use. Everything is
//! deterministic: the same scale always gives the same ids.
#![expect(clippy::arithmetic_side_effects, reason = "fixed-size test data, not on the apply path")]

use ward_core::{
    AgentId, EntryId, RegistrationEntry, Selector, SelectorSet, SpiffeId, TrustDomain,
};

use crate::command::{AgentAttestation, Command};
use crate::error::StoreError;
use crate::log_entry::LogEntry;
use std::path::Path;

use crate::store::{Store, StoreConfig};

/// The trust domain of the data set.
pub const TRUST_DOMAIN: &str = "example.org";

/// Creation time stamped on every entry (Unix seconds).
pub const CREATED_AT: i64 = 1_700_000_000;

/// Workload entries per agent.
pub const ENTRIES_PER_AGENT: usize = 10;
/// Agents per node alias.
pub const AGENTS_PER_ALIAS: usize = 100;
/// Entries parented by each node alias.
pub const ENTRIES_PER_ALIAS: usize = 5;

/// A data set of a given scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataSet {
    /// Number of agents.
    pub n: usize,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn selector(t: &str, v: String) -> Selector {
    Selector { selector_type: t.to_owned(), value: v }
}

#[allow(clippy::expect_used)] // every path built in this module is valid
fn id(path: &str) -> SpiffeId {
    SpiffeId::from_parts(&DataSet::trust_domain(), path).expect("generated paths are valid")
}

impl DataSet {
    /// The `1k` set: 100 agents, 1,006 entries.
    pub const SMALL: Self = Self { n: 100 };
    /// The `1m` set: 100,000 agents, 1,006,000 entries.
    pub const LARGE: Self = Self { n: 100_000 };

    /// The trust domain (`example.org`).
    #[allow(clippy::expect_used)] // a valid constant
    pub fn trust_domain() -> TrustDomain {
        TrustDomain::new(TRUST_DOMAIN).expect("example.org is a valid trust domain")
    }

    /// Number of node aliases.
    pub fn alias_count(&self) -> usize {
        self.n / AGENTS_PER_ALIAS
    }

    /// Number of entries (workload, alias and alias-parented).
    pub fn entry_count(&self) -> usize {
        self.n * ENTRIES_PER_AGENT + self.alias_count() * (1 + ENTRIES_PER_ALIAS)
    }

    /// A UUID-shaped entry id, unique per `(kind, a, b)`.
    #[allow(clippy::expect_used)] // the format only produces allowed characters
    pub fn entry_id(kind: u64, a: u64, b: u64) -> EntryId {
        let x = mix(kind << 56 ^ a << 8 ^ b);
        let y = mix(x ^ 0x5bd1_e995);
        let s = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            x >> 32,
            (x >> 16) & 0xffff,
            x & 0xfff,
            y >> 52,
            y & 0xffff_ffff_ffff
        );
        EntryId::new(&s).expect("hex and dashes make a valid entry id")
    }

    /// Agent `i`'s id.
    pub fn agent_id(i: usize) -> AgentId {
        AgentId(id(&format!("/spire/agent/test/host-{i}")))
    }

    /// Agent `i`'s attestation: node selectors `test:group:g<i/100>` and `test:host:<i>`.
    pub fn agent(i: usize) -> AgentAttestation {
        AgentAttestation {
            id: Self::agent_id(i),
            attestation_type: "test".into(),
            serial: format!("{}", 1000 + i),
            expires_at: CREATED_AT + 3600,
            selectors: SelectorSet::new(vec![
                selector("test", format!("group:g{}", i / AGENTS_PER_ALIAS)),
                selector("test", format!("host:{i}")),
            ]),
            can_reattest: true,
        }
    }

    fn entry(
        id: EntryId,
        spiffe_id: SpiffeId,
        parent_id: SpiffeId,
        sel: Selector,
    ) -> RegistrationEntry {
        RegistrationEntry {
            created_at: CREATED_AT,
            ..RegistrationEntry::new(id, spiffe_id, parent_id, SelectorSet::new(vec![sel]))
        }
    }

    /// Workload entry `k` of agent `i`.
    pub fn workload_entry(i: usize, k: usize) -> RegistrationEntry {
        Self::entry(
            Self::entry_id(1, i as u64, k as u64),
            id(&format!("/host-{i}/w{k}")),
            Self::agent_id(i).0,
            selector("unix", format!("uid:{}", 1000 + k)),
        )
    }

    /// Node alias `g`.
    pub fn alias_entry(g: usize) -> RegistrationEntry {
        Self::entry(
            Self::entry_id(2, g as u64, 0),
            id(&format!("/alias/g{g}")),
            id("/spire/server"),
            selector("test", format!("group:g{g}")),
        )
    }

    /// Entry `k` parented by node alias `g`.
    pub fn alias_child_entry(g: usize, k: usize) -> RegistrationEntry {
        Self::entry(
            Self::entry_id(3, g as u64, k as u64),
            id(&format!("/alias/g{g}/w{k}")),
            id(&format!("/alias/g{g}")),
            selector("k8s", format!("sa:svc-{k}")),
        )
    }

    /// Entry `j` of the set in load order: aliases each followed by their children, then
    /// every agent's workload entries.
    pub fn nth_entry(&self, j: usize) -> RegistrationEntry {
        let per_alias = 1 + ENTRIES_PER_ALIAS;
        let alias_part = self.alias_count() * per_alias;
        if j < alias_part {
            let (g, k) = (j / per_alias, j % per_alias);
            if k == 0 { Self::alias_entry(g) } else { Self::alias_child_entry(g, k - 1) }
        } else {
            let w = j - alias_part;
            Self::workload_entry(w / ENTRIES_PER_AGENT, w % ENTRIES_PER_AGENT)
        }
    }

    /// Every command that builds the set, generated lazily: one AttestAgent per agent, then
    /// entries in CreateEntries batches of `batch`.
    pub fn commands(&self, batch: usize) -> impl Iterator<Item = Command> + '_ {
        let batch = batch.max(1);
        let total = self.entry_count();
        let agents = (0..self.n).map(|i| Command::AttestAgent(Self::agent(i)));
        let batches = (0..total).step_by(batch).map(move |start| {
            Command::CreateEntries(
                (start..(start + batch).min(total)).map(|j| self.nth_entry(j)).collect(),
            )
        });
        agents.chain(batches)
    }

    /// Loads the set into `store`, one [`Store::apply`] per command at the next log index,
    /// and flushes.
    ///
    /// # Errors
    /// The first [`StoreError`] from applying.
    pub fn load(&self, store: &Store) -> Result<(), StoreError> {
        for cmd in self.commands(1000) {
            store.apply(store.last_applied().saturating_add(1), &cmd)?;
        }
        store.flush()
    }

    /// Opens the set stored in `dir`, building it first if `dir` does not hold a complete
    /// copy (a `complete` marker file is written after the build is flushed). Builds are
    /// slow at the large scale, so benches keep `dir` between runs.
    ///
    /// # Errors
    /// [`StoreError`] from opening or loading; [`StoreError::Engine`] for file errors.
    pub fn open_or_build(&self, dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        let marker = dir.join(format!("complete-{}", self.n));
        if marker.exists() {
            return Store::open(dir, config);
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| StoreError::Engine(e.to_string()))?;
        }
        let store = Store::open(dir, config)?;
        self.load(&store)?;
        std::fs::write(&marker, b"").map_err(|e| StoreError::Engine(e.to_string()))?;
        Ok(store)
    }

    /// `count` encoded log entries ([`LogEntry::encode`], without request ids) to replay
    /// after a restart: each pair creates one entry under agent `k` and deletes it again,
    /// so replaying them leaves the set's contents as they were (only the applied index
    /// and revision move). Entry ids are the same on every call.
    pub fn replay_log(&self, count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|j| {
                let pair = j / 2;
                let agent = pair % self.n.max(1);
                let entry_id = Self::entry_id(4, pair as u64, 0);
                let cmd = if j % 2 == 0 {
                    let mut e = Self::workload_entry(agent, 0);
                    e.id = entry_id;
                    e.spiffe_id = id(&format!("/replay/{pair}"));
                    Command::CreateEntries(vec![e])
                } else {
                    Command::DeleteEntries(vec![entry_id])
                };
                LogEntry::new(0, cmd).encode()
            })
            .collect()
    }

    /// `count` distinct agents picked pseudo-randomly (fixed seed), in shuffled order.
    pub fn sample_agents(&self, count: usize, seed: u64) -> Vec<AgentId> {
        let mut idx: Vec<usize> = (0..self.n).collect();
        let mut s = seed;
        for i in (1..idx.len()).rev() {
            s = mix(s);
            let j = (s % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
        idx.truncate(count.min(self.n));
        idx.into_iter().map(Self::agent_id).collect()
    }
}

/// The process's user + system CPU time, from `/proc/self/stat`, in clock ticks of 10 ms;
/// zero where that file cannot be read. For the store's timing examples.
pub fn process_cpu_time() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 =
        rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum();
    std::time::Duration::from_millis(ticks.saturating_mul(10))
}
