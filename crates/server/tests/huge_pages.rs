//! The server's allocator never asks the kernel for transparent huge pages (mimalloc's
//! `no_thp` feature, `Cargo.toml`): no mapping of a running `ward-server` carries the advice
//! `madvise(MADV_HUGEPAGE)` leaves, the `hg` flag of `VmFlags` in `/proc/<pid>/smaps`
//! (proc(5)). With the advice, the thread that applies writes stopped to zero each fresh
//! 2 MiB page (docs/benchmarks.md, "Transparent huge pages off").

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ward-server");

/// Kills the server when the test ends, also on a failed assertion.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_running_server_has_no_mapping_advised_to_use_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let conf = dir.path().join("server.toml");
    std::fs::write(
        &conf,
        format!(
            "trust_domain = \"example.org\"\nbind_address = \"127.0.0.1\"\nbind_port = 0\n\
             socket_path = \"{}\"\ndata_dir = \"{}\"\nlog_level = \"warn\"\n",
            socket.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut server = Killed(
        Command::new(BIN)
            .args(["run", "-config"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Serving: its store is open and its runtime's threads have allocated.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        assert!(server.0.try_wait().unwrap().is_none(), "the server exited before serving");
        assert!(Instant::now() < deadline, "no admin socket after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", server.0.id())).unwrap();
    let flags: Vec<&str> = smaps.lines().filter(|l| l.starts_with("VmFlags:")).collect();
    assert!(flags.len() > 10, "too few mappings listed: {}", flags.len());
    let advised: Vec<&&str> =
        flags.iter().filter(|l| l.split_whitespace().skip(1).any(|f| f == "hg")).collect();
    assert!(advised.is_empty(), "mappings advised to use huge pages: {advised:?}");
}
