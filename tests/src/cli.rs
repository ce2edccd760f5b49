//! Driving the admin CLIs (`spire-server …`, `ward-server …`) and `spire-agent api …`.
//!
//! `ward-server` takes SPIRE's command names and flags, so one type drives both server CLIs;
//! which binary it runs is the only difference.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::command::{CommandOutput, run};

/// Deadline for one CLI invocation.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// A server admin CLI bound to one admin socket.
#[derive(Debug, Clone)]
pub struct AdminCli {
    bin: PathBuf,
    socket: PathBuf,
}

impl AdminCli {
    /// Runs `bin` (e.g. `spire-server` or `ward-server`) against the admin socket `socket`.
    pub fn new(bin: &Path, socket: &Path) -> Self {
        Self { bin: bin.to_owned(), socket: socket.to_owned() }
    }

    /// The binary this CLI runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Runs `<bin> <words…> -socketPath <socket> <args…>` and returns its output, whatever
    /// the exit status.
    pub fn raw(&self, words: &[&str], args: &[&str]) -> anyhow::Result<CommandOutput> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(words).arg("-socketPath").arg(&self.socket).args(args);
        run(&mut cmd, CLI_TIMEOUT)
    }

    /// Like [`AdminCli::raw`], failing on a non-zero exit.
    pub fn ok(&self, words: &[&str], args: &[&str]) -> anyhow::Result<CommandOutput> {
        self.raw(words, args)?.success()
    }

    /// `healthcheck`: succeeds when the server reports SERVING.
    pub fn healthcheck(&self) -> anyhow::Result<CommandOutput> {
        self.ok(&["healthcheck"], &[])
    }

    /// `token generate [-ttl N]`: returns the join token from the `Token: <value>` line.
    pub fn token_generate(&self, ttl_secs: Option<u32>) -> anyhow::Result<String> {
        let ttl = ttl_secs.map(|t| t.to_string());
        let args: Vec<&str> = match &ttl {
            Some(t) => vec!["-ttl", t],
            None => vec![],
        };
        let out = self.ok(&["token", "generate"], &args)?;
        parse_token(&out.stdout).with_context(|| out.describe())
    }

    /// `entry create -parentID P -spiffeID S -selector X`; returns the printed entry ID.
    pub fn entry_create(
        &self,
        parent_id: &str,
        spiffe_id: &str,
        selector: &str,
    ) -> anyhow::Result<String> {
        let out = self.ok(
            &["entry", "create"],
            &["-parentID", parent_id, "-spiffeID", spiffe_id, "-selector", selector],
        )?;
        parse_field(&out.stdout, "Entry ID").with_context(|| out.describe())
    }

    /// `bundle show` (PEM): the trust domain's X.509 authorities.
    pub fn bundle_show_pem(&self) -> anyhow::Result<String> {
        let out = self.ok(&["bundle", "show"], &[])?;
        if !out.stdout.contains("-----BEGIN CERTIFICATE-----") {
            bail!("bundle show printed no certificate\n{}", out.describe());
        }
        Ok(out.stdout)
    }

    /// `bundle show -format spiffe`: the trust domain's bundle as a SPIFFE JWKS document.
    pub fn bundle_show_spiffe(&self) -> anyhow::Result<String> {
        Ok(self.ok(&["bundle", "show"], &["-format", "spiffe"])?.stdout)
    }

    /// Runs a command with `-output json` and parses what it prints.
    pub fn json(&self, words: &[&str], args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-output", "json"]);
        let out = self.ok(words, &all)?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("output is not JSON\n{}", out.describe()))
    }
}

/// Extracts the token from `token generate` output (`Token: <value>`; SPIRE also prints a
/// warning line when no `-spiffeID` is given).
pub fn parse_token(stdout: &str) -> anyhow::Result<String> {
    for line in stdout.lines() {
        if let Some(token) = line.strip_prefix("Token: ") {
            let token = token.trim();
            if !token.is_empty() {
                return Ok(token.to_owned());
            }
        }
    }
    bail!("no `Token: <value>` line in token generate output")
}

/// Extracts `<value>` from a `<name>   : <value>` line of `entry create`/`entry show` output.
pub fn parse_field(stdout: &str, name: &str) -> anyhow::Result<String> {
    for line in stdout.lines() {
        if let Some((key, value)) = line.split_once(':')
            && key.trim() == name
        {
            return Ok(value.trim().to_owned());
        }
    }
    bail!("no `{name}` field in output")
}

/// `spire-agent api …` bound to one Workload API socket.
#[derive(Debug, Clone)]
pub struct AgentCli {
    bin: PathBuf,
    socket: PathBuf,
}

impl AgentCli {
    /// Runs the `spire-agent` binary `bin` against the Workload API socket `socket`.
    pub fn new(bin: &Path, socket: &Path) -> Self {
        Self { bin: bin.to_owned(), socket: socket.to_owned() }
    }

    /// `api fetch x509 -write <dir>`: writes `svid.N.pem`, `svid.N.key`, `bundle.N.pem`.
    pub fn fetch_x509(&self, write_dir: &Path) -> anyhow::Result<CommandOutput> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["api", "fetch", "x509", "-socketPath"])
            .arg(&self.socket)
            .arg("-write")
            .arg(write_dir);
        run(&mut cmd, CLI_TIMEOUT)
    }

    /// `api fetch jwt -audience <aud> -output json`.
    pub fn fetch_jwt_json(&self, audience: &str) -> anyhow::Result<CommandOutput> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["api", "fetch", "jwt", "-socketPath"]).arg(&self.socket).args([
            "-audience",
            audience,
            "-output",
            "json",
        ]);
        run(&mut cmd, CLI_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_token_after_a_warning_line() {
        let out = "Token: 57ee517f-c31a-4de6-833e-517bd05fc234\nWarning: Missing SPIFFE ID.\n";
        assert_eq!(parse_token(out).unwrap(), "57ee517f-c31a-4de6-833e-517bd05fc234");
        let missing = "no `Token: <value>` line in token generate output";
        assert_eq!(parse_token("Warning: Missing SPIFFE ID.\n").unwrap_err().to_string(), missing);
        assert_eq!(parse_token("Token: \n").unwrap_err().to_string(), missing);
    }

    #[test]
    fn parses_entry_id_field() {
        let out = "Entry ID         : b58466bb-8ed7\nSPIFFE ID        : spiffe://example.org/w\n";
        assert_eq!(parse_field(out, "Entry ID").unwrap(), "b58466bb-8ed7");
        assert_eq!(parse_field(out, "SPIFFE ID").unwrap(), "spiffe://example.org/w");
        assert_eq!(
            parse_field(out, "Parent ID").unwrap_err().to_string(),
            "no `Parent ID` field in output"
        );
    }
}
