//! `ward-agent`: runs the node agent (`run`), asks a running one whether it is healthy
//! (`healthcheck`), or talks to a Workload API endpoint (`api`).
//!
//! Flags follow spire-agent's spelling (`-config`, `-joinToken`, ...); Go-style single-dash
//! long flags are accepted as well as `--flag`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ward_agent::agent::{Agent, error_chain};
use ward_agent::config::{
    FileConfig, LogFormat, NodeAttestorSettings, ServerAddressSetting, Settings,
};
use ward_agent::spire_config::{self, FileFormat};
use ward_attest::NodeAttestor;
use ward_attest::node_attestor::aws_iid::AwsIidAttestor;
use ward_attest::node_attestor::azure_msi::AzureMsiAttestor;
use ward_attest::node_attestor::gcp_iit::GcpIitAttestor;
use ward_attest::node_attestor::join_token::JoinTokenAttestor;
use ward_attest::node_attestor::k8s_psat::K8sPsatAttestor;
use ward_attest::node_attestor::sshpop::SshpopAttestor;
use ward_attest::node_attestor::tpm_devid::TpmDevidAttestor;
use ward_attest::node_attestor::x509pop::X509popAttestor;

#[derive(Parser, Debug)]
#[command(name = "ward-agent", version, about = "SPIFFE node agent (SPIRE-compatible)")]
#[command(args_override_self = true)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs the agent.
    Run(Box<RunFlags>),
    /// Asks a running agent's admin socket whether it is healthy (exit 0) or not (exit 1).
    Healthcheck {
        /// The agent's admin socket.
        #[arg(long = "socketPath", default_value = ward_agent::config::DEFAULT_ADMIN_SOCKET_PATH)]
        socket_path: PathBuf,
        /// A less stringent check (the same check here).
        #[arg(long = "shallow")]
        shallow: bool,
        /// Print what is checked and why it failed.
        #[arg(long = "verbose")]
        verbose: bool,
    },
    /// Talks to a Workload API endpoint (fetch x509|jwt|jwt-bundle, validate jwt, watch).
    Api(ward_agent::cli::api::ApiArgs),
}

/// Flags of `run`; each overrides the configuration file's key of the same meaning.
#[derive(clap::Args, Debug)]
struct RunFlags {
    /// Path to the configuration file: ward's TOML, or a spire-agent configuration (HCL or
    /// JSON; see docs/agent-config.md).
    #[arg(long = "config")]
    config: Option<PathBuf>,
    /// Replace `$NAME` and `${NAME}` in the configuration file with environment variables.
    #[arg(long = "expandEnv")]
    expand_env: bool,
    /// The server's host name or IP address.
    #[arg(long = "serverAddress")]
    server_address: Option<String>,
    /// The server's TCP port.
    #[arg(long = "serverPort")]
    server_port: Option<u16>,
    /// The trust domain.
    #[arg(long = "trustDomain")]
    trust_domain: Option<String>,
    /// Path to the bootstrap trust bundle.
    #[arg(long = "trustBundle")]
    trust_bundle: Option<PathBuf>,
    /// URL of the bootstrap trust bundle (https).
    #[arg(long = "trustBundleUrl")]
    trust_bundle_url: Option<String>,
    /// Format of the bootstrap trust bundle: pem or spiffe.
    #[arg(long = "trustBundleFormat")]
    trust_bundle_format: Option<String>,
    /// Attest without a bootstrap bundle, checking only the server's SPIFFE ID.
    #[arg(long = "insecureBootstrap")]
    insecure_bootstrap: bool,
    /// A join token for node attestation.
    #[arg(long = "joinToken")]
    join_token: Option<String>,
    /// The data directory.
    #[arg(long = "dataDir")]
    data_dir: Option<PathBuf>,
    /// The Workload API socket.
    #[arg(long = "socketPath")]
    socket_path: Option<PathBuf>,
    /// The admin socket.
    #[arg(long = "adminSocketPath")]
    admin_socket_path: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long = "logLevel")]
    log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long = "logFormat")]
    log_format: Option<String>,
}

impl RunFlags {
    fn into_file_config(self) -> FileConfig {
        FileConfig {
            server_address: self.server_address.map(ServerAddressSetting::One),
            server_port: self.server_port,
            trust_domain: self.trust_domain,
            trust_bundle_path: self.trust_bundle,
            trust_bundle_url: self.trust_bundle_url,
            trust_bundle_format: self.trust_bundle_format,
            insecure_bootstrap: self.insecure_bootstrap.then_some(true),
            join_token: self.join_token,
            data_dir: self.data_dir,
            socket_path: self.socket_path,
            admin_socket_path: self.admin_socket_path,
            log_level: self.log_level,
            log_format: self.log_format,
            ..FileConfig::default()
        }
    }
}

/// Accepts Go-style `-flag` as `--flag` (clap reads a single dash as short flags).
fn go_style(args: impl Iterator<Item = String>) -> Vec<String> {
    args.map(|a| {
        if a.len() > 2 && a.starts_with('-') && !a.starts_with("--") { format!("-{a}") } else { a }
    })
    .collect()
}

fn main() -> ExitCode {
    let args = match Args::try_parse_from(go_style(std::env::args())) {
        Ok(args) => args,
        Err(e) => {
            // A flag error exits 1, as spire-agent's commands do (help and version exit 0).
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ward-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.cmd {
        Cmd::Run(flags) => runtime.block_on(run(*flags)),
        Cmd::Healthcheck { socket_path, shallow: _, verbose } => {
            runtime.block_on(healthcheck(socket_path, verbose))
        }
        Cmd::Api(api) => runtime.block_on(ward_agent::cli::api::run(
            api,
            std::env::var(ward_agent::cli::client::ENDPOINT_SOCKET_ENV).ok(),
        )),
    }
}

/// The settings, and the notes on spire-agent settings read but ignored.
fn load_settings(flags: RunFlags) -> Result<(Settings, Vec<String>), String> {
    let (mut file, format, notes) = match &flags.config {
        Some(path) => {
            let mut text = std::fs::read_to_string(path).map_err(|e| {
                format!("unable to read configuration at {:?}: {e}", path.display())
            })?;
            if flags.expand_env {
                text = spire_config::expand_env(&text, &|name| std::env::var(name).ok());
            }
            let loaded = spire_config::read(path, &text).map_err(|e| e.to_string())?;
            (loaded.file, loaded.format, loaded.notes)
        }
        None => (FileConfig::default(), FileFormat::WardToml, Vec::new()),
    };
    file.merge(flags.into_file_config());
    spire_config::check_merged(format, &file).map_err(|e| e.to_string())?;
    let settings = Settings::from_file_config(file, |p| std::fs::read_to_string(p))
        .map_err(|e| e.to_string())?;
    Ok((settings, notes))
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The node attestor the agent attests with: a join token when one is given (as SPIRE, it
/// takes precedence), else the configured `[node_attestor]`.
fn node_attestor(
    settings: &Settings,
) -> Result<Option<Arc<dyn NodeAttestor>>, ward_attest::NodeAttestError> {
    if let Some(token) = settings.join_token.as_deref() {
        return Ok(Some(Arc::new(JoinTokenAttestor::new(token)?)));
    }
    let Some(configured) = &settings.node_attestor else {
        return Ok(None);
    };
    let attestor: Arc<dyn NodeAttestor> = match configured.clone() {
        NodeAttestorSettings::X509pop(config) => Arc::new(X509popAttestor::new(config)?),
        NodeAttestorSettings::GcpIit(config) => Arc::new(GcpIitAttestor::new(config)?),
        NodeAttestorSettings::TpmDevid(config) => Arc::new(TpmDevidAttestor::new(config)?),
        NodeAttestorSettings::AzureMsi(config) => Arc::new(AzureMsiAttestor::new(config)?),
        NodeAttestorSettings::K8sPsat(config) => Arc::new(K8sPsatAttestor::new(config)?),
        NodeAttestorSettings::Sshpop(config) => Arc::new(SshpopAttestor::new(config)?),
        NodeAttestorSettings::AwsIid(config) => Arc::new(AwsIidAttestor::new(config)?),
    };
    Ok(Some(attestor))
}

async fn run(flags: RunFlags) -> ExitCode {
    let (settings, notes) = match load_settings(flags) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ward-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&settings);
    for note in &notes {
        tracing::warn!("{note}");
    }
    let attestor = match node_attestor(&settings) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ward-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let parts = match ward_agent::components::standard(&settings) {
        Ok(parts) => parts,
        Err(e) => {
            eprintln!("ward-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let agent = match Agent::start(settings, attestor).await {
        Ok(a) => a,
        Err(e) => {
            let msg = error_chain(&e);
            tracing::error!(error = %msg, "agent crashed");
            eprintln!("ward-agent: {msg}");
            return ExitCode::FAILURE;
        }
    };
    match agent.run(parts, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("agent stopped gracefully");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let msg = error_chain(&e);
            tracing::error!(error = %msg, "agent crashed");
            eprintln!("ward-agent: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the agent runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn healthcheck(socket_path: PathBuf, verbose: bool) -> ExitCode {
    use ward_proto::grpc::health::v1 as health;
    if verbose {
        println!("Checking agent health...");
    }
    let path = socket_path.clone();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await;
    let resp = match channel {
        Ok(ch) => health::health_client::HealthClient::new(ch)
            .check(health::HealthCheckRequest { service: String::new() })
            .await
            .map_err(|s| s.message().to_owned()),
        Err(e) => Err(error_chain(&e)),
    };
    match resp {
        Ok(r)
            if r.get_ref().status
                == health::health_check_response::ServingStatus::Serving as i32 =>
        {
            println!("Agent is healthy.");
            ExitCode::SUCCESS
        }
        Ok(r) => {
            let status = health::health_check_response::ServingStatus::try_from(r.get_ref().status)
                .map(|s| s.as_str_name().to_owned())
                .unwrap_or_else(|_| r.get_ref().status.to_string());
            eprintln!("Agent is unhealthy: agent returned status {status:?}");
            ExitCode::FAILURE
        }
        Err(e) => {
            if verbose {
                eprintln!("Failed to check health: {e}");
            }
            eprintln!("Agent is unhealthy: unable to determine health");
            ExitCode::FAILURE
        }
    }
}
