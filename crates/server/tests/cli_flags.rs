//! The admin CLI binary's own checks, before any server is called: a missing or bad flag gets
//! SPIRE's sentence on stderr and exit code 1, and nothing on stdout.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ward-server");

/// Runs `ward-server <argv…>` against a socket that does not exist (so a command that got as
/// far as calling the server would fail differently) and returns (exit code, stdout, stderr).
fn run(argv: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let mut cmd = Command::new(BIN);
    let split = argv.iter().position(|a| a.starts_with('-')).unwrap_or(argv.len());
    cmd.args(&argv[..split]).arg("-socketPath").arg(&socket).args(&argv[split..]);
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn missing_and_bad_flags_read_as_spire_reports_them() {
    let table: &[(&[&str], &str)] = &[
        (&["agent", "show"], "Error: a SPIFFE ID is required\n"),
        (&["agent", "ban"], "Error: a SPIFFE ID is required\n"),
        (&["agent", "evict"], "Error: a SPIFFE ID is required\n"),
        (&["agent", "show", "-spiffeID", "agent"], "Error: scheme is missing or invalid\n"),
        (
            &["agent", "list", "-selector", "unix:uid:1", "-matchSelectorsOn", "most"],
            "Error: unsupported match behavior\n",
        ),
        (
            &["agent", "count", "-expiresBefore", "tomorrow"],
            "Error: date is not valid: parsing time \"tomorrow\" as \"2006-01-02 15:04:05 -0700 \
             -07\": cannot parse \"tomorrow\" as \"2006\"\n",
        ),
        (&["bundle", "set"], "Error: id flag is required\n"),
        (&["bundle", "delete"], "Error: id is required\n"),
        (
            &["bundle", "delete", "-id", "spiffe://a.org", "-mode", "purge"],
            "Error: unsupported mode \"purge\"\n",
        ),
        (&["entry", "create"], "Error: at least one selector is required\n"),
        (
            &["entry", "create", "-selector", "a:b"],
            "Error: a parent ID is required if the node flag is not set\n",
        ),
        (
            &["entry", "create", "-selector", "a:b", "-node", "-federatesWith", "spiffe://a.org"],
            "Error: node entries can not federate\n",
        ),
        (
            &["entry", "create", "-selector", "a:b", "-parentID", "spiffe://a.org/p"],
            "Error: a SPIFFE ID is required\n",
        ),
        (
            &[
                "entry",
                "create",
                "-selector",
                "a:b",
                "-parentID",
                "spiffe://a.org/p",
                "-spiffeID",
                "spiffe://a.org/w",
                "-x509SVIDTTL",
                "-1",
            ],
            "Error: a positive x509-SVID TTL is required\n",
        ),
        (&["entry", "update"], "Error: entry ID is required\n"),
        (&["entry", "update", "-entryID", "e"], "Error: at least one selector is required\n"),
        (
            &["entry", "update", "-entryID", "e", "-selector", "a:b"],
            "Error: a parent ID is required\n",
        ),
        (&["entry", "delete"], "Error: an entry ID is required\n"),
        (
            &["entry", "show", "-entryID", "e", "-selector", "a:b"],
            "Error: the -entryID flag can't be combined with others\n",
        ),
        (
            &["entry", "count", "-selector", "unix"],
            "Error: error parsing selectors: selector \"unix\" must be formatted as type:value\n",
        ),
        (&["federation", "create"], "Error: trust domain is required\n"),
        (
            &["federation", "create", "-trustDomain", "a.org"],
            "Error: bundle endpoint URL is required\n",
        ),
        (&["federation", "show"], "Error: a trust domain name is required\n"),
        (&["federation", "delete"], "Error: id is required\n"),
        (&["federation", "refresh"], "Error: id is required\n"),
        (&["x509", "mint"], "Error: spiffeID must be specified\n"),
        (
            &["jwt", "mint", "-spiffeID", "spiffe://a.org/w"],
            "Error: at least one audience must be specified\n",
        ),
        (&["localauthority", "x509", "activate"], "Error: an authority ID is required\n"),
        (&["localauthority", "jwt", "taint"], "Error: an authority ID is required\n"),
        (&["localauthority", "jwt", "revoke"], "Error: an authority ID is required\n"),
        (
            &["upstreamauthority", "taint"],
            "Error: the Subject Key ID of the X.509 upstream authority is required\n",
        ),
        (&["logger", "set"], "Error: a value (-level) must be set\n"),
        (
            &["logger", "set", "-level", "loud"],
            "Error: the value \"loud\" is not a valid setting\n",
        ),
        (
            &["token", "generate", "-ttl", "2147483648"],
            "Error: invalid value for TTL: overflow converting int(2147483648) to int32\n",
        ),
        (&["entry", "show", "-bogus"], "flag provided but not defined: -bogus\n"),
        (
            &["token", "generate", "-ttl", "ten"],
            "invalid value \"ten\" for flag -ttl: parse error\n",
        ),
    ];
    let mut wrong = Vec::new();
    for (argv, want) in table {
        let (code, stdout, stderr) = run(argv);
        if code != Some(1) || !stdout.is_empty() || stderr != *want {
            wrong.push(format!(
                "{argv:?}: exit {code:?}, stdout {stdout:?}, stderr {stderr:?}; want exit 1, \
                 stderr {want:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn an_unreachable_socket_is_a_go_grpc_connection_error() {
    let (code, stdout, stderr) = run(&["bundle", "count"]);
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with(
            "Error: rpc error: code = Unavailable desc = connection error: desc = \"transport: \
             Error while dialing: dial unix //"
        ),
        "{stderr}"
    );
    assert!(stderr.ends_with("absent.sock: connect: no such file or directory\"\n"), "{stderr}");
}

#[test]
fn a_socket_that_closes_or_refuses_is_unavailable_as_in_go_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let closing = dir.path().join("closing.sock");
    ward_testkit::serve_closing_unix_socket(&closing).unwrap();
    let not_a_socket = dir.path().join("plain-file");
    std::fs::write(&not_a_socket, b"").unwrap();
    let go_path = |p: &std::path::Path| format!("//{}", p.display());
    let cases = [
        // spire-server v1.13.3 prints exactly these lines for the same sockets.
        (
            &closing,
            "entry count",
            "Error: rpc error: code = Unavailable desc = connection error: desc = \"error \
             reading server preface: EOF\"\n"
                .to_owned(),
        ),
        (
            &closing,
            "entry show",
            "Error: error fetching entries: rpc error: code = Unavailable desc = connection \
             error: desc = \"error reading server preface: EOF\"\n"
                .to_owned(),
        ),
        (
            &not_a_socket,
            "bundle show",
            format!(
                "Error: rpc error: code = Unavailable desc = connection error: desc = \
                 \"transport: Error while dialing: dial unix {}: connect: connection refused\"\n",
                go_path(&not_a_socket)
            ),
        ),
    ];
    for (socket, command, want) in cases {
        let out = Command::new(BIN)
            .args(command.split(' '))
            .arg("-socketPath")
            .arg(socket)
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!((out.status.code(), stderr.as_str()), (Some(1), want.as_str()), "{command}");
        assert!(out.stdout.is_empty(), "{command}");
    }
}

#[test]
fn help_is_not_a_failure() {
    let out = Command::new(BIN).args(["entry", "show", "-h"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains("--matchSelectorsOn"));
}
