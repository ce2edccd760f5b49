//! `ward-server`: runs the server (`run`), copies state from a SPIRE server (`migrate`), or
//! administers a running server over its admin socket with every command `spire-server` has
//! for that (`entry`, `agent`, `bundle`, `federation`, `token`, `x509`, `jwt`,
//! `localauthority`, `upstreamauthority`, `logger`, `healthcheck`; see [`ward_server::cli`]).
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
#[command(args_override_self = true)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs the server.
    Run(RunFlags),
    /// Reads the configuration as `run` would (the same flags) and says whether the server
    /// could start with it, without starting: SPIRE's `spire-server validate`.
    Validate(RunFlags),
    /// Starts a one-node server and a ward-agent on embedded defaults, registers the current
    /// user and prints the SVID it got and the Workload API socket. NOT for production.
    Dev {
        /// Keep state in this directory (default: a throw-away directory, deleted at exit).
        #[arg(long = "dataDir")]
        data_dir: Option<PathBuf>,
        /// TCP port on 127.0.0.1 for agents (default 8081).
        #[arg(long = "serverPort")]
        server_port: Option<u16>,
        /// The ward-agent binary (default: $WARD_AGENT_BIN, beside ward-server, or on PATH).
        #[arg(long = "agentBin")]
        agent_bin: Option<PathBuf>,
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
    #[command(flatten)]
    Admin(cli::AdminCmd),
}

/// The flags of `run` and `validate`.
#[derive(clap::Args, Debug)]
struct RunFlags {
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
    #[command(flatten)]
    cluster: ClusterFlags,
}

/// The `[cluster]` settings as flags of `run` (each overrides its key; see docs/config.md).
#[derive(clap::Args, Debug, Default)]
struct ClusterFlags {
    /// This replica's node id (1 and up), or `ordinal` to take it from a StatefulSet pod name.
    #[arg(long = "nodeId")]
    node_id: Option<String>,
    /// host:port the peer listener binds.
    #[arg(long = "peerAddress")]
    peer_address: Option<std::net::SocketAddr>,
    /// host:port the other replicas reach this one at.
    #[arg(long = "advertiseAddress")]
    advertise_address: Option<String>,
    /// Start a new cluster when the data directory holds none yet.
    #[arg(long = "bootstrap")]
    bootstrap: bool,
    /// A member's peer address to join the cluster through.
    #[arg(long = "joinAddress")]
    join_address: Option<String>,
    /// File holding the join credential `ward-server cluster add` printed.
    #[arg(long = "joinCredentialFile")]
    join_credential_file: Option<PathBuf>,
    /// Ticks without a leader before a follower campaigns.
    #[arg(long = "electionTick")]
    election_tick: Option<usize>,
    /// Ticks between a leader's heartbeats.
    #[arg(long = "heartbeatTick")]
    heartbeat_tick: Option<usize>,
    /// Time between raft ticks (e.g. 100ms).
    #[arg(long = "tickInterval")]
    tick_interval: Option<String>,
    /// Log bytes after which the log is compacted behind a snapshot.
    #[arg(long = "snapshotThreshold")]
    snapshot_threshold: Option<u64>,
    /// The StatefulSet's headless service name (with `-nodeId ordinal`).
    #[arg(long = "peerService")]
    peer_service: Option<String>,
    /// Longest an operator's read waits for the leader's confirmation (e.g. 3s).
    #[arg(long = "readTimeout")]
    read_timeout: Option<String>,
    /// Least time between two syncs of the raft log while writes keep arriving (e.g. 3ms).
    #[arg(long = "syncGap")]
    sync_gap: Option<String>,
}

impl ClusterFlags {
    fn into_overrides(self) -> ward_server::config::ClusterOverrides {
        use ward_server::config::NodeIdSetting;
        ward_server::config::ClusterOverrides {
            node_id: self.node_id.map(|t| match t.parse::<u64>() {
                Ok(n) => NodeIdSetting::Number(n),
                Err(_) => NodeIdSetting::Word(t),
            }),
            peer_address: self.peer_address,
            advertise_address: self.advertise_address,
            bootstrap: self.bootstrap.then_some(true),
            join_address: self.join_address,
            join_credential_file: self.join_credential_file,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            tick_interval: self.tick_interval,
            snapshot_threshold: self.snapshot_threshold,
            peer_service: self.peer_service,
            read_timeout: self.read_timeout,
            sync_gap: self.sync_gap,
        }
    }
}

/// Rewrites Go-style arguments for clap, parsing them the way Go's `flag` package does: a flag
/// is `-name` or `--name` (optionally `=value`), and a flag that takes a value consumes the
/// next argument whatever it looks like (`-dns -lead.example.org`, `-ttl -1m`).
///
/// # Errors
/// Go's text for a flag the command does not have: `flag provided but not defined: -x`.
fn normalize_args(cmd: &clap::Command, args: Vec<String>) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    out.extend(args.next());
    let mut current = cmd;
    let mut in_flags = false;
    let mut value_next = false;
    // The format a first `-output` set: Go's flag refuses a second, different spelling.
    let mut output: Option<&'static str> = None;
    for a in args {
        if value_next && out.last().is_some_and(|l| l == "--output") {
            check_output_again(&mut output, &a)?;
        }
        if value_next {
            // `--name=value` keeps clap from reading a value such as `-1m` as a flag.
            value_next = false;
            if let Some(last) = out.last_mut() {
                last.push('=');
                last.push_str(&a);
            }
            continue;
        }
        if !in_flags && let Some(sub) = current.find_subcommand(&a) {
            current = sub;
            out.push(a);
            continue;
        }
        let flag = a.strip_prefix("--").or_else(|| a.strip_prefix('-'));
        match flag {
            Some(body) if !body.is_empty() && !body.starts_with('-') => {
                in_flags = true;
                let (name, has_value) = match body.split_once('=') {
                    Some((name, _)) => (name, true),
                    None => (body, false),
                };
                if matches!(name, "h" | "help") {
                    out.push("--help".into());
                    continue;
                }
                if name == "version" && std::ptr::eq(current, cmd) {
                    out.push("--version".into());
                    continue;
                }
                let Some(arg) = current.get_arguments().find(|x| x.get_long() == Some(name)) else {
                    return Err(format!("flag provided but not defined: -{name}"));
                };
                if let Some(("output", value)) = body.split_once('=') {
                    check_output_again(&mut output, value)?;
                }
                out.push(format!("--{body}"));
                value_next = !has_value && arg.get_action().takes_values();
            }
            // Go's flag parsing ends at `--` or at the first argument that is not a flag; the
            // command ignores what follows.
            _ if a == "--" || current.get_subcommands().next().is_none() => break,
            _ => out.push(a),
        }
    }
    Ok(out)
}

/// Records an `-output` value; a second one must be spelled as the canonical name of the
/// first (`json` or `pretty`), as SPIRE's output flag requires.
///
/// # Errors
/// `invalid value "<v>" for flag -output: the output format has already been set to "<f>"`.
fn check_output_again(first: &mut Option<&'static str>, value: &str) -> Result<(), String> {
    match *first {
        Some(name) if name != value => Err(format!(
            "invalid value {} for flag -output: the output format has already been set to {}",
            cli::go_quote(value),
            cli::go_quote(name)
        )),
        Some(_) => Ok(()),
        None => {
            *first = match cli::printer::parse_format(value) {
                Ok(cli::Format::Json) => Some("json"),
                Ok(cli::Format::Pretty) => Some("pretty"),
                // The bad value is reported by the parser itself.
                Err(_) => None,
            };
            Ok(())
        }
    }
}

/// A clap error in the words Go's `flag` package uses, where they differ.
fn flag_error_text(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() == ErrorKind::MissingRequiredArgument {
        // clap names them `--name <NAME>`; the documentation and every other message spell
        // a flag as Go does, `-name`.
        let Some(ContextValue::Strings(args)) = e.get(ContextKind::InvalidArg) else {
            return None;
        };
        let flags: Vec<String> = args
            .iter()
            .map(|a| {
                format!("-{}", a.trim_start_matches('-').split([' ', '=']).next().unwrap_or(""))
            })
            .collect();
        return Some(format!("Error: missing required flag: {}", flags.join(", ")));
    }
    if !matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let arg = text(ContextKind::InvalidArg)?;
    let value = text(ContextKind::InvalidValue)?;
    let name = arg.trim_start_matches('-').split([' ', '=']).next().unwrap_or_default().to_owned();
    let reason = match (name.as_str(), std::error::Error::source(e)) {
        ("output", Some(source)) => source.to_string(),
        _ => "parse error".to_owned(),
    };
    Some(format!("invalid value {} for flag -{name}: {reason}", cli::go_quote(&value)))
}

/// mimalloc instead of the C library's allocator: a server holds millions of small
/// allocations (entries, index sets); with glibc, loading a 1M-entry store spent about a
/// third of its samples in `malloc`/`free` and freeing it four times longer (measured with
/// the `store/open_1m` bench, `cargo bench -p ward-benches --bench store -- open_1m`).
/// Built not to ask for transparent huge pages (the `no_thp` feature, see `Cargo.toml`): the
/// apply thread stopped to zero each fresh 2 MiB page as the store grew, which set the p99 of
/// paced writes (docs/benchmarks.md, "Transparent huge pages off").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let command = <Args as clap::CommandFactory>::command();
    let argv = match normalize_args(&command, std::env::args().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let args = match <Args as clap::FromArgMatches>::from_arg_matches(&match command
        .try_get_matches_from(argv)
    {
        Ok(m) => m,
        Err(e) => return flag_failure(&e),
    }) {
        Ok(args) => args,
        Err(e) => return flag_failure(&e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(dispatch(args.cmd));
    // Tasks still running (after a store failure the server does not wait for them) are
    // cancelled; a blocking call that does not return in time is left behind.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

/// Prints a flag error; help and version are not failures, every other flag error exits 1, as
/// SPIRE's CLI does.
fn flag_failure(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match flag_error_text(e) {
        Some(text) => eprintln!("{text}"),
        None => {
            let _ = e.print();
        }
    }
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

async fn dispatch(cmd: Cmd) -> ExitCode {
    match cmd {
        Cmd::Validate(flags) => validate(flags),
        Cmd::Run(flags) => {
            let (config, overrides) = flags.into_overrides();
            let result = run(config, overrides).await;
            match ward_server::run::exit_code(&result) {
                // Already logged; exit at once so a supervisor restarts the server.
                ward_server::run::EXIT_STORE_FAILED => {
                    ExitCode::from(ward_server::run::EXIT_STORE_FAILED)
                }
                _ => finish(result),
            }
        }
        Cmd::Dev { data_dir, server_port, agent_bin } => {
            let opts = ward_server::dev::DevOptions { dir: data_dir, server_port, agent_bin };
            finish(ward_server::dev::run(opts).await)
        }
        Cmd::Migrate { from_socket, socket_path } => {
            let opts = migrate::MigrateOptions { from_socket, to_socket: socket_path };
            finish(run_migrate(opts).await)
        }
        Cmd::Admin(cmd) => {
            let out = cli::run(cmd).await;
            let _ = std::io::stdout().write_all(out.stdout.as_bytes());
            let _ = std::io::stderr().write_all(out.stderr.as_bytes());
            ExitCode::from(out.code)
        }
    }
}

impl RunFlags {
    /// The configuration file and what the flags override in it.
    fn into_overrides(self) -> (Option<PathBuf>, Overrides) {
        let overrides = Overrides {
            trust_domain: self.trust_domain,
            bind_address: self.bind_address,
            bind_port: self.server_port,
            socket_path: self.socket_path,
            data_dir: self.data_dir,
            log_level: self.log_level,
            expand_env: self.expand_env,
            cluster: self.cluster.into_overrides(),
        };
        (self.config, overrides)
    }
}

/// `validate`: SPIRE's texts with ward's name; exit code 0 when valid, 1 when not.
fn validate(flags: RunFlags) -> ExitCode {
    let (config, overrides) = flags.into_overrides();
    match Config::read(config.as_deref(), &overrides, &|name| std::env::var(name).ok()) {
        Ok(loaded) => {
            for note in &loaded.notes {
                eprintln!("note: {note}");
            }
            println!("ward-server configuration file is valid.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ward-server configuration file is invalid: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    let loaded = Config::read(config.as_deref(), &overrides, &|name| std::env::var(name).ok())?;
    ward_server::logging::init(&loaded.config)?;
    for note in &loaded.notes {
        tracing::warn!(format = loaded.format.name(), "{note}");
    }
    ward_server::run::run_until_signal(loaded.config).await
}

async fn run_migrate(opts: migrate::MigrateOptions) -> anyhow::Result<()> {
    let summary = migrate::migrate(&opts).await?;
    let _ = std::io::stdout().write_all(summary.render().as_bytes());
    match summary.failed() {
        0 => Ok(()),
        n => anyhow::bail!("{n} item(s) could not be copied"),
    }
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn normalize(argv: &[&str]) -> Result<Vec<String>, String> {
        normalize_args(&Args::command(), argv.iter().map(|a| (*a).to_owned()).collect())
    }

    fn parse(argv: &[&str]) -> Result<Args, String> {
        let argv = normalize(argv)?;
        Args::try_parse_from(argv).map_err(|e| flag_error_text(&e).unwrap_or(e.to_string()))
    }

    #[test]
    fn go_style_flags() {
        let got = normalize(&[
            "ward-server",
            "entry",
            "create",
            "-spiffeID",
            "spiffe://x/y",
            "-node",
            "--dns",
            "a",
        ])
        .unwrap();
        assert_eq!(
            got,
            ["ward-server", "entry", "create", "--spiffeID=spiffe://x/y", "--node", "--dns=a"]
        );
        let got = normalize(&["ward-server", "token", "generate", "-ttl", "-1"]).unwrap();
        assert_eq!(got[3], "--ttl=-1");
        let got = normalize(&["ward-server", "entry", "show", "-entryID=x"]).unwrap();
        assert_eq!(got[3], "--entryID=x");
    }

    #[test]
    fn a_value_that_looks_like_a_flag_is_a_value() {
        let got =
            normalize(&["ward-server", "entry", "create", "-dns", "-lead.example.org"]).unwrap();
        assert_eq!(got[3], "--dns=-lead.example.org");
    }

    #[test]
    fn flags_end_at_the_first_argument_that_is_not_one() {
        let got = normalize(&["w", "entry", "show", "-entryID", "e", "extra", "-bogus"]).unwrap();
        assert_eq!(got, ["w", "entry", "show", "--entryID=e"]);
        let got = normalize(&["w", "entry", "show", "--", "-bogus"]).unwrap();
        assert_eq!(got, ["w", "entry", "show"]);
        // Before the command is complete, an unknown word is still clap's to report.
        assert_eq!(normalize(&["w", "entri", "show"]).unwrap(), ["w", "entri", "show"]);
    }

    #[test]
    fn help_and_version_pass_through() {
        assert_eq!(normalize(&["ward-server", "-version"]).unwrap()[1], "--version");
        assert_eq!(normalize(&["ward-server", "entry", "show", "-h"]).unwrap()[3], "--help");
        assert_eq!(
            normalize(&["ward-server", "entry", "show", "-version"]).unwrap_err(),
            "flag provided but not defined: -version"
        );
    }

    #[test]
    fn output_set_twice_must_name_the_same_format() {
        assert!(normalize(&["w", "bundle", "count", "-output", "json", "-output", "json"]).is_ok());
        assert_eq!(
            normalize(&["w", "bundle", "count", "-output", "JSON", "-output=JSON"]).unwrap_err(),
            "invalid value \"JSON\" for flag -output: the output format has already been set to \
             \"json\""
        );
        assert_eq!(
            normalize(&["w", "bundle", "count", "-output", "json", "-output", "pretty"])
                .unwrap_err(),
            "invalid value \"pretty\" for flag -output: the output format has already been set \
             to \"json\""
        );
    }

    #[test]
    fn empty_socket_path_is_accepted() {
        let Ok(Args {
            cmd: Cmd::Admin(cli::AdminCmd::Entry { cmd: cli::entry::EntryCmd::Count(c) }),
        }) = parse(&["ward-server", "entry", "count", "-socketPath", ""])
        else {
            panic!("entry count did not parse");
        };
        assert_eq!(c.common.socket_path, std::path::PathBuf::new());
    }

    #[test]
    fn unknown_flags_read_as_go_reports_them() {
        assert_eq!(
            normalize(&["ward-server", "entry", "show", "-nope"]).unwrap_err(),
            "flag provided but not defined: -nope"
        );
    }

    #[test]
    fn admin_flags_take_spire_defaults() {
        let Ok(Args {
            cmd: Cmd::Admin(cli::AdminCmd::Entry { cmd: cli::entry::EntryCmd::Show(s) }),
        }) = parse(&["ward-server", "entry", "show", "-output", "json"])
        else {
            panic!("entry show did not parse");
        };
        assert_eq!(s.common.output, cli::Format::Json);
        assert_eq!(s.common.socket_path, cli::default_socket());
        assert_eq!(s.match_selectors_on, "superset");
        assert!(!s.downstream);
    }

    #[test]
    fn repeated_flags_keep_the_last_value_as_go_does() {
        let Ok(Args {
            cmd: Cmd::Admin(cli::AdminCmd::Agent { cmd: cli::agent::AgentCmd::Show(a) }),
        }) = parse(&["ward-server", "agent", "show", "-spiffeID", "a", "-spiffeID", "b"])
        else {
            panic!("agent show did not parse");
        };
        assert_eq!(a.spiffe_id, "b");
    }

    #[test]
    fn bad_values_read_as_go_reports_them() {
        assert_eq!(
            parse(&["ward-server", "bundle", "count", "-output", "yaml"]).err().unwrap(),
            "invalid value \"yaml\" for flag -output: bad formatter flag: unknown format option: \"yaml\""
        );
        assert_eq!(
            parse(&["ward-server", "token", "generate", "-ttl", "ten"]).err().unwrap(),
            "invalid value \"ten\" for flag -ttl: parse error"
        );
        assert_eq!(
            parse(&["ward-server", "x509", "mint", "-ttl", "soon"]).err().unwrap(),
            "invalid value \"soon\" for flag -ttl: parse error"
        );
    }

    #[test]
    fn cluster_flags_override_the_table() {
        let Ok(Args { cmd: Cmd::Run(RunFlags { cluster, .. }) }) = parse(&[
            "ward-server",
            "run",
            "-nodeId",
            "3",
            "-peerAddress",
            "127.0.0.3:8082",
            "-bootstrap",
            "-tickInterval",
            "50ms",
        ]) else {
            panic!("run did not parse");
        };
        let o = cluster.into_overrides();
        assert_eq!(o.node_id, Some(ward_server::config::NodeIdSetting::Number(3)));
        assert_eq!(o.peer_address, Some("127.0.0.3:8082".parse().unwrap()));
        assert_eq!(o.bootstrap, Some(true));
        assert_eq!(o.tick_interval.as_deref(), Some("50ms"));
        assert_eq!(o.join_address, None);
    }

    #[test]
    fn missing_required_flags_are_named_as_documented() {
        assert_eq!(
            parse(&["ward-server", "migrate"]).err().unwrap(),
            "Error: missing required flag: -from-socket"
        );
    }

    #[test]
    fn cluster_commands_parse_without_their_required_values() {
        // The command itself says what is missing (`Error: a node id is required ...`).
        for words in
            [&["cluster", "remove"][..], &["cluster", "transfer-leader"], &["cluster", "add"]]
        {
            let argv: Vec<&str> =
                std::iter::once("ward-server").chain(words.iter().copied()).collect();
            assert!(parse(&argv).is_ok(), "{words:?}");
        }
    }

    #[test]
    fn negative_durations_are_values() {
        let Ok(Args { cmd: Cmd::Admin(cli::AdminCmd::X509 { cmd: cli::svid::X509Cmd::Mint(m) }) }) =
            parse(&["ward-server", "x509", "mint", "-spiffeID", "spiffe://a/b", "-ttl", "-1m"])
        else {
            panic!("x509 mint did not parse");
        };
        assert_eq!(m.ttl, -60_000_000_000);
    }
}
