//! `ward-server dev`: a one-node server and a `ward-agent` on embedded defaults, with an entry
//! for the user who ran it, for trying ward on a laptop. NOT for production: the state lives
//! in a throw-away directory, the agent's join token is made and used on the spot, and the
//! server listens on 127.0.0.1 only.
//!
//! Steps: start the server in this process (trust domain `example.org`, `127.0.0.1:<port>`,
//! admin socket and data under the dev directory); generate a join token and write the bundle
//! through the admin API; create the registration entry `spiffe://example.org/dev/uid-<uid>`
//! selected by `unix:uid:<uid>` under that agent; start `ward-agent` (a child process) with the
//! token; fetch the caller's X509-SVID from the agent's Workload API socket, print it and the
//! socket path; then run until SIGINT or SIGTERM, stopping the agent and the server and
//! deleting a throw-away directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use ward_proto::spiffe::workload as wl;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;

use crate::cli::Admin;
use crate::config::{Config, Overrides};

/// The trust domain of dev mode.
pub const DEV_TRUST_DOMAIN: &str = "example.org";
/// How long to wait for the server, the agent and the first SVID.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// What `ward-server dev` is given.
#[derive(Debug, Clone, Default)]
pub struct DevOptions {
    /// A directory to keep state in (kept at exit). Default: a new directory under the
    /// system's temporary directory, deleted at exit.
    pub dir: Option<PathBuf>,
    /// The server's TCP port on 127.0.0.1 (default 8081).
    pub server_port: Option<u16>,
    /// The `ward-agent` binary (default `$WARD_AGENT_BIN`, else `ward-agent` beside this
    /// executable, else on `PATH`).
    pub agent_bin: Option<PathBuf>,
}

/// Where dev mode keeps its files.
#[derive(Debug, Clone)]
struct Layout {
    root: PathBuf,
    throw_away: bool,
}

impl Layout {
    fn server_data(&self) -> PathBuf {
        self.root.join("server/data")
    }
    fn admin_socket(&self) -> PathBuf {
        self.root.join("server/private/api.sock")
    }
    fn bundle(&self) -> PathBuf {
        self.root.join("bundle.pem")
    }
    fn agent_dir(&self) -> PathBuf {
        self.root.join("agent")
    }
    fn workload_socket(&self) -> PathBuf {
        self.root.join("agent/public/api.sock")
    }
}

/// The `ward-agent` binary to run.
fn agent_binary(given: Option<PathBuf>) -> PathBuf {
    if let Some(bin) = given.or_else(|| std::env::var_os("WARD_AGENT_BIN").map(PathBuf::from)) {
        return bin;
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("ward-agent")))
        .filter(|p| p.is_file());
    beside.unwrap_or_else(|| PathBuf::from("ward-agent"))
}

/// Runs dev mode until SIGINT or SIGTERM.
///
/// # Errors
/// A sentence naming the step that failed (the server could not start, the agent binary is
/// missing or exited, no SVID within a minute).
pub async fn run(opts: DevOptions) -> anyhow::Result<()> {
    let layout = match opts.dir.clone() {
        Some(root) => Layout { root, throw_away: false },
        None => Layout {
            root: std::env::temp_dir().join(format!("ward-dev-{}", std::process::id())),
            throw_away: true,
        },
    };
    std::fs::create_dir_all(&layout.root)
        .with_context(|| format!("creating {}", layout.root.display()))?;
    let result = run_in(&layout, opts).await;
    if layout.throw_away {
        let _ = std::fs::remove_dir_all(&layout.root);
    }
    result
}

async fn run_in(layout: &Layout, opts: DevOptions) -> anyhow::Result<()> {
    let port = opts.server_port.unwrap_or(8081);
    let overrides = Overrides {
        trust_domain: Some(DEV_TRUST_DOMAIN.to_owned()),
        bind_address: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        bind_port: Some(port),
        socket_path: Some(layout.admin_socket()),
        data_dir: Some(layout.server_data()),
        log_level: Some("warn".to_owned()),
        ..Overrides::default()
    };
    let loaded = Config::read(None, &overrides, &|name| std::env::var(name).ok())?;
    crate::logging::init(&loaded.config)?;
    let server = crate::run::start(loaded.config)
        .await
        .with_context(|| format!("starting the server on 127.0.0.1:{port}"))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(crate::run::serve_until(server, async move {
        let _ = stop_rx.await;
    }));

    let outcome = bring_up_and_wait(layout, port, opts.agent_bin).await;
    let _ = stop_tx.send(());
    let served = serving.await.context("the server task")?;
    outcome.and(served)
}

async fn bring_up_and_wait(
    layout: &Layout,
    port: u16,
    agent_bin: Option<PathBuf>,
) -> anyhow::Result<()> {
    let admin = Admin::new(&layout.admin_socket())?;
    let token = retry("the server's admin socket", || create_token(&admin)).await?;
    let bundle_pem = bundle_pem(&admin).await?;
    std::fs::write(layout.bundle(), &bundle_pem)
        .with_context(|| format!("writing {}", layout.bundle().display()))?;
    let uid = rustix::process::getuid().as_raw();
    let agent_id = format!("spiffe://{DEV_TRUST_DOMAIN}/spire/agent/join_token/{token}");
    let workload_id = format!("spiffe://{DEV_TRUST_DOMAIN}/dev/uid-{uid}");
    create_entry(&admin, &agent_id, &workload_id, uid).await?;

    let mut agent = start_agent(layout, port, &token, agent_bin)?;
    let socket = layout.workload_socket();
    let fetched = tokio::select! {
        svid = retry("an X509-SVID from the agent", || fetch_svid(socket.clone())) => svid,
        status = agent.wait() => {
            let status = status.context("waiting for ward-agent")?;
            bail!(
                "ward-agent exited ({status}) before serving; its log: {}",
                layout.agent_dir().join("ward-agent.log").display()
            );
        }
    };
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            let _ = agent.kill().await;
            return Err(e);
        }
    };
    print_banner(layout, port, &agent_id, uid, &fetched);

    let stopped = tokio::select! {
        () = signal() => Ok(()),
        status = agent.wait() => match status {
            Ok(s) => Err(anyhow::anyhow!("ward-agent exited ({s}); its log: {}", layout.agent_dir().join("ward-agent.log").display())),
            Err(e) => Err(e.into()),
        },
    };
    if let Some(pid) =
        agent.id().and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(Duration::from_secs(10), agent.wait()).await.is_err() {
            let _ = agent.kill().await;
        }
    }
    println!("ward dev: stopped");
    stopped
}

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Calls `f` until it succeeds or [`READY_TIMEOUT`] passes; the last error names `what`.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("no {what} within {READY_TIMEOUT:?}")));
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

async fn create_token(admin: &Admin) -> anyhow::Result<String> {
    let token = agentpb::agent_client::AgentClient::new(admin.channel())
        .create_join_token(agentpb::CreateJoinTokenRequest {
            ttl: 600,
            token: String::new(),
            agent_id: None,
        })
        .await
        .map_err(|s| anyhow::anyhow!("creating a join token: {}", admin.status(&s)))?
        .into_inner();
    Ok(token.value)
}

async fn bundle_pem(admin: &Admin) -> anyhow::Result<String> {
    let bundle = bundlepb::bundle_client::BundleClient::new(admin.channel())
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await
        .map_err(|s| anyhow::anyhow!("reading the bundle: {}", admin.status(&s)))?
        .into_inner();
    Ok(bundle
        .x509_authorities
        .iter()
        .map(|a| pem::encode(&pem::Pem::new("CERTIFICATE", a.asn1.clone())))
        .collect())
}

fn spiffe_id(id: &str) -> anyhow::Result<types::Spiffeid> {
    let parsed = ward_core::SpiffeId::parse(id).with_context(|| format!("SPIFFE ID {id}"))?;
    Ok(types::Spiffeid {
        trust_domain: parsed.trust_domain_name().to_owned(),
        path: parsed.path().to_owned(),
    })
}

async fn create_entry(admin: &Admin, parent: &str, spiffe: &str, uid: u32) -> anyhow::Result<()> {
    let entry = types::Entry {
        parent_id: Some(spiffe_id(parent)?),
        spiffe_id: Some(spiffe_id(spiffe)?),
        selectors: vec![types::Selector { r#type: "unix".into(), value: format!("uid:{uid}") }],
        ..types::Entry::default()
    };
    let resp = entrypb::entry_client::EntryClient::new(admin.channel())
        .batch_create_entry(entrypb::BatchCreateEntryRequest {
            entries: vec![entry],
            output_mask: None,
        })
        .await
        .map_err(|s| anyhow::anyhow!("creating the entry: {}", admin.status(&s)))?
        .into_inner();
    match resp.results.first().and_then(|r| r.status.as_ref()) {
        Some(status) if status.code == 0 => Ok(()),
        Some(status) => bail!("creating the entry: {}", status.message),
        None => bail!("creating the entry: the server gave no result"),
    }
}

fn start_agent(
    layout: &Layout,
    port: u16,
    token: &str,
    agent_bin: Option<PathBuf>,
) -> anyhow::Result<Child> {
    let dir = layout.agent_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = format!(
        "server_address = \"127.0.0.1\"\nserver_port = {port}\ntrust_domain = \"{DEV_TRUST_DOMAIN}\"\n\
         trust_bundle_path = {bundle}\njoin_token = \"{token}\"\ndata_dir = {data}\n\
         socket_path = {socket}\nadmin_socket_path = {admin}\nsync_interval = \"1s\"\n",
        bundle = toml_string(&layout.bundle()),
        data = toml_string(&dir.join("data")),
        socket = toml_string(&layout.workload_socket()),
        admin = toml_string(&dir.join("private/admin.sock")),
    );
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let log_path = dir.join("ward-agent.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let bin = agent_binary(agent_bin);
    Command::new(&bin)
        .arg("run")
        .arg("-config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with `cargo build -p ward-agent`, or give -agentBin)",
                bin.display()
            )
        })
}

/// A TOML basic string holding `path`.
fn toml_string(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// What the Workload API gave the caller.
#[derive(Debug)]
struct Fetched {
    spiffe_id: String,
    not_after: String,
}

async fn fetch_svid(path: PathBuf) -> anyhow::Result<Fetched> {
    let channel = tonic::transport::Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    let mut request = tonic::Request::new(wl::X509svidRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
    let mut stream = wl::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel)
        .fetch_x509svid(request)
        .await?
        .into_inner();
    let first = stream.message().await?.context("the stream ended without an answer")?;
    let svid = first.svids.first().context("no X509-SVID in the answer")?;
    // The leaf is the first certificate of the concatenated DER chain.
    let not_after = x509_parser::parse_x509_certificate(&svid.x509_svid)
        .ok()
        .and_then(|(_, leaf)| {
            leaf.validity()
                .not_after
                .to_datetime()
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "unknown".to_owned());
    Ok(Fetched { spiffe_id: svid.spiffe_id.clone(), not_after })
}

fn print_banner(layout: &Layout, port: u16, agent_id: &str, uid: u32, fetched: &Fetched) {
    let socket = layout.workload_socket();
    let kept = if layout.throw_away { "deleted at exit" } else { "kept at exit" };
    println!(
        "ward dev mode: a one-node server and an agent on embedded defaults. NOT FOR PRODUCTION.\n\
         \n\
         state        {root} ({kept})\n\
         server       127.0.0.1:{port}, trust domain {DEV_TRUST_DOMAIN}\n\
         admin        ward-server entry show -socketPath {admin}\n\
         agent        {agent_id}\n\
         entry        {id} for unix:uid:{uid}\n\
         \n\
         X509-SVID    {id} (valid until {not_after})\n\
         socket       {socket}\n\
         \n\
         Any SPIFFE client can use it:\n\
         \x20 export SPIFFE_ENDPOINT_SOCKET=unix://{socket}\n\
         \n\
         Ctrl-C stops the agent and the server.",
        root = layout.root.display(),
        admin = layout.admin_socket().display(),
        id = fetched.spiffe_id,
        not_after = fetched.not_after,
        socket = socket.display(),
    );
}
