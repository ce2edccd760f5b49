//! `ward-server`: runs the server (`run`) or administers a running one over its admin socket
//! (`token generate`, `entry create`, `bundle show`, `healthcheck`).
//!
//! Flags follow SPIRE's CLI, including Go-style single-dash long flags (`-spiffeID x`).

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ward_server::config::{Config, Overrides};
use ward_server::{cli, migrate};

#[derive(Parser, Debug)]
#[command(name = "ward-server", version, about = "SPIRE-compatible SPIFFE server")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs the server.
    Run {
        /// Path to the configuration file: ward's TOML, or SPIRE's server configuration (HCL or
        /// JSON).
        #[arg(long = "config")]
        config: Option<PathBuf>,
        /// Expand $VAR and ${VAR} in the configuration file from the environment first.
        #[arg(long = "expandEnv")]
        expand_env: bool,
        /// Trust domain (overrides the file).
        #[arg(long = "trustDomain")]
        trust_domain: Option<String>,
        /// IP address to listen on for agents.
        #[arg(long = "bindAddress")]
        bind_address: Option<IpAddr>,
        /// TCP port to listen on for agents.
        #[arg(long = "serverPort")]
        server_port: Option<u16>,
        /// Path of the admin socket.
        #[arg(long = "socketPath")]
        socket_path: Option<PathBuf>,
        /// Directory for the store and keys.
        #[arg(long = "dataDir")]
        data_dir: Option<PathBuf>,
        /// Log level (error, warn, info, debug, trace).
        #[arg(long = "logLevel")]
        log_level: Option<String>,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Registration entries.
    Entry {
        #[command(subcommand)]
        cmd: EntryCmd,
    },
    /// The trust bundle.
    Bundle {
        #[command(subcommand)]
        cmd: BundleCmd,
    },
    /// Copies registration entries (ids kept), federation relationships and federated bundles
    /// from a running SPIRE server into ward; running it again changes nothing.
    Migrate {
        /// The SPIRE server's admin socket.
        #[arg(long = "from-socket")]
        from_socket: PathBuf,
        /// ward's admin socket.
        #[arg(long = "socketPath", default_value_os_t = cli::default_socket())]
        socket_path: PathBuf,
    },
    /// Checks that the server is up and serving.
    Healthcheck {
        /// Path of the admin socket.
        #[arg(long = "socketPath", default_value_os_t = cli::default_socket())]
        socket_path: PathBuf,
        /// Accepted for compatibility; the check is the same.
        #[arg(long = "shallow")]
        shallow: bool,
        /// Accepted for compatibility.
        #[arg(long = "verbose")]
        verbose: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Generates a join token.
    Generate {
        /// Token lifetime in seconds.
        #[arg(long = "ttl", default_value_t = 600, allow_negative_numbers = true)]
        ttl: i32,
        /// Additional SPIFFE ID to assign the token owner.
        #[arg(long = "spiffeID")]
        spiffe_id: Option<String>,
        /// Path of the admin socket.
        #[arg(long = "socketPath", default_value_os_t = cli::default_socket())]
        socket_path: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum EntryCmd {
    /// Creates a registration entry.
    Create {
        /// Entry id (generated when absent).
        #[arg(long = "entryID")]
        entry_id: Option<String>,
        /// The SPIFFE ID of the entry.
        #[arg(long = "spiffeID")]
        spiffe_id: Option<String>,
        /// The parent SPIFFE ID.
        #[arg(long = "parentID")]
        parent_id: Option<String>,
        /// Makes a node entry (parent is the server).
        #[arg(long = "node")]
        node: bool,
        /// A `type:value` selector; repeatable.
        #[arg(long = "selector")]
        selector: Vec<String>,
        /// X509-SVID TTL in seconds (0 = server default).
        #[arg(long = "x509SVIDTTL", default_value_t = 0, allow_negative_numbers = true)]
        x509_svid_ttl: i32,
        /// JWT-SVID TTL in seconds (0 = server default).
        #[arg(long = "jwtSVIDTTL", default_value_t = 0, allow_negative_numbers = true)]
        jwt_svid_ttl: i32,
        /// Trust domain to federate with; repeatable.
        #[arg(long = "federatesWith")]
        federates_with: Vec<String>,
        /// DNS name; repeatable.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Admin entry.
        #[arg(long = "admin")]
        admin: bool,
        /// Downstream entry.
        #[arg(long = "downstream")]
        downstream: bool,
        /// Expiry, Unix seconds.
        #[arg(long = "entryExpiry", default_value_t = 0)]
        entry_expiry: i64,
        /// SVID goes to SVIDStore plugins.
        #[arg(long = "storeSVID")]
        store_svid: bool,
        /// Hint for workloads.
        #[arg(long = "hint", default_value = "")]
        hint: String,
        /// Path of the admin socket.
        #[arg(long = "socketPath", default_value_os_t = cli::default_socket())]
        socket_path: PathBuf,
    },
    /// Shows registration entries.
    Show {
        /// Show only this entry.
        #[arg(long = "entryID")]
        entry_id: Option<String>,
        /// Only entries with this SPIFFE ID.
        #[arg(long = "spiffeID")]
        spiffe_id: Option<String>,
        /// Only entries with this parent ID.
        #[arg(long = "parentID")]
        parent_id: Option<String>,
        /// Only entries having this `type:value` selector; repeatable.
        #[arg(long = "selector")]
        selector: Vec<String>,
        /// Path of the admin socket.
        #[arg(long = "socketPath", default_value_os_t = cli::default_socket())]
        socket_path: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum BundleCmd {
    /// Prints the server's own bundle.
    Show {
        /// `pem` or `spiffe`.
        #[arg(long = "format", default_value = "pem")]
        format: String,
        /// Path of the admin socket.
        #[arg(long = "socketPath", default_value_os_t = cli::default_socket())]
        socket_path: PathBuf,
    },
}

/// Go's flag package accepts `-name`; clap wants `--name`. Single-dash words longer than one
/// letter become double-dash; values that look like numbers are left alone.
fn normalize_args(args: impl Iterator<Item = String>) -> Vec<String> {
    args.enumerate()
        .map(|(i, a)| {
            let single = a.starts_with('-') && !a.starts_with("--");
            let word = a.chars().nth(1).is_some_and(|c| c.is_ascii_alphabetic()) && a.len() > 2;
            if i > 0 && single && word { format!("-{a}") } else { a }
        })
        .collect()
}

fn main() -> ExitCode {
    let args = Args::parse_from(normalize_args(std::env::args()));
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(args.cmd)) {
        Ok(out) => {
            let _ = std::io::stdout().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<String> {
    match cmd {
        Cmd::Run {
            config,
            expand_env,
            trust_domain,
            bind_address,
            server_port,
            socket_path,
            data_dir,
            log_level,
        } => {
            let overrides = Overrides {
                trust_domain,
                bind_address,
                bind_port: server_port,
                socket_path,
                data_dir,
                log_level,
                expand_env,
            };
            let loaded =
                Config::read(config.as_deref(), &overrides, &|name| std::env::var(name).ok())?;
            ward_server::logging::init(&loaded.config)?;
            for note in &loaded.notes {
                tracing::warn!(format = loaded.format.name(), "{note}");
            }
            ward_server::run::run_until_signal(loaded.config).await?;
            Ok(String::new())
        }
        Cmd::Token { cmd: TokenCmd::Generate { ttl, spiffe_id, socket_path } } => {
            cli::token_generate(&socket_path, ttl, spiffe_id.as_deref()).await
        }
        Cmd::Entry {
            cmd:
                EntryCmd::Create {
                    entry_id,
                    spiffe_id,
                    parent_id,
                    node,
                    selector,
                    x509_svid_ttl,
                    jwt_svid_ttl,
                    federates_with,
                    dns,
                    admin,
                    downstream,
                    entry_expiry,
                    store_svid,
                    hint,
                    socket_path,
                },
        } => {
            let o = cli::EntryCreate {
                entry_id,
                spiffe_id: spiffe_id.unwrap_or_default(),
                parent_id,
                node,
                selectors: selector,
                x509_svid_ttl,
                jwt_svid_ttl,
                federates_with,
                dns_names: dns,
                admin,
                downstream,
                expires_at: entry_expiry,
                store_svid,
                hint,
            };
            cli::entry_create(&socket_path, &o).await
        }
        Cmd::Entry {
            cmd: EntryCmd::Show { entry_id, spiffe_id, parent_id, selector, socket_path },
        } => {
            let o = cli::EntryShow { entry_id, spiffe_id, parent_id, selectors: selector };
            cli::entry_show(&socket_path, &o).await
        }
        Cmd::Bundle { cmd: BundleCmd::Show { format, socket_path } } => {
            cli::bundle_show(&socket_path, &format).await
        }
        Cmd::Migrate { from_socket, socket_path } => {
            let opts = migrate::MigrateOptions { from_socket, to_socket: socket_path };
            let summary = migrate::migrate(&opts).await?;
            let _ = std::io::stdout().write_all(summary.render().as_bytes());
            match summary.failed() {
                0 => Ok(String::new()),
                n => anyhow::bail!("{n} item(s) could not be copied"),
            }
        }
        Cmd::Healthcheck { socket_path, shallow: _, verbose: _ } => {
            cli::healthcheck(&socket_path).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_flags() {
        let argv =
            ["ward-server", "entry", "create", "-spiffeID", "spiffe://x/y", "-node", "--dns", "a"]
                .map(String::from);
        let got = normalize_args(argv.into_iter());
        assert_eq!(
            got,
            [
                "ward-server",
                "entry",
                "create",
                "--spiffeID",
                "spiffe://x/y",
                "--node",
                "--dns",
                "a"
            ]
        );
        let argv = ["ward-server", "token", "generate", "-ttl", "-1"].map(String::from);
        assert_eq!(normalize_args(argv.into_iter())[4], "-1");
    }
}
