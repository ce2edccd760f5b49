//! x509 and jwt mint, agents, and the spire-agents the agent rows need.

use super::*;

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
pub(super) fn mint(d: &mut Differential) -> anyhow::Result<()> {
    both(d, "x509 mint", &["x509", "mint", "-spiffeID", "spiffe://example.org/minted"])?;
    row(
        d,
        "x509 mint: dns and ttl",
        &[
            "x509", "mint", "-spiffeID", "spiffe://example.org/minted", "-dns", "a.example.org",
            "-dns", "b.example.org", "-ttl", "30m",
        ],
    )?;
    row(
        d,
        "x509 mint: wildcard dns",
        &["x509", "mint", "-spiffeID", "spiffe://example.org/minted", "-dns", "*.example.org"],
    )?;
    row(
        d,
        "x509 mint -write",
        &["x509", "mint", "-spiffeID", "spiffe://example.org/minted", "-write", "{root}/minted"],
    )?;
    let bad: &[(&str, &[&str])] = &[
        ("x509 mint: reserved id", &["-spiffeID", "spiffe://example.org/spire/agent/x"]),
        ("x509 mint: server id", &["-spiffeID", "spiffe://example.org/spire/server"]),
        ("x509 mint: trust domain id", &["-spiffeID", "spiffe://example.org"]),
        ("x509 mint: foreign id", &["-spiffeID", "spiffe://other.org/w"]),
        ("x509 mint: malformed id", &["-spiffeID", "minted"]),
        (
            "x509 mint: wildcard overlap",
            &[
                "-spiffeID", "spiffe://example.org/minted", "-dns", "*.example.org", "-dns",
                "a.example.org",
            ],
        ),
        (
            "x509 mint: wildcard in the middle",
            &["-spiffeID", "spiffe://example.org/minted", "-dns", "a.*.example.org"],
        ),
        (
            "x509 mint: dns with underscore",
            &["-spiffeID", "spiffe://example.org/minted", "-dns", "bad_label.example.org"],
        ),
        (
            "x509 mint: dns with empty label",
            &["-spiffeID", "spiffe://example.org/minted", "-dns", "a..example.org"],
        ),
        ("x509 mint: negative ttl", &["-spiffeID", "spiffe://example.org/minted", "-ttl", "-1m"]),
        ("x509 mint: no id", &[]),
    ];
    for (name, args) in bad {
        let mut argv = vec!["x509", "mint"];
        argv.extend_from_slice(args);
        row(d, name, &argv)?;
    }

    both(
        d,
        "jwt mint",
        &["jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "aud1"],
    )?;
    row(
        d,
        "jwt mint: two audiences and ttl",
        &[
            "jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "aud1",
            "-audience", "aud2", "-ttl", "2m",
        ],
    )?;
    row(
        d,
        "jwt mint: ttl above the maximum",
        &[
            "jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "a", "-ttl",
            "48h",
        ],
    )?;
    row(
        d,
        "jwt mint -write",
        &[
            "jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "a", "-write",
            "{root}/jwt.token",
        ],
    )?;
    let bad: &[(&str, &[&str])] = &[
        (
            "jwt mint: reserved id",
            &["-spiffeID", "spiffe://example.org/spire/agent/x", "-audience", "a"],
        ),
        ("jwt mint: trust domain id", &["-spiffeID", "spiffe://example.org", "-audience", "a"]),
        ("jwt mint: foreign id", &["-spiffeID", "spiffe://other.org/w", "-audience", "a"]),
        ("jwt mint: no audience", &["-spiffeID", "spiffe://example.org/minted"]),
        (
            "jwt mint: empty audience",
            &["-spiffeID", "spiffe://example.org/minted", "-audience", ""],
        ),
        (
            "jwt mint: negative ttl",
            &["-spiffeID", "spiffe://example.org/minted", "-audience", "a", "-ttl", "-1m"],
        ),
        ("jwt mint: no id", &["-audience", "a"]),
    ];
    for (name, args) in bad {
        let mut argv = vec!["jwt", "mint"];
        argv.extend_from_slice(args);
        row(d, name, &argv)?;
    }
    Ok(())
}

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
pub(super) fn agents(d: &mut Differential) -> anyhow::Result<()> {
    both(d, "agent list: none", &["agent", "list"])?;
    both(d, "agent count: none", &["agent", "count"])?;
    both(d, "agent purge: none", &["agent", "purge"])?;

    d.run(
        Row::new("token generate: for the agent", &["token", "generate", "-ttl", "600"])
            .capture("agent_token", r"Token: (\S+)"),
    )?;
    attest_agents(d)?;

    both(d, "agent list", &["agent", "list"])?;
    both(d, "agent count", &["agent", "count"])?;
    both(d, "agent show", &["agent", "show", "-spiffeID", "{agent_id}"])?;
    row(
        d,
        "agent show: unknown",
        &["agent", "show", "-spiffeID", "spiffe://example.org/spire/agent/join_token/nope"],
    )?;
    row(
        d,
        "agent show: not an agent id",
        &["agent", "show", "-spiffeID", "spiffe://example.org/workload"],
    )?;
    row(
        d,
        "agent show: foreign id",
        &["agent", "show", "-spiffeID", "spiffe://other.org/spire/agent/x"],
    )?;
    row(d, "agent show: malformed id", &["agent", "show", "-spiffeID", "agent"])?;
    row(d, "agent show: no id", &["agent", "show"])?;
    let filters: &[(&str, &[&str])] = &[
        ("-attestationType join_token", &["-attestationType", "join_token"]),
        ("-attestationType x509pop", &["-attestationType", "x509pop"]),
        ("-banned false", &["-banned", "false"]),
        ("-banned true", &["-banned", "true"]),
        ("-canReattest true", &["-canReattest", "true"]),
        ("-canReattest false", &["-canReattest", "false"]),
        ("-expiresBefore far future", &["-expiresBefore", "2099-01-01 00:00:00 +0000 +00"]),
        ("-expiresBefore past", &["-expiresBefore", "2001-01-01 00:00:00 +0000 +00"]),
        ("-expiresBefore malformed", &["-expiresBefore", "tomorrow"]),
        ("-selector", &["-selector", "spiffe_id:{agent_id}"]),
        ("-selector no match", &["-selector", "unix:uid:1"]),
        ("-selector any", &["-selector", "unix:uid:1", "-matchSelectorsOn", "any"]),
        ("-selector bad match", &["-selector", "unix:uid:1", "-matchSelectorsOn", "most"]),
        ("-selector malformed", &["-selector", "unix"]),
    ];
    for (label, args) in filters {
        let mut list = vec!["agent", "list"];
        list.extend_from_slice(args);
        row(d, &format!("agent list {label}"), &list)?;
        let mut count = vec!["agent", "count"];
        count.extend_from_slice(args);
        row(d, &format!("agent count {label}"), &count)?;
    }
    both(d, "agent purge -dryRun", &["agent", "purge", "-dryRun"])?;
    row(d, "agent purge -expiredFor -dryRun", &["agent", "purge", "-expiredFor", "1s", "-dryRun"])?;
    twice(d, "agent ban", &["agent", "ban", "-spiffeID", "{agent_id}"])?;
    both(d, "agent list: banned", &["agent", "list"])?;
    row(d, "agent show: banned", &["agent", "show", "-spiffeID", "{agent_id}"])?;
    row(d, "agent count -banned true: after ban", &["agent", "count", "-banned", "true"])?;
    row(
        d,
        "agent ban: unknown",
        &["agent", "ban", "-spiffeID", "spiffe://example.org/spire/agent/join_token/nope"],
    )?;
    row(
        d,
        "agent ban: not an agent id",
        &["agent", "ban", "-spiffeID", "spiffe://example.org/workload"],
    )?;
    row(d, "agent ban: no id", &["agent", "ban"])?;
    twice(d, "agent evict", &["agent", "evict", "-spiffeID", "{agent_id}"])?;
    row(d, "agent evict: again", &["agent", "evict", "-spiffeID", "{agent_id}"])?;
    row(
        d,
        "agent evict: foreign id",
        &["agent", "evict", "-spiffeID", "spiffe://other.org/spire/agent/x"],
    )?;
    row(d, "agent evict: no id", &["agent", "evict"])?;
    row(d, "agent list: after evict", &["agent", "list"])?;
    row(d, "agent count: after evict", &["agent", "count"])?;
    for side in &mut d.sides {
        side.agent = None;
    }
    Ok(())
}

/// Starts a `spire-agent` with the captured join token against each server and waits until
/// each server lists one agent.
fn attest_agents(d: &mut Differential) -> anyhow::Result<()> {
    let bins = SpireBins::locate()?;
    for side in &mut d.sides {
        let token = side.vars.get("agent_token").cloned().with_context(|| {
            format!("{}: token generate printed no token for the agent", side.label)
        })?;
        side.set_var("agent_id", &format!("spiffe://{TD}/spire/agent/join_token/{token}"));
        let pem = side.cli.bundle_show_pem()?;
        let bundle_path = side.root.join("agent-bundle.pem");
        std::fs::write(&bundle_path, pem)?;
        side.agent = Some(start_spire_agent(
            &bins,
            &side.root.join("agent"),
            TD,
            side.server.port,
            &bundle_path,
            &token,
        )?);
    }
    for side in &mut d.sides {
        let label = side.label;
        let Side { agent, server, cli, .. } = side;
        let agent = agent.as_mut().context("agent")?;
        poll_until(&format!("the agent to attest to {label}"), AGENT_TIMEOUT, || {
            agent.daemon.ensure_running()?;
            server.daemon.ensure_running()?;
            let out = cli.raw(&["agent", "count"], &[])?;
            Ok(if out.stdout.trim() == "1 attested agent" {
                Step::Done(())
            } else {
                Step::Retry(out.describe())
            })
        })?;
    }
    Ok(())
}
