//! The `[cluster]` table: this replica's place in a Raft cluster of servers.
//!
//! Without the table a server is a one-member cluster that bootstraps itself and listens for
//! no peers. With it, the replica listens for peers on `peer_address`, tells the others to
//! reach it at `advertise_address`, and either starts a new cluster (`bootstrap = true`) or
//! joins one at `join_address` with the one-time credential in `join_credential_file` (see
//! `docs/cluster.md`).
//!
//! In a Kubernetes StatefulSet `node_id = "ordinal"` derives everything from the pod: the
//! node id is the ordinal in `$HOSTNAME` (`ward-2`) plus one, ordinal 0 bootstraps, and the
//! others join ordinal 0 through the headless service named in `peer_service`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, opt_duration};

/// The peer port a replica listens on when `peer_address` is not set.
pub const DEFAULT_PEER_PORT: u16 = 8082;

/// A node id as written: a number, or `"ordinal"` (from the StatefulSet pod name).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum NodeIdSetting {
    /// An explicit node id (1 and up).
    Number(u64),
    /// `"ordinal"`: the pod ordinal in `$HOSTNAME` plus one.
    Word(String),
}

/// The `[cluster]` table as written; every key optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// This replica's node id, or `"ordinal"`.
    pub node_id: Option<NodeIdSetting>,
    /// `host:port` the peer listener binds.
    pub peer_address: Option<SocketAddr>,
    /// `host:port` the other replicas use to reach this one.
    pub advertise_address: Option<String>,
    /// Start a new one-member cluster when the data directory holds no cluster yet.
    pub bootstrap: Option<bool>,
    /// `host:port` of a member's peer listener to join through.
    pub join_address: Option<String>,
    /// File holding the join credential `ward-server cluster add` printed.
    pub join_credential_file: Option<PathBuf>,
    /// Ticks without a leader before a follower campaigns.
    pub election_tick: Option<usize>,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_tick: Option<usize>,
    /// Time between ticks (a duration: `"100ms"`).
    pub tick_interval: Option<String>,
    /// Bytes of log entries after which the log is compacted behind a snapshot.
    pub snapshot_threshold: Option<u64>,
    /// The StatefulSet's headless service (`ward-peers.ns.svc.cluster.local`), used with
    /// `node_id = "ordinal"`.
    pub peer_service: Option<String>,
    /// Longest an operator's read waits for the leader to confirm this replica is up to date
    /// (a duration: `"3s"`).
    pub read_timeout: Option<String>,
    /// Least time between the starts of two syncs of the raft log while writes keep
    /// arriving (a duration: `"3ms"`; `"0s"`, the default, syncs as soon as the sync before
    /// ends).
    pub sync_gap: Option<String>,
}

/// Command-line values that override the `[cluster]` table: the same keys, as flags.
pub type ClusterOverrides = ClusterFile;

impl ClusterFile {
    /// Each key of `self` that is set, else `under`'s.
    pub fn over(self, under: Self) -> Self {
        Self {
            node_id: self.node_id.or(under.node_id),
            peer_address: self.peer_address.or(under.peer_address),
            advertise_address: self.advertise_address.or(under.advertise_address),
            bootstrap: self.bootstrap.or(under.bootstrap),
            join_address: self.join_address.or(under.join_address),
            join_credential_file: self.join_credential_file.or(under.join_credential_file),
            election_tick: self.election_tick.or(under.election_tick),
            heartbeat_tick: self.heartbeat_tick.or(under.heartbeat_tick),
            tick_interval: self.tick_interval.or(under.tick_interval),
            snapshot_threshold: self.snapshot_threshold.or(under.snapshot_threshold),
            peer_service: self.peer_service.or(under.peer_service),
            read_timeout: self.read_timeout.or(under.read_timeout),
            sync_gap: self.sync_gap.or(under.sync_gap),
        }
    }
}

/// How this replica enters its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterStart {
    /// Start a new cluster with this replica as its only voter (when the data directory
    /// holds none yet).
    Bootstrap,
    /// Join an existing cluster through `address` with the credential read from `credential`.
    Join {
        /// A member's peer address.
        address: String,
        /// The credential file.
        credential: PathBuf,
    },
    /// Neither: the data directory already holds this replica's cluster, or another member
    /// adds it.
    Resume,
}

/// The resolved `[cluster]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This replica's node id (1 and up).
    pub node_id: u64,
    /// What the peer listener binds.
    pub peer_address: SocketAddr,
    /// What the other replicas dial.
    pub advertise_address: String,
    /// How the replica enters its cluster.
    pub start: ClusterStart,
    /// Ticks without a leader before a follower campaigns (default 10).
    pub election_tick: usize,
    /// Ticks between heartbeats (default 2).
    pub heartbeat_tick: usize,
    /// Time between ticks (default 100 ms).
    pub tick_interval: Duration,
    /// Log bytes before compaction (default 64 MiB).
    pub snapshot_threshold: u64,
    /// Longest an operator's read waits for a read index (default
    /// [`ward_cluster::DEFAULT_READ_TIMEOUT`]).
    pub read_timeout: Duration,
    /// Least time between two syncs of the raft log while writes keep arriving (default
    /// [`ward_cluster::DEFAULT_SYNC_GAP`]; zero: no wait).
    pub sync_gap: Duration,
}

/// The parts of a StatefulSet pod name: `<set>-<ordinal>`.
fn pod_ordinal(hostname: &str) -> Option<(&str, u64)> {
    let (set, ordinal) = hostname.rsplit_once('-')?;
    if set.is_empty() || ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((set, ordinal.parse().ok()?))
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

impl ClusterFile {
    /// Merges `o` over the file and resolves it; `env` reads `$HOSTNAME` for
    /// `node_id = "ordinal"`. `None` when neither the table nor any flag is present: the
    /// server then runs as a one-member cluster without a peer listener.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key: a node id of 0 or an unknown word, an ordinal
    /// with no pod name to read it from, no way to start (ordinal 0 aside, a replica that
    /// neither bootstraps nor joins nor resumes is fine; a join without a credential file is
    /// not), both `bootstrap` and `join_address`, ticks out of range.
    pub fn resolve(
        file: Option<Self>,
        o: &ClusterOverrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        if file.is_none() && *o == ClusterFile::default() {
            return Ok(None);
        }
        let f = o.clone().over(file.unwrap_or_default());
        let node_setting = f.node_id.clone();
        let peer_service = f.peer_service.clone();
        let peer_address =
            f.peer_address.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_PEER_PORT)));
        // With an ordinal: the pod's own name gives the node id, the StatefulSet's name and
        // the headless service give every replica's address.
        let mut ordinal_join = None;
        let mut advertise_default = None;
        let node_id = match node_setting {
            None => 1,
            Some(NodeIdSetting::Number(0)) => {
                return Err(invalid("cluster.node_id", ward_cluster::NODE_ID_ZERO));
            }
            Some(NodeIdSetting::Number(n)) => n,
            Some(NodeIdSetting::Word(w)) if w == "ordinal" => {
                let host = env("HOSTNAME").unwrap_or_default();
                let Some((set, ordinal)) = pod_ordinal(&host) else {
                    return Err(invalid(
                        "cluster.node_id",
                        format!(
                            "\"ordinal\" needs $HOSTNAME to be a StatefulSet pod name \
                             (<name>-<ordinal>), got {host:?}"
                        ),
                    ));
                };
                let Some(service) = &peer_service else {
                    return Err(invalid(
                        "cluster.peer_service",
                        "node_id = \"ordinal\" needs the StatefulSet's headless service name",
                    ));
                };
                let port = peer_address.port();
                advertise_default = Some(format!("{host}.{service}:{port}"));
                if ordinal > 0 {
                    ordinal_join = Some(format!("{set}-0.{service}:{port}"));
                }
                ordinal
                    .checked_add(1)
                    .ok_or_else(|| invalid("cluster.node_id", "pod ordinal too large"))?
            }
            Some(NodeIdSetting::Word(w)) => {
                return Err(invalid(
                    "cluster.node_id",
                    format!("expected a number from 1 up or \"ordinal\", got {w:?}"),
                ));
            }
        };
        let advertise_address = match f.advertise_address.clone() {
            Some(a) => a,
            None => match advertise_default {
                Some(a) => a,
                None if peer_address.ip().is_unspecified() => {
                    return Err(invalid(
                        "cluster.advertise_address",
                        format!(
                            "peer_address {peer_address} listens on every interface; say which \
                             address the other replicas reach this one at"
                        ),
                    ));
                }
                None => peer_address.to_string(),
            },
        };
        let bootstrap = f.bootstrap;
        let join_address = f.join_address.clone().or(ordinal_join);
        let credential = f.join_credential_file.clone();
        let start = match (bootstrap, join_address) {
            (Some(true), Some(_)) => {
                return Err(invalid(
                    "cluster.bootstrap",
                    "a replica either bootstraps a new cluster or joins one at join_address, \
                     not both",
                ));
            }
            (_, Some(address)) => {
                let Some(credential) = credential else {
                    return Err(invalid(
                        "cluster.join_credential_file",
                        "joining needs the credential `ward-server cluster add` printed",
                    ));
                };
                ClusterStart::Join { address, credential }
            }
            (Some(true), None) => ClusterStart::Bootstrap,
            (Some(false), None) => ClusterStart::Resume,
            // Unset: the first replica of a new cluster bootstraps.
            (None, None) => ClusterStart::Bootstrap,
        };
        let election_tick = f.election_tick.unwrap_or(10);
        let heartbeat_tick = f.heartbeat_tick.unwrap_or(2);
        if heartbeat_tick == 0 {
            return Err(invalid("cluster.heartbeat_tick", "must be at least 1"));
        }
        if election_tick <= heartbeat_tick {
            return Err(invalid(
                "cluster.election_tick",
                format!("must be greater than heartbeat_tick ({heartbeat_tick})"),
            ));
        }
        let tick_text = f.tick_interval.clone();
        let tick_interval = opt_duration("cluster.tick_interval", tick_text.as_deref())?
            .unwrap_or(Duration::from_millis(100));
        if tick_interval.is_zero() {
            return Err(invalid("cluster.tick_interval", "must be positive"));
        }
        let snapshot_threshold = f.snapshot_threshold.unwrap_or(64 << 20);
        if snapshot_threshold == 0 {
            return Err(invalid("cluster.snapshot_threshold", "must be positive"));
        }
        let read_timeout = opt_duration("cluster.read_timeout", f.read_timeout.as_deref())?
            .unwrap_or(ward_cluster::DEFAULT_READ_TIMEOUT);
        if read_timeout.is_zero() {
            return Err(invalid("cluster.read_timeout", "must be positive"));
        }
        let sync_gap = opt_duration("cluster.sync_gap", f.sync_gap.as_deref())?
            .unwrap_or(ward_cluster::DEFAULT_SYNC_GAP);
        if sync_gap > ward_cluster::MAX_SYNC_GAP {
            return Err(invalid(
                "cluster.sync_gap",
                format!(
                    "must be at most {} ms, not {} ms ({:?}; a number without a unit is seconds)",
                    ward_cluster::MAX_SYNC_GAP.as_millis(),
                    sync_gap.as_millis(),
                    f.sync_gap.as_deref().unwrap_or_default(),
                ),
            ));
        }
        Ok(Some(ClusterConfig {
            node_id,
            peer_address,
            advertise_address,
            start,
            election_tick,
            heartbeat_tick,
            tick_interval,
            snapshot_threshold,
            read_timeout,
            sync_gap,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> ClusterFile {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn no_table_and_no_flags_is_no_cluster_block() {
        assert!(matches!(
            ClusterFile::resolve(None, &ClusterOverrides::default(), &no_env),
            Ok(None)
        ));
    }

    #[test]
    fn explicit_settings_and_flags() {
        let f = parse(
            r#"
            node_id = 2
            peer_address = "127.0.0.2:8082"
            join_address = "127.0.0.1:8082"
            join_credential_file = "/etc/ward/join"
            election_tick = 20
            heartbeat_tick = 4
            tick_interval = "50ms"
            snapshot_threshold = 1048576
            sync_gap = "0s"
            "#,
        );
        let c = ClusterFile::resolve(Some(f.clone()), &ClusterOverrides::default(), &no_env)
            .unwrap()
            .unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.advertise_address, "127.0.0.2:8082");
        assert_eq!(
            c.start,
            ClusterStart::Join {
                address: "127.0.0.1:8082".into(),
                credential: PathBuf::from("/etc/ward/join")
            }
        );
        assert_eq!((c.election_tick, c.heartbeat_tick), (20, 4));
        assert_eq!(c.tick_interval, Duration::from_millis(50));
        assert_eq!(c.snapshot_threshold, 1 << 20);
        assert_eq!(c.sync_gap, Duration::ZERO);
        let o = ClusterOverrides {
            node_id: Some(NodeIdSetting::Number(5)),
            advertise_address: Some("ward-5.example:8082".into()),
            ..ClusterOverrides::default()
        };
        let c = ClusterFile::resolve(Some(f), &o, &no_env).unwrap().unwrap();
        assert_eq!((c.node_id, c.advertise_address.as_str()), (5, "ward-5.example:8082"));
    }

    #[test]
    fn defaults_bootstrap_node_one() {
        let c = ClusterFile::resolve(
            Some(parse("peer_address = \"127.0.0.1:9000\"")),
            &ClusterOverrides::default(),
            &no_env,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.start, ClusterStart::Bootstrap);
        assert_eq!((c.election_tick, c.heartbeat_tick), (10, 2));
        assert_eq!(c.tick_interval, Duration::from_millis(100));
        assert_eq!(c.snapshot_threshold, 64 << 20);
        assert_eq!(c.sync_gap, ward_cluster::DEFAULT_SYNC_GAP);
    }

    #[test]
    fn statefulset_ordinals_give_ids_and_addresses() {
        let env = |name: &str| (name == "HOSTNAME").then(|| "ward-2".to_owned());
        let f = parse(
            "node_id = \"ordinal\"\npeer_service = \"ward-peers.ns.svc\"\n\
             join_credential_file = \"/run/secrets/join\"",
        );
        let c = ClusterFile::resolve(Some(f.clone()), &ClusterOverrides::default(), &env)
            .unwrap()
            .unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.advertise_address, "ward-2.ward-peers.ns.svc:8082");
        assert_eq!(
            c.start,
            ClusterStart::Join {
                address: "ward-0.ward-peers.ns.svc:8082".into(),
                credential: PathBuf::from("/run/secrets/join")
            }
        );
        let first = |name: &str| (name == "HOSTNAME").then(|| "ward-0".to_owned());
        let c =
            ClusterFile::resolve(Some(f), &ClusterOverrides::default(), &first).unwrap().unwrap();
        assert_eq!((c.node_id, c.start), (1, ClusterStart::Bootstrap));
    }

    #[test]
    fn the_local_deployment_configs_parse() {
        let files = [
            include_str!("../../../../deploy/local/replica1.toml"),
            include_str!("../../../../deploy/local/replica2.toml"),
            include_str!("../../../../deploy/local/replica3.toml"),
        ];
        for (i, text) in files.into_iter().enumerate() {
            let node = u64::try_from(i).unwrap() + 1;
            let c = crate::config::Config::from_toml(text, &crate::config::Overrides::default())
                .unwrap();
            let cluster = c.cluster.unwrap();
            assert_eq!(cluster.node_id, node);
            assert_eq!(cluster.advertise_address, format!("127.0.0.{node}:8082"));
            match (node, cluster.start) {
                (1, ClusterStart::Bootstrap) => {}
                (_, ClusterStart::Join { address, .. }) => assert_eq!(address, "127.0.0.1:8082"),
                (n, other) => panic!("replica {n}: {other:?}"),
            }
        }
    }

    #[test]
    fn refusals_name_the_key() {
        type Env<'a> = &'a dyn Fn(&str) -> Option<String>;
        let cases: &[(&str, Env<'_>, &str)] = &[
            ("node_id = 0", &no_env, "cluster.node_id"),
            ("node_id = \"first\"", &no_env, "cluster.node_id"),
            ("node_id = \"ordinal\"\npeer_service = \"s\"", &no_env, "cluster.node_id"),
            ("node_id = \"ordinal\"", &|_| Some("ward-1".to_owned()), "cluster.peer_service"),
            ("bootstrap = true\njoin_address = \"a:1\"", &no_env, "cluster.bootstrap"),
            ("join_address = \"a:1\"", &no_env, "cluster.join_credential_file"),
            ("election_tick = 2\nheartbeat_tick = 2", &no_env, "cluster.election_tick"),
            ("heartbeat_tick = 0", &no_env, "cluster.heartbeat_tick"),
            ("tick_interval = \"0s\"", &no_env, "cluster.tick_interval"),
            ("snapshot_threshold = 0", &no_env, "cluster.snapshot_threshold"),
            ("read_timeout = \"0s\"", &no_env, "cluster.read_timeout"),
            ("read_timeout = \"soon\"", &no_env, "cluster.read_timeout"),
            ("sync_gap = \"101ms\"", &no_env, "cluster.sync_gap"),
            ("sync_gap = \"-1ms\"", &no_env, "cluster.sync_gap"),
            ("peer_address = \"0.0.0.0:8082\"", &no_env, "cluster.advertise_address"),
        ];
        for (text, env, want) in cases {
            let text = if text.contains("peer_address") {
                (*text).to_owned()
            } else {
                format!("peer_address = \"127.0.0.1:8082\"\n{text}")
            };
            match ClusterFile::resolve(Some(parse(&text)), &ClusterOverrides::default(), *env) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, *want, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(toml::from_str::<ClusterFile>("nodeid = 1").is_err(), "unknown keys refused");
        // The refusal says what it read: "3" is 3 s, not 3 ms.
        let text = "peer_address = \"127.0.0.1:8082\"\nsync_gap = \"3\"";
        match ClusterFile::resolve(Some(parse(text)), &ClusterOverrides::default(), &no_env) {
            Err(e) => assert!(e.to_string().contains("not 3000 ms (\"3\""), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
