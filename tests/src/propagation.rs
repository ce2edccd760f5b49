//! Propagation from the server's admin API to a workload: an entry created over the admin
//! socket (SPIRE's `BatchCreateEntry`), then the SPIFFE IDs a Workload API
//! `FetchX509SVID` stream delivers on the agent's socket. The end-to-end suites use it to
//! see a change arrive; the `agent_propagation` bench to time it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use ward_proto::spiffe::workload::X509svidResponse;
use ward_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;

/// A gRPC channel over the Unix socket at `path` (plain HTTP/2, as both the admin and the
/// Workload API sockets speak).
///
/// # Errors
/// When the socket cannot be reached.
pub async fn unix_channel(path: &Path) -> anyhow::Result<Channel> {
    let path: PathBuf = path.to_owned();
    let shown = path.display().to_string();
    Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("connecting to {shown}"))
}

/// An open `FetchX509SVID` stream.
pub struct X509Watch {
    stream: tonic::Streaming<X509svidResponse>,
}

impl X509Watch {
    /// Opens the stream on the Workload API socket at `socket` (with the security header).
    ///
    /// # Errors
    /// When the socket cannot be reached or the call is refused (no entry selects the
    /// caller yet).
    pub async fn open(socket: &Path) -> anyhow::Result<Self> {
        let mut client = SpiffeWorkloadApiClient::new(unix_channel(socket).await?);
        let mut req = tonic::Request::new(ward_proto::spiffe::workload::X509svidRequest {});
        req.metadata_mut()
            .insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
        let stream = client.fetch_x509svid(req).await?.into_inner();
        Ok(Self { stream })
    }

    /// Opens the stream as soon as the agent serves the caller, retrying refusals until
    /// `deadline` passes.
    ///
    /// # Errors
    /// The last refusal when the deadline passes.
    pub async fn open_when_served(socket: &Path, deadline: Duration) -> anyhow::Result<Self> {
        let end = Instant::now() + deadline;
        loop {
            match Self::open(socket).await {
                Ok(watch) => return Ok(watch),
                Err(e) if Instant::now() >= end => {
                    return Err(e.context("the workload was never served"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The SPIFFE IDs of the next response.
    ///
    /// # Errors
    /// When the stream fails or ends.
    pub async fn next_ids(&mut self) -> anyhow::Result<Vec<String>> {
        let resp = self.stream.message().await?.context("the X509-SVID stream ended")?;
        Ok(resp.svids.into_iter().map(|s| s.spiffe_id).collect())
    }

    /// Waits, up to `deadline`, for a response that holds `spiffe_id`.
    ///
    /// # Errors
    /// When the stream fails or the deadline passes first.
    pub async fn wait_for(&mut self, spiffe_id: &str, deadline: Duration) -> anyhow::Result<()> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let ids =
                tokio::time::timeout_at(end, self.next_ids()).await.with_context(|| {
                    format!("{spiffe_id} did not reach the workload in {deadline:?}")
                })??;
            if ids.iter().any(|id| id == spiffe_id) {
                return Ok(());
            }
        }
    }
}

/// The server's admin API over its Unix socket.
pub struct Admin {
    entries: entrypb::entry_client::EntryClient<Channel>,
}

fn spiffe_id(s: &str) -> anyhow::Result<types::Spiffeid> {
    let rest = s.strip_prefix("spiffe://").with_context(|| format!("{s} is not a SPIFFE ID"))?;
    let (td, path) = rest.split_once('/').map_or((rest, ""), |(td, p)| (td, p));
    Ok(types::Spiffeid { trust_domain: td.to_owned(), path: format!("/{path}") })
}

impl Admin {
    /// A client of the admin socket at `socket`.
    ///
    /// # Errors
    /// When the socket cannot be reached.
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        Ok(Self { entries: entrypb::entry_client::EntryClient::new(unix_channel(socket).await?) })
    }

    /// Creates an entry for `spiffe_id` under `parent_id` with one selector (`type:value`)
    /// and returns its id.
    ///
    /// # Errors
    /// When the call or the entry is refused.
    pub async fn create_entry(
        &mut self,
        parent_id: &str,
        spiffe: &str,
        selector: &str,
    ) -> anyhow::Result<String> {
        let (kind, value) = selector.split_once(':').context("selector is type:value")?;
        let entry = types::Entry {
            spiffe_id: Some(spiffe_id(spiffe)?),
            parent_id: Some(spiffe_id(parent_id)?),
            selectors: vec![types::Selector { r#type: kind.to_owned(), value: value.to_owned() }],
            ..Default::default()
        };
        let req = entrypb::BatchCreateEntryRequest { entries: vec![entry], output_mask: None };
        let resp = self.entries.batch_create_entry(req).await?.into_inner();
        let result = resp.results.into_iter().next().context("no result")?;
        let status = result.status.unwrap_or_default();
        ensure!(status.code == 0, "entry refused: {} {}", status.code, status.message);
        Ok(result.entry.context("no entry in the result")?.id)
    }

    /// Deletes the entries `ids`.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn delete_entries(&mut self, ids: Vec<String>) -> anyhow::Result<()> {
        let resp =
            self.entries.batch_delete_entry(entrypb::BatchDeleteEntryRequest { ids }).await?;
        if let Some(bad) = resp
            .into_inner()
            .results
            .iter()
            .find(|r| r.status.as_ref().is_some_and(|s| s.code != 0))
        {
            bail!("delete refused: {bad:?}");
        }
        Ok(())
    }
}

/// One round: creates an entry for `spiffe` selecting the caller and returns the time from
/// the create call until `watch` delivered an X509-SVID for it.
///
/// # Errors
/// When the create fails or the SVID does not arrive within `deadline`.
pub async fn time_one_entry(
    admin: &mut Admin,
    watch: &mut X509Watch,
    parent_id: &str,
    spiffe: &str,
    selector: &str,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    admin.create_entry(parent_id, spiffe, selector).await?;
    watch.wait_for(spiffe, deadline).await?;
    Ok(start.elapsed())
}
