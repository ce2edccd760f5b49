//! A slow disk for one process: a block-I/O cgroup per replica whose write operations per
//! second on the disk holding its data directory can be capped and uncapped while it runs.
//!
//! The cap applies to the writes the process itself submits, which includes the data an
//! `fsync` forces out, so a capped replica's flushes really wait (10 `write`+`fsync` pairs of
//! 4 KiB took 0.08 s uncapped and 6.7 s at 5 writes/s on this machine). cgroup v1's `blkio`
//! controller (`blkio.throttle.write_iops_device`) is used when mounted, else cgroup v2's
//! `io.max` (`wiops=`). Needs root. `Drop` moves the processes back and removes the groups.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Which cgroup interface caps the writes.
#[derive(Debug, Clone, Copy)]
enum Flavor {
    V1,
    V2,
}

/// One cgroup per replica, all capping writes to the same block device.
#[derive(Debug)]
pub struct SlowDisk {
    flavor: Flavor,
    root: PathBuf,
    groups: Vec<PathBuf>,
    device: String,
}

/// `major:minor` of the whole disk that holds `path` (a partition resolves to its disk).
fn disk_of(path: &Path) -> anyhow::Result<String> {
    let dev = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        bail!(
            "{} is not on a block device ({major}:{minor}); a slow disk needs one",
            path.display()
        );
    }
    if sys.join("partition").exists() {
        let parent = std::fs::read_to_string(sys.join("../dev"))
            .with_context(|| format!("reading the disk of partition {major}:{minor}"))?;
        return Ok(parent.trim().to_owned());
    }
    Ok(format!("{major}:{minor}"))
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

impl SlowDisk {
    /// Creates `members` groups named `<prefix><pid>-<k>-r<n>` (`k` counts the groups made by
    /// this process) capping writes to the disk that
    /// holds `data`.
    ///
    /// # Errors
    /// When `data` is not on a block device or no usable cgroup controller is mounted.
    pub fn new(prefix: &str, members: u64, data: &Path) -> anyhow::Result<Self> {
        let device = disk_of(data)?;
        let v1 = PathBuf::from("/sys/fs/cgroup/blkio");
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let (flavor, root) = if v1.join("blkio.throttle.write_iops_device").exists() {
            (Flavor::V1, v1)
        } else if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "io"))
        {
            // Children can use `io` only when the root delegates it.
            write(&v2.join("cgroup.subtree_control"), "+io")?;
            (Flavor::V2, v2)
        } else {
            bail!("no cgroup blkio (v1) or io (v2) controller is mounted");
        };
        let mut disk = Self { flavor, root, groups: Vec::new(), device };
        let tag = format!("{prefix}{}-{}", std::process::id(), crate::next_tag());
        for n in 1..=members {
            let group = disk.root.join(format!("{tag}-r{n}"));
            std::fs::create_dir(&group)
                .with_context(|| format!("creating cgroup {}", group.display()))?;
            disk.groups.push(group);
        }
        Ok(disk)
    }

    fn group(&self, n: u64) -> anyhow::Result<&Path> {
        usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| self.groups.get(i))
            .map(PathBuf::as_path)
            .with_context(|| format!("no cgroup for replica {n}"))
    }

    /// Moves process `pid` (all its threads) into replica `n`'s group.
    ///
    /// # Errors
    /// When the kernel refuses.
    pub fn adopt(&self, n: u64, pid: u32) -> anyhow::Result<()> {
        write(&self.group(n)?.join("cgroup.procs"), &pid.to_string())
    }

    /// Caps replica `n`'s writes to the disk at `iops` per second (`0` removes the cap).
    ///
    /// # Errors
    /// When the kernel refuses the setting.
    pub fn cap(&self, n: u64, iops: u32) -> anyhow::Result<()> {
        let group = self.group(n)?;
        match self.flavor {
            Flavor::V1 => write(
                &group.join("blkio.throttle.write_iops_device"),
                &format!("{} {iops}", self.device),
            ),
            Flavor::V2 => {
                let limit = if iops == 0 { "max".to_owned() } else { iops.to_string() };
                write(&group.join("io.max"), &format!("{} wiops={limit}", self.device))
            }
        }
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        for group in &self.groups {
            // Any process still inside goes back to the root group; then the group can go.
            if let Ok(procs) = std::fs::read_to_string(group.join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(group);
        }
    }
}
