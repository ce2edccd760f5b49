//! A software TPM (swtpm) on a Unix socket, provisioned with tpm2-tools the way a node's TPM
//! is for `tpm_devid`: an RSA endorsement key whose certificate sits in NV index 0x01c00002,
//! and a DevID signing key created under the owner hierarchy's standard storage key.
//!
//! spire-agent (go-tpm) and ward-agent open the socket as their `tpm_device_path`; tpm2-tools
//! reach it through the `swtpm:path=` TCTI. Needs `swtpm` and `tpm2-tools` (Debian packages
//! of those names; `.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::command::run;
use crate::daemon::Daemon;
use crate::wait::{Step, poll_until};

/// How long one tpm2-tools command may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// The NV index of the RSA EK certificate.
pub const EK_CERT_INDEX: &str = "0x1c00002";

/// A running swtpm; dropping it stops the process.
pub struct Swtpm {
    /// The TPM command socket (what `tpm_device_path` names).
    pub socket: PathBuf,
    dir: PathBuf,
    _daemon: Daemon,
}

/// A DevID key made in the TPM, and what the node keeps of it.
pub struct DevidKey {
    /// `TPMT_PUBLIC` (tpm2-tools' `TPM2B_PUBLIC` without its size), what `devid_pub_path`
    /// names.
    pub public_path: PathBuf,
    /// `TPM2B_PRIVATE` contents, what `devid_priv_path` names.
    pub private_path: PathBuf,
    /// The key's `SubjectPublicKeyInfo`, DER, for its certificate.
    pub spki: Vec<u8>,
}

impl Swtpm {
    /// Starts swtpm with its state and socket under `dir` and waits for the socket.
    ///
    /// # Errors
    /// When swtpm cannot start or its socket does not appear within 10 s.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let state = dir.join("state");
        std::fs::create_dir_all(&state)?;
        let socket = dir.join("tpm.sock");
        let mut cmd = Command::new("swtpm");
        cmd.arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}.ctrl", socket.display()))
            .args(["--flags", "not-need-init,startup-clear"]);
        let mut daemon = Daemon::spawn("swtpm", cmd, &dir.join("swtpm.log"))?;
        poll_until("swtpm's socket", Duration::from_secs(10), || {
            daemon.ensure_running()?;
            Ok(if socket.exists() { Step::Done(()) } else { Step::Retry("no socket".into()) })
        })?;
        Ok(Self { socket, dir: dir.to_owned(), _daemon: daemon })
    }

    /// Runs `tpm2_<tool> args…` against this TPM, in its directory; stdout.
    ///
    /// # Errors
    /// When the tool fails.
    pub fn tool(&self, tool: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(format!("tpm2_{tool}"));
        cmd.args(args)
            .current_dir(&self.dir)
            .env("TPM2TOOLS_TCTI", format!("swtpm:path={}", self.socket.display()));
        let out = run(&mut cmd, TOOL_TIMEOUT)?
            .success()
            .with_context(|| format!("tpm2_{tool} {args:?}"))?;
        Ok(out.stdout)
    }

    /// The endorsement key from the default RSA template; its `SubjectPublicKeyInfo`, DER.
    ///
    /// # Errors
    /// When a tool fails.
    pub fn ek_spki(&self) -> anyhow::Result<Vec<u8>> {
        self.tool("createek", &["-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"])?;
        self.tool("readpublic", &["-c", "ek.ctx", "-f", "der", "-o", "ek.spki.der"])?;
        self.tool("flushcontext", &["-t"])?;
        Ok(std::fs::read(self.dir.join("ek.spki.der"))?)
    }

    /// Stores `der` (the EK certificate) in NV index [`EK_CERT_INDEX`], readable with the
    /// index's own empty authorisation as TPM manufacturers provision it.
    ///
    /// # Errors
    /// When a tool fails.
    pub fn store_ek_certificate(&self, der: &[u8]) -> anyhow::Result<()> {
        let file = self.dir.join("ek.crt.der");
        std::fs::write(&file, der)?;
        let size = der.len().to_string();
        // A replaced certificate: the old index goes first (absent the first time).
        let _ = self.tool("nvundefine", &[EK_CERT_INDEX, "-C", "o"]);
        self.tool(
            "nvdefine",
            &[
                EK_CERT_INDEX,
                "-C",
                "o",
                "-s",
                &size,
                "-a",
                "ownerread|ownerwrite|authread|authwrite|no_da",
            ],
        )?;
        self.tool("nvwrite", &[EK_CERT_INDEX, "-C", "o", "-i", "ek.crt.der"])?;
        Ok(())
    }

    /// Creates a DevID signing key named `name` under the owner hierarchy's storage key
    /// (the high-range SRK template of its type, as spire-agent loads it): `rsa` makes an
    /// RSA-2048 key signing RSASSA/SHA-256, otherwise a P-256 key signing ECDSA/SHA-256.
    ///
    /// # Errors
    /// When a tool fails.
    pub fn create_devid(&self, name: &str, rsa: bool) -> anyhow::Result<DevidKey> {
        let (srk_alg, key_alg) = if rsa {
            ("rsa2048:null:aes128cfb", "rsa2048:rsassa-sha256")
        } else {
            ("ecc256:null:aes128cfb", "ecc256:ecdsa-sha256")
        };
        let srk = format!("srk-{name}.ctx");
        self.tool(
            "createprimary",
            &[
                "-C",
                "o",
                "-g",
                "sha256",
                "-G",
                srk_alg,
                "-a",
                "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda",
                "-c",
                &srk,
            ],
        )?;
        let (public, private) = (format!("{name}.tpm2b.pub"), format!("{name}.tpm2b.priv"));
        self.tool(
            "create",
            &[
                "-C",
                &srk,
                "-g",
                "sha256",
                "-G",
                key_alg,
                "-a",
                "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
                "-u",
                &public,
                "-r",
                &private,
            ],
        )?;
        self.tool("flushcontext", &["-t"])?;
        let ctx = format!("{name}.ctx");
        self.tool("load", &["-C", &srk, "-u", &public, "-r", &private, "-c", &ctx])?;
        let spki = format!("{name}.spki.der");
        self.tool("readpublic", &["-c", &ctx, "-f", "der", "-o", &spki])?;
        self.tool("flushcontext", &["-t"])?;

        // go-tpm reads the structures without tpm2-tools' size prefixes.
        let strip = |from: &str, to: &str| -> anyhow::Result<PathBuf> {
            let bytes = std::fs::read(self.dir.join(from))?;
            ensure!(bytes.len() > 2, "{from} is too short");
            let path = self.dir.join(to);
            std::fs::write(&path, &bytes[2..])?;
            Ok(path)
        };
        Ok(DevidKey {
            public_path: strip(&public, &format!("{name}.pub"))?,
            private_path: strip(&private, &format!("{name}.priv"))?,
            spki: std::fs::read(self.dir.join(&spki))?,
        })
    }
}

/// Whether swtpm and tpm2-tools are installed.
pub fn available() -> bool {
    ["swtpm", "tpm2_createek"].iter().all(|tool| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
    })
}
