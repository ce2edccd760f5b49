//! The admin CLI: every `spire-server` subcommand that talks to a running server, with SPIRE's
//! flag names, defaults, human output, `-output json` output, error texts and exit codes, so
//! that `ward-server` can stand in for `spire-server` in scripts.
//!
//! Each command group has its own module (`agent`, `bundle`, `entry`, `federation`, `svid`,
//! `authority`, `logger`, `token`); [`printer`] holds what they share about printing. A command
//! runs against the admin Unix socket (plaintext gRPC, no credentials) and fills an
//! [`Output`]: what goes to stdout, what goes to stderr, and the exit code (0, or 1 with
//! `Error: <reason>` on stderr, as SPIRE's CLI does).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub mod agent;
pub mod authority;
pub mod bundle;
pub mod cluster;
pub mod entry;
pub mod federation;
pub mod logger;
pub mod printer;
pub mod svid;
pub mod token;
mod watched;

pub use printer::Format;

/// What a command printed and how it ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    /// Text for stdout.
    pub stdout: String,
    /// Text for stderr (including the closing `Error: ...` line of a failure).
    pub stderr: String,
    /// Process exit code: 0 on success, 1 on any failure (SPIRE's codes).
    pub code: u8,
}

/// The error a command ends with; printed as `Error: <text>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// A command's result before it is turned into an [`Output`].
pub type CliResult = Result<(), CliError>;

/// Builds a [`CliError`] from format arguments.
#[macro_export]
macro_rules! cli_err {
    ($($arg:tt)*) => { $crate::cli::CliError(format!($($arg)*)) };
}

/// Where a running command writes, and how it prints responses.
#[derive(Debug)]
pub struct Ctx {
    /// Pretty (SPIRE's human text) or JSON.
    pub format: Format,
    /// Accumulated stdout.
    pub out: String,
    /// Accumulated stderr.
    pub err: String,
}

impl Ctx {
    /// A context printing in `format`.
    pub fn new(format: Format) -> Self {
        Self { format, out: String::new(), err: String::new() }
    }

    /// Appends to stdout.
    pub fn print(&mut self, s: &str) {
        self.out.push_str(s);
    }

    /// Appends to stderr.
    pub fn eprint(&mut self, s: &str) {
        self.err.push_str(s);
    }

    /// Prints `msg` as protobuf JSON when the format is JSON; otherwise runs `pretty`.
    ///
    /// # Errors
    /// What `pretty` returns, or a JSON encoding failure.
    pub fn print_proto<T: serde::Serialize>(
        &mut self,
        msg: &T,
        pretty: impl FnOnce(&mut Self, &T) -> CliResult,
    ) -> CliResult {
        match self.format {
            Format::Json => {
                let json = printer::proto_json(msg).map_err(|e| cli_err!("{e}"))?;
                self.print(&json);
                Ok(())
            }
            Format::Pretty => pretty(self, msg),
        }
    }

    /// Ends the command: `Error: <e>` on stderr and exit code 1 for a failure.
    pub fn finish(self, result: CliResult) -> Output {
        let Self { out, mut err, .. } = self;
        match result {
            Ok(()) => Output { stdout: out, stderr: err, code: 0 },
            Err(e) => {
                err.push_str(&format!("Error: {e}\n"));
                Output { stdout: out, stderr: err, code: 1 }
            }
        }
    }
}

/// Flags every server-talking command has: `-socketPath` and `-output`.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Path to the server's admin API socket (empty: the default).
    #[arg(long = "socketPath", default_value = crate::config::DEFAULT_SOCKET_PATH, value_parser = any_path)]
    pub socket_path: PathBuf,
    /// Desired output format (pretty, json); default: pretty.
    #[arg(long = "output", default_value = "pretty", value_parser = printer::parse_format)]
    pub output: Format,
}

/// Any text as a path, the empty one included (`-socketPath ""` means the default).
///
/// # Errors
/// Never; the signature is clap's.
pub fn any_path(s: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

/// The largest answer the CLI decodes from the admin socket (64 MiB). The server decodes
/// requests up to gRPC's usual 4 MiB, and a batch answer (`entry create -data` with tens
/// of thousands of entries) repeats every entry it was sent, with ids and revisions: with
/// the usual 4 MiB on answers too, the write was applied and the command still failed.
pub const ANSWER_LIMIT: usize = 64 << 20;

/// A connection to the admin socket, made on first use as SPIRE's CLI does, remembering why
/// a connection attempt or the connection failed so that the error reads like SPIRE's.
#[derive(Debug, Clone)]
pub struct Admin {
    channel: Channel,
    failure: watched::FailureSlot,
}

impl Admin {
    /// A lazily connected client of the admin socket at `socket`.
    ///
    /// # Errors
    /// Never in practice (the endpoint URI is fixed); kept for the transport's signature.
    pub fn new(socket: &Path) -> Result<Self, CliError> {
        // An empty -socketPath means the default, as in SPIRE.
        let path = if socket.as_os_str().is_empty() { default_socket() } else { socket.to_owned() };
        let failure: watched::FailureSlot = Arc::default();
        let slot = failure.clone();
        // The URI is required by the API but unused: every connection goes to the socket.
        let endpoint = Endpoint::try_from("http://localhost").map_err(|e| cli_err!("{e}"))?;
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            let slot = slot.clone();
            async move {
                match tokio::net::UnixStream::connect(&path).await {
                    Ok(stream) => {
                        Ok(TokioIo::new(watched::WatchedStream::new(stream, &path, slot)))
                    }
                    Err(e) => {
                        // Go's client dials `unix:<path>` as a URL, so an absolute path
                        // shows with two more slashes.
                        let shown = if path.is_absolute() {
                            format!("//{}", path.display())
                        } else {
                            path.display().to_string()
                        };
                        let text = format!(
                            "transport: Error while dialing: dial unix {shown}: connect: {}",
                            os_error_text(&e)
                        );
                        watched::note(&slot, text);
                        Err(e)
                    }
                }
            }
        }));
        Ok(Self { channel, failure })
    }

    /// The channel, for generated clients.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `status` as Go's gRPC prints it: `rpc error: code = <Code> desc = <message>`. A call
    /// that failed because the socket could not be dialled, or the connection ended or
    /// broke, is `Unavailable` with the transport's reason, as in Go (tonic reports the
    /// latter as `Unknown` or `Canceled`).
    pub fn status(&self, status: &tonic::Status) -> String {
        let failure = self.failure.lock().ok().and_then(|s| s.clone());
        let transport = matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        );
        match failure {
            Some(text) if transport => format!(
                "rpc error: code = Unavailable desc = connection error: desc = {}",
                go_quote(&text)
            ),
            _ => status_text(status),
        }
    }
}

/// An I/O error's text the way Go prints a syscall error (`no such file or directory`).
fn os_error_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Go's name for a gRPC status code (`OK`, `InvalidArgument`, `Canceled`, ...).
pub fn code_name(code: i32) -> String {
    let name = match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        other => return format!("Code({other})"),
    };
    name.to_owned()
}

/// `rpc error: code = <Code> desc = <message>`, as Go's status errors print.
pub fn status_text(status: &tonic::Status) -> String {
    format!("rpc error: code = {} desc = {}", code_name(status.code() as i32), status.message())
}

/// Go's `%q` for a string: double-quoted with Go's escapes.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Every admin subcommand of `ward-server` (those of `spire-server` that talk to a server).
#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Attested agents.
    Agent {
        #[command(subcommand)]
        /// The agent command.
        cmd: agent::AgentCmd,
    },
    /// The trust bundle and federated bundles.
    Bundle {
        #[command(subcommand)]
        /// The bundle command.
        cmd: bundle::BundleCmd,
    },
    /// Registration entries.
    Entry {
        #[command(subcommand)]
        /// The entry command.
        cmd: entry::EntryCmd,
    },
    /// Federation relationships.
    Federation {
        #[command(subcommand)]
        /// The federation command.
        cmd: federation::FederationCmd,
    },
    /// JWT-SVIDs.
    Jwt {
        #[command(subcommand)]
        /// The jwt command.
        cmd: svid::JwtCmd,
    },
    /// X509-SVIDs.
    X509 {
        #[command(subcommand)]
        /// The x509 command.
        cmd: svid::X509Cmd,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        /// The token command.
        cmd: token::TokenCmd,
    },
    /// The server's own X.509 and JWT authorities.
    Localauthority {
        #[command(subcommand)]
        /// The localauthority command.
        cmd: authority::LocalAuthorityCmd,
    },
    /// The upstream X.509 authority.
    Upstreamauthority {
        #[command(subcommand)]
        /// The upstreamauthority command.
        cmd: authority::UpstreamAuthorityCmd,
    },
    /// The server's log level.
    Logger {
        #[command(subcommand)]
        /// The logger command.
        cmd: logger::LoggerCmd,
    },
    /// Determines server health status.
    Healthcheck(token::Healthcheck),
    /// The Raft cluster of server replicas (ward's own; SPIRE has no such command).
    Cluster {
        #[command(subcommand)]
        /// The cluster command.
        cmd: cluster::ClusterCmd,
    },
}

/// Runs one admin command to completion.
pub async fn run(cmd: AdminCmd) -> Output {
    match cmd {
        AdminCmd::Agent { cmd } => agent::run(cmd).await,
        AdminCmd::Bundle { cmd } => bundle::run(cmd).await,
        AdminCmd::Entry { cmd } => entry::run(cmd).await,
        AdminCmd::Federation { cmd } => federation::run(cmd).await,
        AdminCmd::Jwt { cmd } => svid::run_jwt(cmd).await,
        AdminCmd::X509 { cmd } => svid::run_x509(cmd).await,
        AdminCmd::Token { cmd } => token::run(cmd).await,
        AdminCmd::Localauthority { cmd } => authority::run_local(cmd).await,
        AdminCmd::Upstreamauthority { cmd } => authority::run_upstream(cmd).await,
        AdminCmd::Logger { cmd } => logger::run(cmd).await,
        AdminCmd::Healthcheck(args) => token::healthcheck(args).await,
        AdminCmd::Cluster { cmd } => cluster::run(cmd).await,
    }
}

/// Runs `body` with a context in `common`'s format and a client of `common`'s socket.
pub async fn with_admin<F, Fut>(common: &Common, body: F) -> Output
where
    F: FnOnce(Ctx, Admin) -> Fut,
    Fut: std::future::Future<Output = (Ctx, CliResult)>,
{
    let ctx = Ctx::new(common.output);
    match Admin::new(&common.socket_path) {
        Ok(admin) => {
            let (ctx, result) = body(ctx, admin).await;
            ctx.finish(result)
        }
        Err(e) => ctx.finish(Err(e)),
    }
}

/// Opens a gRPC channel to the admin socket at `path`, connecting now.
///
/// # Errors
/// When the socket cannot be reached.
pub async fn admin_channel(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_owned();
    // The URI is required by the API but unused: every connection goes to the socket.
    let endpoint = Endpoint::try_from("http://localhost")?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .context("connection error: could not reach the server's admin socket")?;
    Ok(channel)
}

/// Parses a SPIFFE ID as go-spiffe's `spiffeid.FromString` does (same error texts).
///
/// # Errors
/// The parser's reason, e.g. `scheme is missing or invalid`.
pub fn parse_id(s: &str) -> Result<ward_proto::spire::api::types::Spiffeid, CliError> {
    let id = ward_core::SpiffeId::parse(s).map_err(|e| cli_err!("{e}"))?;
    Ok(ward_proto::spire::api::types::Spiffeid {
        trust_domain: id.trust_domain_name().to_owned(),
        path: id.path().to_owned(),
    })
}

/// `spiffe://<trust domain><path>` of a wire SPIFFE ID (empty for none).
pub fn id_string(id: Option<&ward_proto::spire::api::types::Spiffeid>) -> String {
    id.map(|i| format!("spiffe://{}{}", i.trust_domain, i.path)).unwrap_or_default()
}

/// Parses a `type:value` selector as SPIRE's CLI does.
///
/// # Errors
/// `selector "<s>" must be formatted as type:value`.
pub fn parse_selector(s: &str) -> Result<ward_proto::spire::api::types::Selector, CliError> {
    match s.split_once(':') {
        Some((t, v)) => {
            Ok(ward_proto::spire::api::types::Selector { r#type: t.into(), value: v.into() })
        }
        None => Err(cli_err!("selector \"{s}\" must be formatted as type:value")),
    }
}

/// `msg` followed by `singular` when `n` is 1, else `plural`.
pub fn plural(msg: &str, singular: &str, plural: &str, n: usize) -> String {
    format!("{msg}{}", if n == 1 { singular } else { plural })
}

/// The default admin socket path, as a `PathBuf`.
pub fn default_socket() -> PathBuf {
    PathBuf::from(crate::config::DEFAULT_SOCKET_PATH)
}

/// Go's `strconv` style text for an integer that does not fit in an `int32`.
///
/// # Errors
/// `overflow converting int(<v>) to int32`.
pub fn checked_i32(v: i64) -> Result<i32, CliError> {
    i32::try_from(v).map_err(|_| cli_err!("overflow converting int({v}) to int32"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_like_go_grpc() {
        let s = tonic::Status::invalid_argument("bad thing");
        assert_eq!(status_text(&s), "rpc error: code = InvalidArgument desc = bad thing");
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(1), "Canceled");
        assert_eq!(code_name(99), "Code(99)");
    }

    #[test]
    fn go_quote_escapes_like_go() {
        assert_eq!(go_quote("a \"b\"\n"), r#""a \"b\"\n""#);
        assert_eq!(go_quote("\u{1}"), r#""\x01""#);
    }

    #[test]
    fn selectors_split_at_the_first_colon() {
        let s = parse_selector("unix:uid:1000").unwrap();
        assert_eq!((s.r#type.as_str(), s.value.as_str()), ("unix", "uid:1000"));
        assert_eq!(
            parse_selector("unix").unwrap_err().to_string(),
            "selector \"unix\" must be formatted as type:value"
        );
    }

    #[test]
    fn failure_ends_with_error_line_and_code_one() {
        let mut ctx = Ctx::new(Format::Pretty);
        ctx.print("partial\n");
        let out = ctx.finish(Err(cli_err!("a SPIFFE ID is required")));
        assert_eq!(out.code, 1);
        assert_eq!(out.stdout, "partial\n");
        assert_eq!(out.stderr, "Error: a SPIFFE ID is required\n");
    }

    #[test]
    fn int32_overflow_text() {
        assert_eq!(
            checked_i32(2_147_483_648).unwrap_err().to_string(),
            "overflow converting int(2147483648) to int32"
        );
        assert_eq!(checked_i32(-5).unwrap(), -5);
    }
}
