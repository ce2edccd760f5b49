//! The `cluster` commands' edges, on real `ward-server` processes: a server that is not a
//! cluster member says so in a sentence; `transfer-leader` and `remove` print JSON with
//! `-output json`; node id 0 is refused with one code and one sentence by every command, by
//! the configuration and by the `-nodeId` flag of `run`; a missing `-nodeId` or `-address`
//! is named as the documentation spells it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ward_tests::cluster::{Cluster, Placement, Replica, SETTLE};
use ward_tests::server::ServerOptions;
use ward_tests::wait::{Step, poll_until};
use ward_tests::ward::{start_ward_server, ward_server_bin};

/// What every `cluster` command answers on a server without a `[cluster]` table.
const NOT_A_MEMBER: &str = "rpc error: code = Unimplemented desc = this server does not run as a \
                            cluster member (it was started without a [cluster] table or cluster \
                            flags), so it has no cluster to show or change";

/// What node id 0 is refused with, everywhere.
const NODE_ID_ZERO: &str = "node id 0 is reserved (raft's \"no node\"); node ids start at 1";

#[test]
fn cluster_commands_on_a_server_without_a_cluster_say_why_they_cannot_run() {
    let bin = ward_server_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        start_ward_server(&bin, dir.path(), &ServerOptions::new("example.org")).unwrap();
    let cli = ward_tests::cli::AdminCli::new(&bin, &server.socket_path);
    poll_until("the server to serve its admin socket", SETTLE, || {
        server.daemon.ensure_running()?;
        Ok(match cli.healthcheck() {
            Ok(_) => Step::Done(()),
            Err(e) => Step::Retry(e.to_string()),
        })
    })
    .unwrap();
    let commands: [(&[&str], &[&str]); 5] = [
        (&["cluster", "status"], &[]),
        (&["cluster", "status"], &["-output", "json"]),
        (&["cluster", "add"], &["-nodeId", "2", "-address", "127.0.0.2:8082"]),
        (&["cluster", "remove"], &["-nodeId", "2"]),
        (&["cluster", "transfer-leader"], &["-nodeId", "2"]),
    ];
    for (words, args) in commands {
        let out = cli.raw(words, args).unwrap();
        assert_eq!(out.status.code(), Some(1), "{words:?}: {}", out.describe());
        assert_eq!(out.stderr, format!("Error: {NOT_A_MEMBER}\n"), "{words:?}");
        assert_eq!(out.stdout, "", "{words:?}");
    }
}

#[test]
fn missing_cluster_flags_are_named_as_documented() {
    let bin = ward_server_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // No server behind the socket: the values are checked before any call.
    let cli = ward_tests::cli::AdminCli::new(&bin, &dir.path().join("none.sock"));
    for (words, args, says) in [
        (&["cluster", "remove"][..], &[][..], "Error: a node id is required (-nodeId <id>)\n"),
        (&["cluster", "transfer-leader"], &[], "Error: a node id is required (-nodeId <id>)\n"),
        (
            &["cluster", "add"],
            &["-address", "127.0.0.2:8082"],
            "Error: a node id is required (-nodeId <id>)\n",
        ),
        (
            &["cluster", "add"],
            &["-nodeId", "2"],
            "Error: an address is required (-address <host:port>)\n",
        ),
    ] {
        let out = cli.raw(words, args).unwrap();
        assert_eq!(out.status.code(), Some(1), "{words:?}: {}", out.describe());
        assert_eq!(out.stderr, says, "{words:?}");
    }
}

#[test]
fn node_id_zero_is_refused_alike_everywhere_and_transfer_leader_prints_json() {
    let mut c = Cluster::start_loopback(1, "").unwrap();
    let r1 = &c.replicas[0];

    // Phase 1: transfer-leader (to the leader itself, a no-op) and its JSON.
    let out =
        r1.cli.ok(&["cluster", "transfer-leader"], &["-nodeId", "1", "-output", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v, serde_json::json!({"leader_id": "1"}), "{}", out.stdout);
    let out = r1.cli.ok(&["cluster", "transfer-leader"], &["-nodeId", "1"]).unwrap();
    assert_eq!(out.stdout, "Leader: 1\n");

    // Phase 2: node id 0 on every command: one code, one sentence, nothing changed.
    let want = format!("Error: rpc error: code = InvalidArgument desc = {NODE_ID_ZERO}\n");
    for (words, args) in [
        (&["cluster", "add"][..], &["-nodeId", "0", "-address", "127.0.0.9:8082"][..]),
        (&["cluster", "remove"], &["-nodeId", "0"]),
        (&["cluster", "transfer-leader"], &["-nodeId", "0"]),
        (&["cluster", "transfer-leader"], &["-nodeId", "0", "-output", "json"]),
    ] {
        let out = r1.cli.raw(words, args).unwrap();
        assert_eq!(out.status.code(), Some(1), "{words:?}: {}", out.describe());
        assert_eq!(out.stderr, want, "{words:?}");
    }
    assert_eq!(r1.voters(), vec![1]);

    // Phase 3: a replica configured as node 0, by the table or by the flag, does not start.
    let placement = Placement::loopback(9).unwrap();
    let mut zero = Replica::new(&c.bin, c.root(), "zero", 0, placement);
    zero.start().unwrap();
    let log = zero.wait_exited().unwrap();
    assert!(log.contains(&format!("invalid value for cluster.node_id: {NODE_ID_ZERO}")), "{log}");
    let flag = std::process::Command::new(&c.bin)
        .args(["run", "-nodeId", "0", "-peerAddress", "127.0.0.9:1", "-bindAddress", "127.0.0.9"])
        .args(["-serverPort", "0", "-socketPath"])
        .arg(c.root().join("flag.sock"))
        .arg("-dataDir")
        .arg(c.root().join("flag-data"))
        .output()
        .unwrap();
    assert_eq!(flag.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&flag.stderr);
    assert!(
        stderr.contains(&format!("invalid value for cluster.node_id: {NODE_ID_ZERO}")),
        "{stderr}"
    );
    c.replicas[0].terminate().unwrap();
}
