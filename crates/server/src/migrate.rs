//! `ward-server migrate`: copies registration entries (their ids kept), federation
//! relationships and federated bundles out of a running SPIRE server into ward.
//!
//! Both servers are reached over their admin sockets with SPIRE's own server API, so the
//! source is an unmodified `spire-server` and the target any server that speaks the API. The
//! copy is idempotent: an item ward already holds with the same content counts as already
//! present and is not written again, so a second run changes nothing. An item ward holds with
//! different content is left as it is and reported as failed; nothing in ward is overwritten
//! or deleted.
//!
//! Order: federated bundles first (entries may federate with them and relationships may name
//! them), then federation relationships, then entries. Agents, join tokens and the server's own
//! CA are not copied: agents attest to ward again, and ward's CA is its own.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::Channel;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::server::trustdomain::v1 as tdpb;
use ward_proto::spire::api::types;

use crate::cli::admin_channel;

/// Items sent in one batch call.
const BATCH: usize = 50;
/// Page size of the list calls.
const PAGE: i32 = 500;

/// What to copy from where.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The SPIRE server's admin socket.
    pub from_socket: PathBuf,
    /// ward's admin socket.
    pub to_socket: PathBuf,
}

/// The outcome for one kind of item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindSummary {
    /// Items written to ward by this run.
    pub created: usize,
    /// Items ward already held with the same content.
    pub present: usize,
    /// Items not copied: `(item, reason)`.
    pub failed: Vec<(String, String)>,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The trust domain both servers serve.
    pub trust_domain: String,
    /// Federated bundles.
    pub bundles: KindSummary,
    /// Federation relationships.
    pub relationships: KindSummary,
    /// Registration entries.
    pub entries: KindSummary,
}

impl Summary {
    fn kinds(&self) -> [(&'static str, &KindSummary); 3] {
        [
            ("federated bundles", &self.bundles),
            ("federation relationships", &self.relationships),
            ("registration entries", &self.entries),
        ]
    }

    /// Items written by this run.
    pub fn created(&self) -> usize {
        self.kinds().iter().map(|(_, k)| k.created).sum()
    }

    /// Items not copied.
    pub fn failed(&self) -> usize {
        self.kinds().iter().map(|(_, k)| k.failed.len()).sum()
    }

    /// The report printed at the end of a run: one line per kind, then every failure.
    pub fn render(&self) -> String {
        let mut out = format!("Trust domain {}:\n", self.trust_domain);
        for (name, k) in self.kinds() {
            let _ = writeln!(
                out,
                "  {name:<25} {} created, {} already present, {} failed",
                k.created,
                k.present,
                k.failed.len()
            );
        }
        for (name, k) in self.kinds() {
            for (item, why) in &k.failed {
                let _ = writeln!(out, "FAILED {} {item}: {why}", singular(name));
            }
        }
        if self.created() == 0 && self.failed() == 0 {
            out.push_str("Nothing to do: ward already holds everything the SPIRE server has.\n");
        }
        out
    }
}

fn singular(kind: &str) -> &str {
    match kind {
        "federated bundles" => "federated bundle",
        "federation relationships" => "federation relationship",
        _ => "registration entry",
    }
}

/// Copies everything from the SPIRE server at `opts.from_socket` into ward at
/// `opts.to_socket`, drawing a progress bar on stderr when it is a terminal.
///
/// # Errors
/// When a server cannot be reached, a list call fails, or the two servers serve different
/// trust domains. Items that cannot be copied are not errors: they are in the [`Summary`].
pub async fn migrate(opts: &MigrateOptions) -> anyhow::Result<Summary> {
    let from = admin_channel(&opts.from_socket)
        .await
        .with_context(|| format!("SPIRE server at {}", opts.from_socket.display()))?;
    let to = admin_channel(&opts.to_socket)
        .await
        .with_context(|| format!("ward at {}", opts.to_socket.display()))?;
    let td_from = own_trust_domain(&from).await.context("reading the SPIRE server's bundle")?;
    let td_to = own_trust_domain(&to).await.context("reading ward's bundle")?;
    if td_from != td_to {
        bail!(
            "the SPIRE server is the authority for trust domain {td_from:?} and ward for \
             {td_to:?}: entries can only be copied within one trust domain"
        );
    }

    let src_bundles = list_bundles(&from).await.context("listing the SPIRE server's bundles")?;
    let src_rels = list_relationships(&from)
        .await
        .context("listing the SPIRE server's federation relationships")?;
    let src_entries = list_entries(&from).await.context("listing the SPIRE server's entries")?;
    let dst_bundles = list_bundles(&to).await.context("listing ward's federated bundles")?;
    let dst_rels =
        list_relationships(&to).await.context("listing ward's federation relationships")?;
    let dst_entries = list_entries(&to).await.context("listing ward's entries")?;

    let total = src_bundles.len() + src_rels.len() + src_entries.len();
    let bar = progress_bar(total as u64);
    let mut summary = Summary { trust_domain: td_to, ..Summary::default() };

    bar.set_message("federated bundles");
    summary.bundles = copy_bundles(&to, src_bundles, dst_bundles, &bar).await?;
    bar.set_message("federation relationships");
    summary.relationships = copy_relationships(&to, src_rels, dst_rels, &bar).await?;
    bar.set_message("registration entries");
    summary.entries = copy_entries(&to, src_entries, dst_entries, &bar).await?;
    bar.finish_and_clear();
    Ok(summary)
}

fn progress_bar(len: u64) -> ProgressBar {
    // Draws on stderr only when it is a terminal; scripts see the summary alone.
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>25} [{bar:30}] {pos}/{len}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

async fn own_trust_domain(ch: &Channel) -> anyhow::Result<String> {
    let mut client = bundlepb::bundle_client::BundleClient::new(ch.clone());
    let b = client
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await
        .map_err(status_err)?
        .into_inner();
    Ok(b.trust_domain)
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("rpc error: code = {:?} desc = {}", s.code(), s.message())
}

/// Follows page tokens until the server returns an empty (or repeated) one.
async fn paged<T, F, Fut>(mut call: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = call(token.clone()).await.map_err(status_err)?;
        all.extend(items);
        if next.is_empty() || next == token {
            return Ok(all);
        }
        token = next;
    }
}

async fn list_bundles(ch: &Channel) -> anyhow::Result<Vec<types::Bundle>> {
    let client = bundlepb::bundle_client::BundleClient::new(ch.clone());
    paged(|page_token| {
        let mut client = client.clone();
        async move {
            let r = client
                .list_federated_bundles(bundlepb::ListFederatedBundlesRequest {
                    output_mask: None,
                    page_size: PAGE,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((r.bundles, r.next_page_token))
        }
    })
    .await
}

async fn list_relationships(ch: &Channel) -> anyhow::Result<Vec<types::FederationRelationship>> {
    let client = tdpb::trust_domain_client::TrustDomainClient::new(ch.clone());
    paged(|page_token| {
        let mut client = client.clone();
        async move {
            let r = client
                .list_federation_relationships(tdpb::ListFederationRelationshipsRequest {
                    output_mask: None,
                    page_size: PAGE,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((r.federation_relationships, r.next_page_token))
        }
    })
    .await
}

async fn list_entries(ch: &Channel) -> anyhow::Result<Vec<types::Entry>> {
    let client = entrypb::entry_client::EntryClient::new(ch.clone());
    paged(|page_token| {
        let mut client = client.clone();
        async move {
            let r = client
                .list_entries(entrypb::ListEntriesRequest {
                    filter: None,
                    output_mask: None,
                    page_size: PAGE,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((r.entries, r.next_page_token))
        }
    })
    .await
}

/// Splits `src` into the items ward lacks (to create) and counts the rest as present or, when
/// ward's copy differs, failed. `key` names an item; `same` compares content.
fn plan<T>(
    src: Vec<T>,
    dst: Vec<T>,
    key: impl Fn(&T) -> String,
    same: impl Fn(&T, &T) -> bool,
    summary: &mut KindSummary,
    bar: &ProgressBar,
) -> Vec<T> {
    let held: HashMap<String, T> = dst.into_iter().map(|d| (key(&d), d)).collect();
    let mut missing = Vec::new();
    for item in src {
        match held.get(&key(&item)) {
            Some(existing) if same(existing, &item) => {
                summary.present += 1;
                bar.inc(1);
            }
            Some(_) => {
                summary.failed.push((
                    key(&item),
                    "ward holds it with different content; left unchanged".to_owned(),
                ));
                bar.inc(1);
            }
            None => missing.push(item),
        }
    }
    missing
}

/// Records the per-item results of one batch call.
fn record(
    summary: &mut KindSummary,
    names: &[String],
    statuses: impl IntoIterator<Item = Option<types::Status>>,
    bar: &ProgressBar,
) {
    let mut answered = 0;
    for (name, status) in names.iter().zip(statuses) {
        answered += 1;
        let status = status.unwrap_or_default();
        if status.code == 0 {
            summary.created += 1;
        } else {
            summary.failed.push((name.clone(), status.message));
        }
        bar.inc(1);
    }
    for name in names.iter().skip(answered) {
        summary.failed.push((name.clone(), "the server returned no result for it".into()));
        bar.inc(1);
    }
}

/// A bundle's X.509 authorities (DER, tainted) and JWT keys (key id, key, expiry, tainted),
/// sorted: what a federated bundle holds, without its sequence number or refresh hint.
type BundleContent = (Vec<(Vec<u8>, bool)>, Vec<(String, Vec<u8>, i64, bool)>);

fn bundle_content(b: &types::Bundle) -> BundleContent {
    let mut x509: Vec<_> = b.x509_authorities.iter().map(|a| (a.asn1.clone(), a.tainted)).collect();
    x509.sort();
    let mut jwt: Vec<_> = b
        .jwt_authorities
        .iter()
        .map(|k| (k.key_id.clone(), k.public_key.clone(), k.expires_at, k.tainted))
        .collect();
    jwt.sort();
    (x509, jwt)
}

async fn copy_bundles(
    to: &Channel,
    src: Vec<types::Bundle>,
    dst: Vec<types::Bundle>,
    bar: &ProgressBar,
) -> anyhow::Result<KindSummary> {
    let mut summary = KindSummary::default();
    let key = |b: &types::Bundle| b.trust_domain.clone();
    let missing =
        plan(src, dst, key, |a, b| bundle_content(a) == bundle_content(b), &mut summary, bar);
    let mut client = bundlepb::bundle_client::BundleClient::new(to.clone());
    for chunk in missing.chunks(BATCH) {
        let names: Vec<String> = chunk.iter().map(key).collect();
        let resp = client
            .batch_create_federated_bundle(bundlepb::BatchCreateFederatedBundleRequest {
                bundle: chunk.to_vec(),
                output_mask: None,
            })
            .await
            .map_err(status_err)
            .context("creating federated bundles in ward")?
            .into_inner();
        record(&mut summary, &names, resp.results.into_iter().map(|r| r.status), bar);
    }
    Ok(summary)
}

fn relationship_content(r: &types::FederationRelationship) -> types::FederationRelationship {
    types::FederationRelationship { trust_domain_bundle: None, ..r.clone() }
}

async fn copy_relationships(
    to: &Channel,
    src: Vec<types::FederationRelationship>,
    dst: Vec<types::FederationRelationship>,
    bar: &ProgressBar,
) -> anyhow::Result<KindSummary> {
    let mut summary = KindSummary::default();
    let key = |r: &types::FederationRelationship| r.trust_domain.clone();
    let same = |a: &types::FederationRelationship, b: &types::FederationRelationship| {
        relationship_content(a) == relationship_content(b)
    };
    let missing = plan(src, dst, key, same, &mut summary, bar);
    let mut client = tdpb::trust_domain_client::TrustDomainClient::new(to.clone());
    for chunk in missing.chunks(BATCH) {
        let names: Vec<String> = chunk.iter().map(key).collect();
        // The bundle itself was copied with the federated bundles.
        let rels = chunk.iter().map(relationship_content).collect();
        let resp = client
            .batch_create_federation_relationship(tdpb::BatchCreateFederationRelationshipRequest {
                federation_relationships: rels,
                output_mask: None,
            })
            .await
            .map_err(status_err)
            .context("creating federation relationships in ward")?
            .into_inner();
        record(&mut summary, &names, resp.results.into_iter().map(|r| r.status), bar);
    }
    Ok(summary)
}

/// An entry reduced to what an operator set: no revision or creation time, and the
/// unordered lists sorted.
fn entry_content(e: &types::Entry) -> types::Entry {
    let mut e = types::Entry { revision_number: 0, created_at: 0, ..e.clone() };
    e.selectors.sort_by(|a, b| (&a.r#type, &a.value).cmp(&(&b.r#type, &b.value)));
    e.federates_with.sort();
    e
}

async fn copy_entries(
    to: &Channel,
    src: Vec<types::Entry>,
    dst: Vec<types::Entry>,
    bar: &ProgressBar,
) -> anyhow::Result<KindSummary> {
    let mut summary = KindSummary::default();
    let key = |e: &types::Entry| e.id.clone();
    let same = |a: &types::Entry, b: &types::Entry| entry_content(a) == entry_content(b);
    let missing = plan(src, dst, key, same, &mut summary, bar);
    let mut client = entrypb::entry_client::EntryClient::new(to.clone());
    for chunk in missing.chunks(BATCH) {
        let names: Vec<String> = chunk.iter().map(key).collect();
        let entries =
            chunk.iter().map(|e| types::Entry { revision_number: 0, created_at: 0, ..e.clone() });
        let resp = client
            .batch_create_entry(entrypb::BatchCreateEntryRequest {
                entries: entries.collect(),
                output_mask: None,
            })
            .await
            .map_err(status_err)
            .context("creating registration entries in ward")?
            .into_inner();
        record(&mut summary, &names, resp.results.into_iter().map(|r| r.status), bar);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_counts_failures_and_no_op_runs() {
        let mut s = Summary { trust_domain: "example.org".into(), ..Summary::default() };
        s.entries.created = 2;
        s.bundles.present = 1;
        s.relationships.failed.push(("other.org".into(), "why".into()));
        let text = s.render();
        assert!(text.contains("registration entries      2 created, 0 already present, 0 failed"));
        assert!(text.contains("federated bundles         0 created, 1 already present, 0 failed"));
        assert!(text.contains("FAILED federation relationship other.org: why"));
        assert!(!text.contains("Nothing to do"));
        let quiet = Summary {
            trust_domain: "example.org".into(),
            entries: KindSummary { present: 3, ..KindSummary::default() },
            ..Summary::default()
        };
        assert!(
            quiet
                .render()
                .ends_with("Nothing to do: ward already holds everything the SPIRE server has.\n")
        );
    }

    #[test]
    fn entry_content_ignores_revision_and_list_order() {
        let sel = |t: &str, v: &str| types::Selector { r#type: t.into(), value: v.into() };
        let a = types::Entry {
            id: "e1".into(),
            selectors: vec![sel("unix", "uid:1"), sel("k8s", "ns:a")],
            federates_with: vec!["b.org".into(), "a.org".into()],
            revision_number: 3,
            created_at: 100,
            ..Default::default()
        };
        let b = types::Entry {
            selectors: vec![sel("k8s", "ns:a"), sel("unix", "uid:1")],
            federates_with: vec!["a.org".into(), "b.org".into()],
            revision_number: 0,
            created_at: 7,
            ..a.clone()
        };
        assert_eq!(entry_content(&a), entry_content(&b));
        let c = types::Entry { hint: "x".into(), ..b };
        assert_ne!(entry_content(&a), entry_content(&c));
    }
}
