//! Network namespaces for partition tests: one namespace per replica, each joined to a
//! private bridge (in a hub namespace of its own) by a veth pair, so one replica's link can
//! be cut, healed or slowed without touching the host's network.
//!
//! Needs root (`ip netns`, `tc`). Every name starts with the caller's prefix and a
//! process-unique tag; [`NetLab`]'s `Drop` deletes the namespaces, which removes their links
//! and any queueing discipline, even when the test panics.

use std::process::Command;

use anyhow::{Context, bail};

/// The subnet the replicas' links share (private to the lab's namespaces).
const SUBNET: &str = "10.213.0";

/// A hub namespace with a bridge and `members` replica namespaces wired to it.
#[derive(Debug)]
pub struct NetLab {
    hub: String,
    members: Vec<String>,
}

/// Runs `ip`/`tc` with `args`; fails with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetLab {
    /// Creates namespaces `<prefix><pid>-<k>-hub` and `<prefix><pid>-<k>-r<n>` (`k` counts
    /// the labs of this process) for `n` in
    /// `1..=members`; replica `n` has address [`NetLab::address`]`(n)` on its `eth0` and a
    /// loopback that is up.
    ///
    /// # Errors
    /// When a namespace or link cannot be made (not root, no `ip`); what was made is removed.
    pub fn new(prefix: &str, members: u64) -> anyhow::Result<Self> {
        let tag = format!("{prefix}{}-{}", std::process::id(), crate::next_tag());
        let mut lab = Self { hub: format!("{tag}-hub"), members: Vec::new() };
        run("ip", &["netns", "add", &lab.hub])?;
        run("ip", &["-n", &lab.hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &lab.hub, "link", "set", "br0", "up"])?;
        for n in 1..=members {
            let ns = format!("{tag}-r{n}");
            run("ip", &["netns", "add", &ns])?;
            lab.members.push(ns.clone());
            let veth = format!("v{n}");
            run(
                "ip",
                &["-n", &lab.hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0"],
            )?;
            // Created in the hub; move the replica's end into its namespace.
            run("ip", &["-n", &lab.hub, "link", "set", "eth0", "netns", &ns])?;
            run("ip", &["-n", &lab.hub, "link", "set", &veth, "master", "br0", "up"])?;
            let cidr = format!("{}/24", Self::address(n));
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// Replica `n`'s address on the lab's bridge.
    pub fn address(n: u64) -> String {
        format!("{SUBNET}.{n}")
    }

    /// The namespace of replica `n` (1-based).
    ///
    /// # Errors
    /// When `n` is not a member.
    pub fn namespace(&self, n: u64) -> anyhow::Result<&str> {
        let i = usize::try_from(n).ok().and_then(|n| n.checked_sub(1));
        i.and_then(|i| self.members.get(i))
            .map(String::as_str)
            .with_context(|| format!("replica {n} is not in the lab"))
    }

    /// Cuts replica `n` off the bridge (both directions; the other replicas still reach each
    /// other).
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn partition(&self, n: u64) -> anyhow::Result<()> {
        run("ip", &["-n", &self.hub, "link", "set", &format!("v{n}"), "down"])
    }

    /// Joins replica `n` to the bridge again.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn heal(&self, n: u64) -> anyhow::Result<()> {
        run("ip", &["-n", &self.hub, "link", "set", &format!("v{n}"), "up"])
    }

    /// Slows both directions of replica `n`'s link to `kbit` kbit/s with a token bucket
    /// (`tc tbf`): each packet waits its serialisation time at that rate, and packets queue
    /// up to `latency_ms` behind each other (beyond that they are dropped).
    ///
    /// This kernel has no `netem`, so a rate limit is how the link is made slow.
    ///
    /// # Errors
    /// When `tc` fails.
    pub fn slow(&self, n: u64, kbit: u32, latency_ms: u32) -> anyhow::Result<()> {
        let rate = format!("{kbit}kbit");
        let latency = format!("{latency_ms}ms");
        let tbf = ["root", "tbf", "rate", &rate, "burst", "1600", "latency", &latency];
        let veth = format!("v{n}");
        let mut hub = vec!["-n", &self.hub, "qdisc", "replace", "dev", &veth];
        hub.extend(tbf);
        run("tc", &hub)?;
        let mut own = vec!["-n", self.namespace(n)?, "qdisc", "replace", "dev", "eth0"];
        own.extend(tbf);
        run("tc", &own)
    }

    /// Removes the rate limit of [`NetLab::slow`] from replica `n`'s link.
    ///
    /// # Errors
    /// When `tc` fails (also when the link was not slowed).
    pub fn unslow(&self, n: u64) -> anyhow::Result<()> {
        run("tc", &["-n", &self.hub, "qdisc", "del", "dev", &format!("v{n}"), "root"])?;
        run("tc", &["-n", self.namespace(n)?, "qdisc", "del", "dev", "eth0", "root"])
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its links (and their peers) and queueing disciplines.
        for ns in self.members.iter().chain(std::iter::once(&self.hub)) {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}
