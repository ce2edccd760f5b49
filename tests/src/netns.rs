//! Network namespaces for partition tests: one namespace per replica, each joined to a
//! private bridge (in a hub namespace of its own) by a veth pair, so one replica's link can
//! be cut, healed or slowed without touching the host's network. Clients that are not
//! replicas (a `spire-agent`, say) can join the same bridge in namespaces of their own, with
//! their own `/etc/hosts`.
//!
//! Members are numbered from 1: replicas `1..=replicas`, then each client in the order it is
//! added. Member `n` has address [`NetLab::address`]`(n)`, and every operation on a member
//! (partition, heal, slow) works the same for replicas and clients.
//!
//! Needs root (`ip netns`, `tc`). Every name starts with the caller's prefix and a
//! process-unique tag; [`NetLab`]'s `Drop` deletes the namespaces, which removes their links
//! and any queueing discipline, and the `/etc/netns/<namespace>` directories it wrote, even
//! when the test panics.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The subnet the members' links share (private to the lab's namespaces).
const SUBNET: &str = "10.213.0";

/// Where `ip netns exec <ns>` finds files to bind-mount over `/etc/<file>` in `<ns>`.
const NETNS_ETC: &str = "/etc/netns";

/// A hub namespace with a bridge and member namespaces (replicas, then clients) wired to it.
#[derive(Debug)]
pub struct NetLab {
    tag: String,
    hub: String,
    members: Vec<String>,
    /// `/etc/netns/<ns>` directories written by [`NetLab::set_hosts`].
    etc_dirs: Vec<PathBuf>,
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
    /// the labs of this process) for `n` in `1..=members`; replica `n` has address
    /// [`NetLab::address`]`(n)` on its `eth0` and a loopback that is up.
    ///
    /// # Errors
    /// When a namespace or link cannot be made (not root, no `ip`); what was made is removed.
    pub fn new(prefix: &str, members: u64) -> anyhow::Result<Self> {
        let tag = format!("{prefix}{}-{}", std::process::id(), crate::next_tag());
        let mut lab =
            Self { hub: format!("{tag}-hub"), tag, members: Vec::new(), etc_dirs: Vec::new() };
        run("ip", &["netns", "add", &lab.hub])?;
        run("ip", &["-n", &lab.hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &lab.hub, "link", "set", "br0", "up"])?;
        for _ in 0..members {
            lab.attach("r")?;
        }
        Ok(lab)
    }

    /// Adds a member that is not a replica: namespace `<prefix><pid>-<k>-c<n>` on the same
    /// bridge, with the next member number `n` (after the replicas and earlier clients) and
    /// address [`NetLab::address`]`(n)`; returns `n`.
    ///
    /// # Errors
    /// When the namespace or its link cannot be made.
    pub fn add_client(&mut self) -> anyhow::Result<u64> {
        self.attach("c")
    }

    /// Makes member number `members + 1` in namespace `<tag>-<kind><n>`, wired to the bridge.
    fn attach(&mut self, kind: &str) -> anyhow::Result<u64> {
        let n = u64::try_from(self.members.len())?.checked_add(1).context("too many members")?;
        let ns = format!("{}-{kind}{n}", self.tag);
        run("ip", &["netns", "add", &ns])?;
        self.members.push(ns.clone());
        let veth = format!("v{n}");
        run(
            "ip",
            &["-n", &self.hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0"],
        )?;
        // Created in the hub; move the member's end into its namespace.
        run("ip", &["-n", &self.hub, "link", "set", "eth0", "netns", &ns])?;
        run("ip", &["-n", &self.hub, "link", "set", &veth, "master", "br0", "up"])?;
        let cidr = format!("{}/24", Self::address(n));
        run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(n)
    }

    /// Gives member `n` its own `/etc/hosts`: `localhost` plus one line per `(address, name)`
    /// pair (a name may appear on several lines, one per address). `ip netns exec <ns>`
    /// bind-mounts `/etc/netns/<ns>/hosts` over `/etc/hosts` for what it starts, so only
    /// processes started in that namespace see it. The directory is removed on drop.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn set_hosts(&mut self, n: u64, hosts: &[(&str, &str)]) -> anyhow::Result<()> {
        let dir = PathBuf::from(NETNS_ETC).join(self.namespace(n)?);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if !self.etc_dirs.contains(&dir) {
            self.etc_dirs.push(dir.clone());
        }
        let lines = hosts.iter().map(|(address, name)| format!("{address} {name}\n"));
        let text: String =
            std::iter::once("127.0.0.1 localhost\n".to_owned()).chain(lines).collect();
        let file = dir.join("hosts");
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))
    }

    /// The words that start a program inside member `n`'s namespace
    /// (`ip netns exec <ns>`), for a [`crate::cluster::Placement`] launcher or a
    /// [`Command`].
    ///
    /// # Errors
    /// When `n` is not a member.
    pub fn launcher(&self, n: u64) -> anyhow::Result<Vec<String>> {
        Ok(["ip", "netns", "exec", self.namespace(n)?].map(str::to_owned).to_vec())
    }

    /// Member `n`'s address on the lab's bridge.
    pub fn address(n: u64) -> String {
        format!("{SUBNET}.{n}")
    }

    /// The namespace of member `n` (1-based).
    ///
    /// # Errors
    /// When `n` is not a member.
    pub fn namespace(&self, n: u64) -> anyhow::Result<&str> {
        let i = usize::try_from(n).ok().and_then(|n| n.checked_sub(1));
        i.and_then(|i| self.members.get(i))
            .map(String::as_str)
            .with_context(|| format!("member {n} is not in the lab"))
    }

    /// Cuts member `n` off the bridge (both directions; the other members still reach each
    /// other).
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn partition(&self, n: u64) -> anyhow::Result<()> {
        run("ip", &["-n", &self.hub, "link", "set", &format!("v{n}"), "down"])
    }

    /// Joins member `n` to the bridge again.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn heal(&self, n: u64) -> anyhow::Result<()> {
        run("ip", &["-n", &self.hub, "link", "set", &format!("v{n}"), "up"])
    }

    /// Slows both directions of member `n`'s link to `kbit` kbit/s with a token bucket
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

    /// Removes the rate limit of [`NetLab::slow`] from member `n`'s link.
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
        for dir in &self.etc_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        // Deleting a namespace deletes its links (and their peers) and queueing disciplines.
        for ns in self.members.iter().chain(std::iter::once(&self.hub)) {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}
