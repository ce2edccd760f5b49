//! The admin CLI: subcommands that talk to a running server over its admin Unix socket, the
//! way `spire-server`'s CLI does (plaintext gRPC over the socket, no credentials).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;

/// Opens a gRPC channel to the admin socket at `path`.
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

/// `token generate`: creates a join token and prints `Token: <value>`.
///
/// # Errors
/// On transport failure or when the server refuses.
pub async fn token_generate(
    socket: &Path,
    ttl: i32,
    spiffe_id: Option<&str>,
) -> anyhow::Result<String> {
    let mut client = agentpb::agent_client::AgentClient::new(admin_channel(socket).await?);
    let agent_id = spiffe_id.map(parse_id).transpose()?;
    let resp = client
        .create_join_token(agentpb::CreateJoinTokenRequest { ttl, token: String::new(), agent_id })
        .await
        .map_err(status_err)?
        .into_inner();
    Ok(format!("Token: {}\n", resp.value))
}

/// Options of `entry create`, mirroring SPIRE's flags.
#[derive(Debug, Default, Clone)]
pub struct EntryCreate {
    /// `-entryID`.
    pub entry_id: Option<String>,
    /// `-spiffeID`.
    pub spiffe_id: String,
    /// `-parentID`.
    pub parent_id: Option<String>,
    /// `-node`: parent is the server, making a node alias.
    pub node: bool,
    /// `-selector`, repeatable.
    pub selectors: Vec<String>,
    /// `-x509SVIDTTL`.
    pub x509_svid_ttl: i32,
    /// `-jwtSVIDTTL`.
    pub jwt_svid_ttl: i32,
    /// `-federatesWith`, repeatable.
    pub federates_with: Vec<String>,
    /// `-dns`, repeatable.
    pub dns_names: Vec<String>,
    /// `-admin`.
    pub admin: bool,
    /// `-downstream`.
    pub downstream: bool,
    /// `-entryExpiry`.
    pub expires_at: i64,
    /// `-storeSVID`.
    pub store_svid: bool,
    /// `-hint`.
    pub hint: String,
}

/// `entry create`: creates one entry and prints it as SPIRE's CLI does.
///
/// # Errors
/// On bad flags, transport failure, or a non-OK per-entry status.
pub async fn entry_create(socket: &Path, o: &EntryCreate) -> anyhow::Result<String> {
    if o.spiffe_id.is_empty() {
        bail!("a SPIFFE ID is required");
    }
    if o.selectors.is_empty() {
        bail!("at least one selector is required");
    }
    if o.node && o.parent_id.is_some() {
        bail!("Parent ID can't be used with -node");
    }
    let spiffe_id = parse_id(&o.spiffe_id)?;
    let parent_id = if o.node {
        types::Spiffeid {
            trust_domain: spiffe_id.trust_domain.clone(),
            path: "/spire/server".into(),
        }
    } else {
        match &o.parent_id {
            Some(p) => parse_id(p)?,
            None => bail!("a parent ID is required if the node flag is not set"),
        }
    };
    let selectors =
        o.selectors.iter().map(|s| parse_selector(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let entry = types::Entry {
        id: o.entry_id.clone().unwrap_or_default(),
        spiffe_id: Some(spiffe_id),
        parent_id: Some(parent_id),
        selectors,
        x509_svid_ttl: o.x509_svid_ttl,
        jwt_svid_ttl: o.jwt_svid_ttl,
        federates_with: o.federates_with.clone(),
        admin: o.admin,
        downstream: o.downstream,
        expires_at: o.expires_at,
        dns_names: o.dns_names.clone(),
        store_svid: o.store_svid,
        hint: o.hint.clone(),
        ..Default::default()
    };
    let mut client = entrypb::entry_client::EntryClient::new(admin_channel(socket).await?);
    let resp = client
        .batch_create_entry(entrypb::BatchCreateEntryRequest {
            entries: vec![entry],
            output_mask: None,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let mut out = String::new();
    let mut failed = false;
    for r in resp.results {
        let st = r.status.unwrap_or_default();
        match r.entry {
            Some(e) if st.code == 0 => out.push_str(&format_entry(&e)),
            _ => {
                failed = true;
                out.push_str(&format!("FAILED to create the following entry:\n{}", st.message));
            }
        }
    }
    if failed {
        bail!("{out}");
    }
    Ok(out)
}

/// Filters of `entry show`.
#[derive(Debug, Default, Clone)]
pub struct EntryShow {
    /// `-entryID`: show one entry.
    pub entry_id: Option<String>,
    /// `-spiffeID`.
    pub spiffe_id: Option<String>,
    /// `-parentID`.
    pub parent_id: Option<String>,
    /// `-selector`, repeatable; entries having all of them (SPIRE's default superset match).
    pub selectors: Vec<String>,
}

/// `entry show`: one entry by id, or every entry passing the filters, as SPIRE prints them.
///
/// # Errors
/// On bad flags or transport failure.
pub async fn entry_show(socket: &Path, o: &EntryShow) -> anyhow::Result<String> {
    let mut client = entrypb::entry_client::EntryClient::new(admin_channel(socket).await?);
    let entries = if let Some(id) = &o.entry_id {
        let e = client
            .get_entry(entrypb::GetEntryRequest { id: id.clone(), output_mask: None })
            .await
            .map_err(status_err)?
            .into_inner();
        vec![e]
    } else {
        let selectors =
            o.selectors.iter().map(|s| parse_selector(s)).collect::<anyhow::Result<Vec<_>>>()?;
        let filter = entrypb::list_entries_request::Filter {
            by_spiffe_id: o.spiffe_id.as_deref().map(parse_id).transpose()?,
            by_parent_id: o.parent_id.as_deref().map(parse_id).transpose()?,
            by_selectors: (!selectors.is_empty()).then_some(types::SelectorMatch {
                selectors,
                r#match: types::selector_match::MatchBehavior::MatchSuperset as i32,
            }),
            by_downstream: Some(false),
            ..Default::default()
        };
        let mut all = Vec::new();
        let mut page_token = String::new();
        // Bounded: every page advances the token; an empty token ends the listing.
        loop {
            let resp = client
                .list_entries(entrypb::ListEntriesRequest {
                    filter: Some(filter.clone()),
                    output_mask: None,
                    page_size: 500,
                    page_token: page_token.clone(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            all.extend(resp.entries);
            if resp.next_page_token.is_empty() || resp.next_page_token == page_token {
                break;
            }
            page_token = resp.next_page_token;
        }
        all
    };
    let mut out = match entries.len() {
        1 => "Found 1 entry\n".to_owned(),
        n => format!("Found {n} entries\n"),
    };
    for e in &entries {
        out.push_str(&format_entry(e));
    }
    Ok(out)
}

fn parse_selector(s: &str) -> anyhow::Result<types::Selector> {
    match s.split_once(':') {
        Some((t, v)) => Ok(types::Selector { r#type: t.into(), value: v.into() }),
        None => bail!("selector \"{s}\" must be formatted as type:value"),
    }
}

/// Formats an entry the way `spire-server entry show/create` prints it.
pub fn format_entry(e: &types::Entry) -> String {
    use std::fmt::Write;
    let id = |i: &Option<types::Spiffeid>| {
        i.as_ref().map(|i| format!("spiffe://{}{}", i.trust_domain, i.path)).unwrap_or_default()
    };
    let mut s = String::new();
    let _ = writeln!(s, "Entry ID         : {}", if e.id.is_empty() { "(none)" } else { &e.id });
    let _ = writeln!(s, "SPIFFE ID        : {}", id(&e.spiffe_id));
    let _ = writeln!(s, "Parent ID        : {}", id(&e.parent_id));
    let _ = writeln!(s, "Revision         : {}", e.revision_number);
    if e.downstream {
        let _ = writeln!(s, "Downstream       : true");
    }
    let ttl = |t: i32| if t == 0 { "default".to_owned() } else { t.to_string() };
    let _ = writeln!(s, "X509-SVID TTL    : {}", ttl(e.x509_svid_ttl));
    let _ = writeln!(s, "JWT-SVID TTL     : {}", ttl(e.jwt_svid_ttl));
    if e.expires_at != 0 {
        let _ = writeln!(s, "Expiration time  : {}", e.expires_at);
    }
    for sel in &e.selectors {
        let _ = writeln!(s, "Selector         : {}:{}", sel.r#type, sel.value);
    }
    for td in &e.federates_with {
        let _ = writeln!(s, "FederatesWith    : {td}");
    }
    for d in &e.dns_names {
        let _ = writeln!(s, "DNS name         : {d}");
    }
    if e.admin {
        let _ = writeln!(s, "Admin            : true");
    }
    if e.store_svid {
        let _ = writeln!(s, "StoreSvid        : true");
    }
    if !e.hint.is_empty() {
        let _ = writeln!(s, "Hint             : {}", e.hint);
    }
    s.push('\n');
    s
}

/// `bundle show`: the server's own bundle as PEM (`pem`) or a SPIFFE bundle (`spiffe`).
///
/// # Errors
/// On transport failure or an unknown format.
pub async fn bundle_show(socket: &Path, format: &str) -> anyhow::Result<String> {
    let mut client = bundlepb::bundle_client::BundleClient::new(admin_channel(socket).await?);
    let b = client
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await
        .map_err(status_err)?
        .into_inner();
    match format {
        "pem" => Ok(bundle_pem(&b)),
        "spiffe" => {
            let core = ward_proto::convert::bundle_from_proto(&b)
                .context("the server sent an invalid bundle")?;
            let mut json = core.to_spiffe_json().context("encoding the SPIFFE bundle")?;
            json.push('\n');
            Ok(json)
        }
        other => bail!("invalid format: \"{other}\""),
    }
}

/// The X.509 authorities of `b` as concatenated PEM blocks.
pub fn bundle_pem(b: &types::Bundle) -> String {
    let mut out = String::new();
    for a in &b.x509_authorities {
        out.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", a.asn1.clone())));
    }
    out
}

/// `healthcheck`: asks the server's health service; Ok when SERVING.
///
/// # Errors
/// When the server is unreachable or not serving.
pub async fn healthcheck(socket: &Path) -> anyhow::Result<String> {
    use ward_proto::grpc::health::v1 as health;
    let mut client = health::health_client::HealthClient::new(admin_channel(socket).await?);
    let resp = client
        .check(health::HealthCheckRequest { service: String::new() })
        .await
        .map_err(status_err)?
        .into_inner();
    if resp.status != health::health_check_response::ServingStatus::Serving as i32 {
        bail!("server is unhealthy: status {}", resp.status);
    }
    Ok("Server is healthy.\n".into())
}

fn parse_id(s: &str) -> anyhow::Result<types::Spiffeid> {
    let id = ward_core::SpiffeId::parse(s).with_context(|| format!("invalid SPIFFE ID {s:?}"))?;
    Ok(types::Spiffeid {
        trust_domain: id.trust_domain_name().to_owned(),
        path: id.path().to_owned(),
    })
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("rpc error: code = {:?} desc = {}", s.code(), s.message())
}

/// The default admin socket path, as a `PathBuf`.
pub fn default_socket() -> PathBuf {
    PathBuf::from(crate::config::DEFAULT_SOCKET_PATH)
}
