//! Shared fixtures for ward's criterion benches.
//!
//! The benches themselves live in `benches/benches/*.rs`, one file per crate, with ids
//! `<crate>/<operation>`. Baselines (raw aws-lc-rs operations) sit next to the operations
//! they bound so results read as ratios.

use std::time::{Duration, SystemTime};

use ward_ca::{JwtSigner, KeyType, PrivateKey, X509Ca, build_csr, new_key_id};
use ward_core::{SpiffeId, TrustDomain};

/// A loaded CA and a workload's CSR, as the server holds them when a CSR arrives.
pub struct CaFixture {
    /// A P-256 self-signed CA for `example.org`, valid for a day.
    pub ca: X509Ca,
    /// A P-256 JWT signer valid as long as the CA.
    pub jwt: JwtSigner,
    /// The workload key the CSR is for.
    pub workload_key: PrivateKey,
    /// A DER CSR signed by `workload_key`.
    pub csr: Vec<u8>,
    /// The registration entry's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The registration entry's DNS names.
    pub dns_names: Vec<String>,
    /// The time the fixture was made.
    pub now: SystemTime,
}

impl CaFixture {
    /// Builds the fixture.
    ///
    /// # Panics
    /// If key generation or CA creation fails (benches have no one to report to).
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let now = SystemTime::now();
        let td = TrustDomain::new("example.org").expect("trust domain");
        let ca_key = PrivateKey::generate(KeyType::EcP256).expect("CA key");
        let ca = X509Ca::self_signed(ca_key, &td, Duration::from_secs(86_400), now).expect("CA");
        let jwt_key = PrivateKey::generate(KeyType::EcP256).expect("JWT key");
        let jwt = JwtSigner::new(jwt_key, new_key_id().expect("kid"), ca.not_after_unix())
            .expect("JWT signer");
        let workload_key = PrivateKey::generate(KeyType::EcP256).expect("workload key");
        let csr = build_csr(&workload_key).expect("CSR");
        let spiffe_id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").expect("id");
        Self {
            ca,
            jwt,
            workload_key,
            csr,
            spiffe_id,
            dns_names: vec!["web.prod.svc.cluster.local".to_owned()],
            now,
        }
    }
}

/// The exit code of a process-driving bench: success, or failure after printing
/// `<bench> bench failed: <error with its causes>` to stderr.
pub fn exit_code<E: std::fmt::Display>(
    bench: &str,
    result: Result<(), E>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{bench} bench failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

impl Default for CaFixture {
    fn default() -> Self {
        Self::new()
    }
}

/// Facts about processes that the process-driving benches read from `/proc`.
pub mod process {
    use std::net::{Ipv4Addr, SocketAddr, TcpListener};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    /// A `ward-server run` child process for trust domain `example.org` on a free port of
    /// 127.0.0.1, rate limits off, logging warnings to `dir/server.log`; killed on drop.
    #[derive(Debug)]
    pub struct WardServer {
        /// The process.
        pub process: Spawned,
        /// Where agents reach it.
        pub addr: SocketAddr,
        /// Its admin socket.
        pub socket: PathBuf,
    }

    impl WardServer {
        /// Writes `dir/server.toml` (data in `dir/data`, admin socket `dir/admin/api.sock`)
        /// and starts `bin run -config dir/server.toml`; does not wait for it to serve.
        ///
        /// # Errors
        /// If the port, the config or the process cannot be had.
        pub fn start(bin: &Path, dir: &Path) -> std::io::Result<Self> {
            // A free port: bind, read, release (the server binds it right after).
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
            let socket = dir.join("admin/api.sock");
            let config = dir.join("server.toml");
            std::fs::write(
                &config,
                format!(
                    "trust_domain = \"example.org\"\nbind_address = \"127.0.0.1\"\n\
                     bind_port = {port}\nsocket_path = \"{}\"\ndata_dir = \"{}\"\n\
                     log_level = \"warn\"\n[ratelimit]\nattestation = false\nsigning = false\n",
                    socket.display(),
                    dir.join("data").display()
                ),
            )?;
            let process = Spawned::start(
                Command::new(bin).arg("run").arg("-config").arg(&config),
                dir.join("server.log"),
            )?;
            Ok(Self { process, addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)), socket })
        }

        /// The admin channel once the server answers `GetBundle` on it, polling every
        /// 100 ms for at most `within`.
        ///
        /// # Errors
        /// The last failure, with the log's tail, when it does not answer in time.
        pub async fn wait_ready(
            &self,
            within: std::time::Duration,
        ) -> anyhow::Result<tonic::transport::Channel> {
            use ward_proto::spire::api::server::bundle::v1 as bundlepb;
            let deadline = std::time::Instant::now() + within;
            let mut last = anyhow::anyhow!("not started");
            while std::time::Instant::now() < deadline {
                match ward_server::cli::admin_channel(&self.socket).await {
                    Ok(ch) => match bundlepb::bundle_client::BundleClient::new(ch.clone())
                        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
                        .await
                    {
                        Ok(_) => return Ok(ch),
                        Err(e) => last = e.into(),
                    },
                    Err(e) => last = e,
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let tail = self.process.tail(20);
            Err(last.context(format!("ward-server did not become ready; log:\n{tail}")))
        }
    }

    /// A child process whose output goes to a log file; killed (SIGKILL) and reaped when
    /// dropped, also when a bench fails half-way.
    #[derive(Debug)]
    pub struct Spawned {
        child: Child,
        log: PathBuf,
    }

    impl Spawned {
        /// Starts `cmd` with stdin closed and stdout and stderr into `log`.
        ///
        /// # Errors
        /// If the log cannot be created or the program cannot be started.
        pub fn start(cmd: &mut Command, log: PathBuf) -> std::io::Result<Self> {
            let out = std::fs::File::create(&log)?;
            let child = cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).spawn()?;
            Ok(Self { child, log })
        }

        /// The process id.
        pub fn id(&self) -> u32 {
            self.child.id()
        }

        /// Its exit status if it has exited, `None` while it runs.
        ///
        /// # Errors
        /// If the status cannot be read.
        pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
            self.child.try_wait()
        }

        /// The last `lines` lines of its log.
        pub fn tail(&self, lines: usize) -> String {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            all.get(all.len().saturating_sub(lines)..).unwrap_or_default().join("\n")
        }
    }

    impl Drop for Spawned {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// CPU seconds (utime + stime) process `pid` has used, from `/proc/<pid>/stat`, with
    /// `ticks_per_sec` from [`clock_ticks`]; `None` if the process is gone or the file is
    /// malformed.
    pub fn cpu_secs(pid: u32, ticks_per_sec: f64) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')')?.1;
        let mut f = rest.split_whitespace().skip(11);
        let utime: u64 = f.next()?.parse().ok()?;
        let stime: u64 = f.next()?.parse().ok()?;
        #[expect(clippy::cast_precision_loss, reason = "tick counts stay far below 2^52")]
        Some((utime + stime) as f64 / ticks_per_sec)
    }

    /// `getconf CLK_TCK`, or 100 (Linux's USER_HZ everywhere) when getconf is missing.
    pub fn clock_ticks() -> f64 {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    }

    /// The 1-minute load average from `/proc/loadavg`.
    pub fn load_average() -> Option<f64> {
        std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
    }

    /// `name` in the profile directory of the running bench binary
    /// (`<target>/release/deps/<bench>` → `<target>/release/<name>`), where
    /// `cargo build --release` with the same `CARGO_TARGET_DIR` puts it.
    pub fn profile_binary(name: &str) -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let profile_dir = exe.parent().and_then(Path::parent)?;
        Some(profile_dir.join(name))
    }
}
