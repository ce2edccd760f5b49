//! The `unix` workload attestor: who runs the process, and which binary it runs.
//!
//! Selectors, in the order SPIRE v1.13.3 returns them (`pkg/agent/plugin/workloadattestor/
//! unix/unix_posix.go`), all of type `unix`:
//!
//! | value | from | needs |
//! |---|---|---|
//! | `uid:<n>` | effective uid, `/proc/<pid>/status` | nothing (proc status is world-readable) |
//! | `user:<name>` | the uid's passwd entry (NSS); left out when there is none | nothing |
//! | `gid:<n>` | effective gid, `/proc/<pid>/status` | nothing |
//! | `group:<name>` | the gid's group entry; left out when there is none | nothing |
//! | `supplementary_gid:<n>` | each id of the `Groups:` line, kernel order | nothing |
//! | `supplementary_group:<name>` | after each of those with a group entry | nothing |
//! | `path:<path>` | `readlink /proc/<pid>/exe` (only with `discover_workload_path`) | same uid as the workload, or `CAP_SYS_PTRACE` |
//! | `sha256:<hex>` | SHA-256 of the file opened through `/proc/<pid>/exe` (only with `discover_workload_path` and `workload_size_limit >= 0`) | as `path` |
//!
//! For a process in another mount namespace (a container), `path` is the executable's path
//! *inside that namespace* (what the kernel prints for the link, e.g. `/usr/bin/nginx` of the
//! container image), which may not exist on the host; the digest is of the very file the
//! process runs, reached through the `/proc/<pid>/exe` link, so it is right in any namespace.

use std::fs::File;
use std::io::{self, Read};

use serde::Deserialize;
use tracing::warn;
use ward_core::Selector;

use crate::{AttestError, ProcFs, WorkloadAttestor};

/// The selector type and plugin name.
pub const UNIX: &str = "unix";

/// The `WorkloadAttestor "unix"` plugin data, with SPIRE's keys and defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct UnixConfig {
    /// Also report `path` and `sha256` selectors (default `false`). Needs the agent to read
    /// the workload's `/proc/<pid>/exe`: same uid as the workload, or `CAP_SYS_PTRACE`.
    pub discover_workload_path: bool,
    /// Bytes of executable the attestor is willing to hash for `sha256` (default 0): 0 means
    /// no limit, a negative value never hashes, and a binary over a positive limit fails the
    /// attestation as in SPIRE.
    pub workload_size_limit: i64,
}

/// What one unix attestation found.
#[derive(Debug)]
pub struct UnixAttestation {
    /// The selectors, in SPIRE's order.
    pub selectors: Vec<Selector>,
    /// Set when `discover_workload_path` is on but the agent may not read the workload's
    /// executable: `path` and `sha256` are left out and this says why.
    pub path_skipped: Option<AttestError>,
}

/// The `unix` workload attestor.
#[derive(Debug, Clone, Default)]
pub struct UnixAttestor {
    config: UnixConfig,
    procfs: ProcFs,
}

impl UnixAttestor {
    /// An attestor with `config` reading processes from `procfs`.
    pub fn new(config: UnixConfig, procfs: ProcFs) -> Self {
        Self { config, procfs }
    }

    /// The configuration in use.
    pub fn config(&self) -> UnixConfig {
        self.config
    }

    /// Attests `pid` and says whether the path selectors had to be skipped.
    ///
    /// # Errors
    /// [`AttestError::ProcessNotFound`] for a process that does not exist; the status-file
    /// errors of [`ProcFs::status`]; with `discover_workload_path`, [`AttestError::Path`]
    /// when the link cannot be read for a reason other than permission,
    /// [`AttestError::Digest`] or [`AttestError::SizeLimit`] from hashing.
    pub fn attest_detailed(&self, pid: u32) -> Result<UnixAttestation, AttestError> {
        let status = self.procfs.status(pid)?;
        let uid = effective(&status.uids)
            .ok_or_else(|| AttestError::Uids { reason: "no UIDs for process".to_owned() })?;
        let gid = effective(&status.gids)
            .ok_or_else(|| AttestError::Gids { reason: "no GIDs for process".to_owned() })?;

        let mut selectors = vec![unix_selector("uid", &uid.to_string())?];
        if let Some(name) = user_name(uid) {
            selectors.push(unix_selector("user", &name)?);
        }
        selectors.push(unix_selector("gid", &gid.to_string())?);
        if let Some(name) = group_name(gid) {
            selectors.push(unix_selector("group", &name)?);
        }
        for sgid in &status.groups {
            selectors.push(unix_selector("supplementary_gid", &sgid.to_string())?);
            if let Some(name) = group_name(*sgid) {
                selectors.push(unix_selector("supplementary_group", &name)?);
            }
        }

        let mut path_skipped = None;
        if self.config.discover_workload_path {
            match self.path_selectors(pid) {
                Ok(found) => selectors.extend(found),
                Err(e @ AttestError::PathPermissionDenied { .. }) => path_skipped = Some(e),
                Err(e) => return Err(e),
            }
        }
        Ok(UnixAttestation { selectors, path_skipped })
    }

    /// `path` and, unless hashing is off, `sha256`.
    fn path_selectors(&self, pid: u32) -> Result<Vec<Selector>, AttestError> {
        let link = self.procfs.path(pid, "exe");
        let target = std::fs::read_link(&link).map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => {
                AttestError::PathPermissionDenied { path: link.clone() }
            }
            _ => AttestError::Path { path: link.clone(), source },
        })?;
        let mut selectors = vec![unix_selector("path", &target.to_string_lossy())?];
        if self.config.workload_size_limit >= 0 {
            let limit = u64::try_from(self.config.workload_size_limit).unwrap_or(0);
            let digest = sha256_of(&link, limit)?;
            selectors.push(unix_selector("sha256", &digest)?);
        }
        Ok(selectors)
    }
}

impl WorkloadAttestor for UnixAttestor {
    fn name(&self) -> &'static str {
        UNIX
    }

    /// Attests `pid`; when the path selectors are skipped for want of permission, logs it at
    /// `warn` (the workload still gets its uid and gid selectors).
    fn attest(&self, pid: u32) -> Result<Vec<Selector>, AttestError> {
        let attestation = self.attest_detailed(pid)?;
        if let Some(reason) = &attestation.path_skipped {
            warn!(pid, error = %reason, "unix attestor left out path and sha256 selectors");
        }
        Ok(attestation.selectors)
    }
}

/// The effective id of a `Uid:`/`Gid:` line: the second value, or the only one.
fn effective(ids: &[u32]) -> Option<u32> {
    ids.get(1).or_else(|| ids.first()).copied()
}

fn unix_selector(kind: &str, value: &str) -> Result<Selector, AttestError> {
    Ok(Selector::new(UNIX, &format!("{kind}:{value}"))?)
}

/// The user name of `uid` through the C library (so NSS sources such as LDAP count), or
/// `None` when there is no entry or the lookup fails, which SPIRE treats the same way.
fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
}

/// The group name of `gid`, as [`user_name`] does for users.
fn group_name(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).ok().flatten().map(|g| g.name)
}

/// The lowercase hex SHA-256 of the file at `path`, refusing files over `limit` bytes
/// (0 = no limit) before reading them.
fn sha256_of(path: &std::path::Path, limit: u64) -> Result<String, AttestError> {
    let digest_err = |source| AttestError::Digest { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(digest_err)?;
    if limit > 0 {
        let size = file.metadata().map_err(digest_err)?.len();
        if size > limit {
            return Err(AttestError::SizeLimit { path: path.to_owned(), size, limit });
        }
    }
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(digest_err)?;
        if n == 0 {
            break;
        }
        ctx.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_id_is_the_second_of_the_line_or_the_only_one() {
        assert_eq!(effective(&[1000, 1100, 1000, 1100]), Some(1100));
        assert_eq!(effective(&[1999]), Some(1999));
        assert_eq!(effective(&[]), None);
    }

    #[test]
    fn config_takes_spire_keys_and_defaults() {
        let on: UnixConfig = toml::from_str("discover_workload_path = true").unwrap();
        assert_eq!(on, UnixConfig { discover_workload_path: true, workload_size_limit: 0 });
        let limit: UnixConfig = toml::from_str("workload_size_limit = -1").unwrap();
        assert_eq!(limit, UnixConfig { discover_workload_path: false, workload_size_limit: -1 });
        assert_eq!(toml::from_str::<UnixConfig>("").unwrap(), UnixConfig::default());
        assert_eq!(
            UnixConfig::default(),
            UnixConfig { discover_workload_path: false, workload_size_limit: 0 }
        );
    }
}
