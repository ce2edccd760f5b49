//! `ward-agent api …`: a Workload API client with spire-agent's `api` commands, flags,
//! output and exit codes (`fetch x509`, `fetch jwt`, `validate jwt`, `watch`), and
//! `fetch jwt-bundle` beside them.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Subcommand};
use ward_proto::spiffe::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    X509svidRequest, X509svidResponse,
};

use super::client::{self, ApiClient, CallError, Endpoint};
use super::{proto_json, watch, x509};

/// `ward-agent api`: talks to a Workload API endpoint.
#[derive(Args, Debug)]
pub struct ApiArgs {
    #[command(subcommand)]
    cmd: ApiCmd,
}

#[derive(Subcommand, Debug)]
enum ApiCmd {
    /// Fetches X509-SVIDs (the default), JWT-SVIDs or JWT bundles from the Workload API.
    #[command(args_conflicts_with_subcommands = true, args_override_self = true)]
    Fetch {
        #[command(subcommand)]
        what: Option<FetchCmd>,
        #[command(flatten)]
        x509: X509Flags,
    },
    /// Validates a JWT-SVID with the Workload API.
    Validate {
        #[command(subcommand)]
        what: ValidateCmd,
    },
    /// Attaches to the Workload API and prints X509-SVID updates as they arrive.
    #[command(args_override_self = true)]
    Watch {
        #[command(flatten)]
        socket: SocketFlag,
    },
}

#[derive(Subcommand, Debug)]
enum FetchCmd {
    /// Fetches X509-SVIDs from the Workload API.
    #[command(args_override_self = true)]
    X509(X509Flags),
    /// Fetches a JWT-SVID (and the JWT bundles) from the Workload API.
    #[command(args_override_self = true)]
    Jwt(JwtFlags),
    /// Fetches the JWT bundles from the Workload API.
    #[command(args_override_self = true)]
    JwtBundle(JwtBundleFlags),
}

#[derive(Subcommand, Debug)]
enum ValidateCmd {
    /// Validates a JWT-SVID.
    #[command(args_override_self = true)]
    Jwt(ValidateFlags),
}

/// `-socketPath`.
#[derive(Args, Debug, Clone)]
struct SocketFlag {
    /// Path to the Workload API Unix domain socket (default: $SPIFFE_ENDPOINT_SOCKET, else
    /// /tmp/spire-agent/public/api.sock).
    #[arg(long = "socketPath")]
    socket_path: Option<String>,
}

/// Flags every call-making command has.
#[derive(Args, Debug, Clone)]
struct CallFlags {
    #[command(flatten)]
    socket: SocketFlag,
    /// Time to wait for a response (a Go duration; 0 waits without limit).
    #[arg(long = "timeout", default_value = "5s", value_parser = parse_timeout)]
    timeout: Timeout,
}

/// A per-call deadline; `None` waits without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timeout(Option<Duration>);

/// `-output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pretty,
    Json,
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s.to_ascii_lowercase().as_str() {
        "json" => Ok(Format::Json),
        "pretty" | "prettyprint" => Ok(Format::Pretty),
        _ => Err(format!("bad formatter flag: unknown format option: {s:?}")),
    }
}

/// A Go duration; zero or negative means no deadline (spire-agent sets one only above zero).
fn parse_timeout(s: &str) -> Result<Timeout, String> {
    let nanos = go_parse_duration::parse_duration(s)
        .map_err(|_| format!("time: invalid duration {s:?}"))?;
    Ok(Timeout(u64::try_from(nanos).ok().filter(|n| *n > 0).map(Duration::from_nanos)))
}

#[derive(Args, Debug, Clone)]
struct X509Flags {
    #[command(flatten)]
    call: CallFlags,
    /// Desired output format (pretty, json); default: pretty.
    #[arg(long = "output", default_value = "pretty", value_parser = parse_format)]
    output: Format,
    /// Suppress stdout.
    #[arg(long = "silent")]
    silent: bool,
    /// Write SVID data to the specified path (optional; only available for pretty output
    /// format).
    #[arg(long = "write")]
    write: Option<String>,
}

#[derive(Args, Debug, Clone)]
struct JwtFlags {
    #[command(flatten)]
    call: CallFlags,
    /// Desired output format (pretty, json); default: pretty.
    #[arg(long = "output", alias = "format", default_value = "pretty", value_parser = parse_format)]
    output: Format,
    /// Comma separated list of audience values.
    #[arg(long = "audience")]
    audience: Option<String>,
    /// SPIFFE ID subject (optional).
    #[arg(long = "spiffeID", default_value = "")]
    spiffe_id: String,
}

#[derive(Args, Debug, Clone)]
struct JwtBundleFlags {
    #[command(flatten)]
    call: CallFlags,
    /// Desired output format (pretty, json); default: pretty.
    #[arg(long = "output", default_value = "pretty", value_parser = parse_format)]
    output: Format,
}

#[derive(Args, Debug, Clone)]
struct ValidateFlags {
    #[command(flatten)]
    call: CallFlags,
    /// Desired output format (pretty, json); default: pretty.
    #[arg(long = "output", default_value = "pretty", value_parser = parse_format)]
    output: Format,
    /// Expected audience value.
    #[arg(long = "audience", default_value = "")]
    audience: String,
    /// The JWT-SVID.
    #[arg(long = "svid", default_value = "")]
    svid: String,
}

/// Runs an `api` command; `endpoint_socket` is `SPIFFE_ENDPOINT_SOCKET` as the process got it.
/// Exits 0 on success and 1 on any failure, printing the reason to stderr as spire-agent does.
pub async fn run(args: ApiArgs, endpoint_socket: Option<String>) -> ExitCode {
    let socket = match &args.cmd {
        ApiCmd::Fetch { what: None, x509 }
        | ApiCmd::Fetch { what: Some(FetchCmd::X509(x509)), .. } => &x509.call.socket,
        ApiCmd::Fetch { what: Some(FetchCmd::Jwt(f)), .. } => &f.call.socket,
        ApiCmd::Fetch { what: Some(FetchCmd::JwtBundle(f)), .. } => &f.call.socket,
        ApiCmd::Validate { what: ValidateCmd::Jwt(f) } => &f.call.socket,
        ApiCmd::Watch { socket } => socket,
    };
    let endpoint =
        match Endpoint::resolve(socket.socket_path.as_deref(), endpoint_socket.as_deref()) {
            Ok(e) => e,
            Err(e) => return fail(&e),
        };
    let result = match args.cmd {
        ApiCmd::Fetch { what: None, x509 }
        | ApiCmd::Fetch { what: Some(FetchCmd::X509(x509)), .. } => {
            fetch_x509(&endpoint, &x509).await
        }
        ApiCmd::Fetch { what: Some(FetchCmd::Jwt(f)), .. } => fetch_jwt(&endpoint, &f).await,
        ApiCmd::Fetch { what: Some(FetchCmd::JwtBundle(f)), .. } => {
            fetch_jwt_bundle(&endpoint, &f).await
        }
        ApiCmd::Validate { what: ValidateCmd::Jwt(f) } => validate_jwt(&endpoint, &f).await,
        ApiCmd::Watch { .. } => return watch::run(&endpoint).await,
    };
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            // A closed stdout is not the command's failure.
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(reason: &str) -> ExitCode {
    eprintln!("{reason}");
    ExitCode::from(1)
}

async fn connected(endpoint: &Endpoint, timeout: Option<Duration>) -> Result<ApiClient, CallError> {
    client::with_deadline(timeout, client::connect(endpoint)).await
}

async fn first_x509(
    endpoint: &Endpoint,
    timeout: Option<Duration>,
) -> Result<X509svidResponse, CallError> {
    client::with_deadline(timeout, async {
        let mut api = client::connect(endpoint).await?;
        let mut stream = api.fetch_x509svid(X509svidRequest {}).await?.into_inner();
        stream.message().await?.ok_or(CallError::Eof)
    })
    .await
}

async fn fetch_x509(endpoint: &Endpoint, flags: &X509Flags) -> Result<String, String> {
    let start = Instant::now();
    let resp = first_x509(endpoint, flags.call.timeout.0).await.map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    if flags.output == Format::Json {
        return Ok(proto_json::print(vec![proto_json::x509_svid_response(&resp)]));
    }
    let svids = x509::parse_response(&resp, SystemTime::now())?;
    let mut out = Vec::new();
    if !flags.silent {
        out.extend_from_slice(x509::render(&svids, elapsed).as_bytes());
    }
    if let Some(dir) = flags.write.as_deref().filter(|d| !d.is_empty()) {
        // What was printed so far goes out before a write error is reported.
        if let Err(e) = x509::write_files(&svids, dir, &mut out) {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&out);
            let _ = stdout.flush();
            return Err(e);
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn jwt_bundles(
    api: &mut ApiClient,
    timeout: Option<Duration>,
) -> Result<JwtBundlesResponse, CallError> {
    client::with_deadline(timeout, async {
        let mut stream = api.fetch_jwt_bundles(JwtBundlesRequest {}).await?.into_inner();
        stream.message().await?.ok_or(CallError::Eof)
    })
    .await
}

/// Each trust domain's JWKS as `bundle(<td>):\n\t<jwks>`, sorted by trust domain.
fn render_jwt_bundles(out: &mut String, bundles: &JwtBundlesResponse) {
    let mut sorted: Vec<_> = bundles.bundles.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (td, jwks) in sorted {
        out.push_str(&format!("bundle({td}):\n\t{}\n", String::from_utf8_lossy(jwks)));
    }
}

async fn fetch_jwt(endpoint: &Endpoint, flags: &JwtFlags) -> Result<String, String> {
    let audience: Vec<String> = match flags.audience.as_deref() {
        None | Some("") => return Err("audience must be specified".into()),
        Some(a) => a.split(',').map(str::to_owned).collect(),
    };
    let timeout = flags.call.timeout.0;
    let mut api = connected(endpoint, timeout)
        .await
        .map_err(|e| format!("failed to receive JWT bundles: {e}"))?;
    let bundles = jwt_bundles(&mut api, timeout).await.map_err(|e| e.to_string())?;
    let svids: JwtsvidResponse = client::with_deadline(timeout, async {
        let req = JwtsvidRequest { audience, spiffe_id: flags.spiffe_id.clone() };
        Ok(api.fetch_jwtsvid(req).await?.into_inner())
    })
    .await
    .map_err(|e| e.to_string())?;
    if flags.output == Format::Json {
        return Ok(proto_json::print(vec![
            proto_json::jwt_svid_response(&svids),
            proto_json::jwt_bundles_response(&bundles),
        ]));
    }
    let mut out = String::new();
    for svid in &svids.svids {
        out.push_str(&format!("token({}):\n\t{}\n", svid.spiffe_id, svid.svid));
        if !svid.hint.is_empty() {
            out.push_str(&format!("hint({}):\n\t{}\n", svid.spiffe_id, svid.hint));
        }
    }
    render_jwt_bundles(&mut out, &bundles);
    Ok(out)
}

async fn fetch_jwt_bundle(endpoint: &Endpoint, flags: &JwtBundleFlags) -> Result<String, String> {
    let timeout = flags.call.timeout.0;
    let mut api = connected(endpoint, timeout)
        .await
        .map_err(|e| format!("failed to receive JWT bundles: {e}"))?;
    let bundles = jwt_bundles(&mut api, timeout).await.map_err(|e| e.to_string())?;
    if flags.output == Format::Json {
        return Ok(proto_json::print(vec![proto_json::jwt_bundles_response(&bundles)]));
    }
    let mut out = String::new();
    render_jwt_bundles(&mut out, &bundles);
    Ok(out)
}

async fn validate_jwt(endpoint: &Endpoint, flags: &ValidateFlags) -> Result<String, String> {
    if flags.audience.is_empty() {
        return Err("audience must be specified".into());
    }
    if flags.svid.is_empty() {
        return Err("svid must be specified".into());
    }
    let resp = client::with_deadline(flags.call.timeout.0, async {
        let mut api = client::connect(endpoint).await?;
        let req =
            ValidateJwtsvidRequest { audience: flags.audience.clone(), svid: flags.svid.clone() };
        Ok(api.validate_jwtsvid(req).await?.into_inner())
    })
    .await
    .map_err(|e| match e {
        CallError::Status(s) if s.code() == tonic::Code::InvalidArgument => {
            format!("SVID is not valid: {}", s.message())
        }
        e => format!("unable to validate JWT SVID: {e}"),
    })?;
    if flags.output == Format::Json {
        return Ok(proto_json::print(vec![proto_json::validate_response(&resp)]));
    }
    let claims = resp.claims.as_ref().map(proto_json::struct_value).unwrap_or_default();
    let mut claims = if claims.is_null() { serde_json::json!({}) } else { claims };
    claims.sort_all_objects();
    Ok(format!("SVID is valid.\nSPIFFE ID : {}\nClaims    : {claims}\n", resp.spiffe_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_timeout_flags_read_as_spire_agent_reads_them() {
        assert_eq!(parse_format("JSON"), Ok(Format::Json));
        assert_eq!(parse_format("prettyprint"), Ok(Format::Pretty));
        assert_eq!(
            parse_format("yaml"),
            Err("bad formatter flag: unknown format option: \"yaml\"".to_owned())
        );
        assert_eq!(parse_timeout("5s"), Ok(Timeout(Some(Duration::from_secs(5)))));
        assert_eq!(parse_timeout("1m30s"), Ok(Timeout(Some(Duration::from_secs(90)))));
        assert_eq!(parse_timeout("0"), Ok(Timeout(None)));
        assert!(parse_timeout("soon").is_err());
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Top {
        Api(ApiArgs),
    }

    fn parse(args: &[&str]) -> ApiCmd {
        use clap::Parser as _;
        let argv = ["ward-agent", "api"].iter().chain(args).map(|a| {
            if a.len() > 2 && a.starts_with('-') && !a.starts_with("--") {
                format!("-{a}")
            } else {
                (*a).to_owned()
            }
        });
        let Top::Api(api) = Cli::try_parse_from(argv).unwrap().cmd;
        api.cmd
    }

    #[test]
    fn commands_parse_with_spire_agent_flags() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let ApiCmd::Fetch { what: None, x509 } = parse(&["fetch", "-write", "out", "-silent"])
        else {
            panic!("fetch alone is fetch x509")
        };
        assert_eq!((x509.write.as_deref(), x509.silent), (Some("out"), true));
        assert_eq!(x509.call.timeout, Timeout(Some(Duration::from_secs(5))));
        let ApiCmd::Fetch { what: Some(FetchCmd::Jwt(jwt)), .. } =
            parse(&["fetch", "jwt", "-audience", "a,b", "-format", "json", "-timeout", "0"])
        else {
            panic!("fetch jwt")
        };
        assert_eq!((jwt.audience.as_deref(), jwt.output), (Some("a,b"), Format::Json));
        assert_eq!(jwt.call.timeout, Timeout(None));
        let ApiCmd::Validate { what: ValidateCmd::Jwt(v) } =
            parse(&["validate", "jwt", "-audience", "x", "-audience", "y", "-svid", "t"])
        else {
            panic!("validate jwt")
        };
        assert_eq!((v.audience.as_str(), v.svid.as_str()), ("y", "t"));
        let ApiCmd::Watch { socket } = parse(&["watch", "-socketPath", "/s"]) else {
            panic!("watch")
        };
        assert_eq!(socket.socket_path.as_deref(), Some("/s"));
        assert!(matches!(
            parse(&["fetch", "jwt-bundle"]),
            ApiCmd::Fetch { what: Some(FetchCmd::JwtBundle(_)), .. }
        ));
    }
}
