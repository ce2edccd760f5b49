//! Reading the facts workload attestation needs from a Linux proc file system.

use std::io;
use std::path::{Path, PathBuf};

use crate::AttestError;

/// A proc file system mount, `/proc` unless the agent runs in a container that mounts the
/// host's proc elsewhere (SPIRE reads the `HOST_PROC` environment variable for this; ward's
/// agent passes the directory in its configuration, since library crates read no
/// environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

/// The credentials of a process as `/proc/<pid>/status` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// Real, effective, saved and file-system uid, in that order.
    pub uids: Vec<u32>,
    /// Real, effective, saved and file-system gid, in that order.
    pub gids: Vec<u32>,
    /// Supplementary group ids, in the kernel's order.
    pub groups: Vec<u32>,
}

impl ProcFs {
    /// A proc file system mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<pid>/<name>`.
    pub fn path(&self, pid: u32, name: &str) -> PathBuf {
        self.root.join(pid.to_string()).join(name)
    }

    /// `<root>/<pid>`.
    pub fn pid_dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    /// Reads the uids, gids and supplementary groups of `pid` from one read of its status
    /// file, so the three describe the same moment.
    ///
    /// # Errors
    /// [`AttestError::ProcessNotFound`] when the process does not exist, [`AttestError::Uids`],
    /// [`AttestError::Gids`] or [`AttestError::SupplementaryGids`] when a line is unreadable.
    pub fn status(&self, pid: u32) -> Result<ProcStatus, AttestError> {
        let path = self.path(pid, "status");
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => AttestError::ProcessNotFound { pid },
            _ => AttestError::Uids { reason: format!("read {}: {e}", path.display()) },
        })?;
        parse_status(&text)
    }

    /// Reads the start time of `pid` (field 22 of `/proc/<pid>/stat`, in clock ticks after
    /// boot): with the pid it names one process for the life of the system.
    ///
    /// # Errors
    /// [`AttestError::CallerExited`] when the file cannot be read or parsed.
    pub fn start_time(&self, pid: u32) -> Result<u64, AttestError> {
        let path = self.path(pid, "stat");
        let text = std::fs::read_to_string(&path).map_err(|e| AttestError::CallerExited {
            reason: format!("could not read caller stat: {e}"),
        })?;
        parse_start_time(&text)
            .ok_or_else(|| AttestError::CallerExited { reason: "bad stat data".to_owned() })
    }
}

/// Parses the `Uid:`, `Gid:` and `Groups:` lines of a status file.
fn parse_status(text: &str) -> Result<ProcStatus, AttestError> {
    let mut uids = None;
    let mut gids = None;
    let mut groups = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        match key.trim().to_ascii_lowercase().as_str() {
            "uid" => uids = Some(parse_ids(value)),
            "gid" => gids = Some(parse_ids(value)),
            "groups" => {
                groups =
                    parse_ids(value).map_err(|reason| AttestError::SupplementaryGids { reason })?;
            }
            _ => {}
        }
    }
    let uids = uids
        .ok_or_else(|| "no UIDs for process".to_owned())
        .and_then(|r| r)
        .map_err(|reason| AttestError::Uids { reason })?;
    let gids = gids
        .ok_or_else(|| "no GIDs for process".to_owned())
        .and_then(|r| r)
        .map_err(|reason| AttestError::Gids { reason })?;
    Ok(ProcStatus { uids, gids, groups })
}

/// Parses a whitespace-separated list of ids.
fn parse_ids(value: &str) -> Result<Vec<u32>, String> {
    value
        .split_whitespace()
        .map(|v| v.parse::<u32>().map_err(|_| format!("{v:?} is not an id")))
        .collect()
}

/// Field 22 of a stat line. The command name (field 2) is in parentheses and may hold spaces
/// and parentheses itself, so the fields after it are counted from the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = stat.get(stat.rfind(')')? + 1..)?;
    // After the name come field 3 (state) onwards; the start time is field 22.
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_effective_ids_and_groups_from_a_status_file() {
        let text = "Name:\tsleep\nUid:\t1000\t1100\t1000\t1100\nGid:\t2000\t2100\t2000\t2100\n\
                    Groups:\t4 24 27 \n";
        let status = parse_status(text).unwrap();
        assert_eq!(status.uids, vec![1000, 1100, 1000, 1100]);
        assert_eq!(status.gids, vec![2000, 2100, 2000, 2100]);
        assert_eq!(status.groups, vec![4, 24, 27]);
    }

    #[test]
    fn a_status_file_without_uid_or_gid_is_refused_with_spire_texts() {
        let no_uid = parse_status("Gid:\t1\t1\t1\t1\n").unwrap_err();
        assert_eq!(no_uid.to_string(), "UIDs lookup: no UIDs for process");
        let no_gid = parse_status("Uid:\t1\t1\t1\t1\n").unwrap_err();
        assert_eq!(no_gid.to_string(), "GIDs lookup: no GIDs for process");
        let bad_groups = parse_status("Uid:\t1\nGid:\t1\nGroups:\tx\n").unwrap_err();
        assert_eq!(bad_groups.to_string(), "supplementary GIDs lookup: \"x\" is not an id");
    }

    #[test]
    fn start_time_is_found_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 \
                    1000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("42 (cut) S 1 2"), None);
        assert_eq!(parse_start_time("no parentheses"), None);
    }
}
