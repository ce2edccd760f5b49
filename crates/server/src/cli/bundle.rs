//! `bundle show|list|set|delete|count`.

use std::path::PathBuf;

use clap::Subcommand;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::types;

use super::{Admin, CliError, CliResult, Common, Ctx, Output, go_quote, plural};
use crate::cli_err;

/// The bundle commands.
#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Prints the server's CA bundle.
    Show(Show),
    /// Lists federated bundles.
    List(List),
    /// Creates or updates a federated bundle.
    Set(Set),
    /// Deletes a federated bundle.
    Delete(Delete),
    /// Counts bundles.
    Count(CountArgs),
}

/// Flags of `bundle show`.
#[derive(clap::Args, Debug)]
pub struct Show {
    /// The format to show the bundle in (pretty output only): "pem" or "spiffe".
    #[arg(long = "format", default_value = "pem")]
    pub format: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `bundle list`.
#[derive(clap::Args, Debug)]
pub struct List {
    /// SPIFFE ID of the trust domain.
    #[arg(long = "id", default_value = "")]
    pub id: String,
    /// The format to list bundles in (pretty output only): "pem" or "spiffe".
    #[arg(long = "format", default_value = "pem")]
    pub format: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `bundle set`.
#[derive(clap::Args, Debug)]
pub struct Set {
    /// SPIFFE ID of the trust domain.
    #[arg(long = "id", default_value = "")]
    pub id: String,
    /// Path to the bundle data (stdin when absent).
    #[arg(long = "path")]
    pub path: Option<PathBuf>,
    /// The format of the bundle data: "pem" or "spiffe".
    #[arg(long = "format", default_value = "pem")]
    pub format: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `bundle delete`.
#[derive(clap::Args, Debug)]
pub struct Delete {
    /// SPIFFE ID of the trust domain.
    #[arg(long = "id", default_value = "")]
    pub id: String,
    /// Deletion mode: one of restrict, delete, or dissociate.
    #[arg(long = "mode", default_value = "restrict")]
    pub mode: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `bundle count`.
#[derive(clap::Args, Debug)]
pub struct CountArgs {
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Runs a bundle command.
pub async fn run(cmd: BundleCmd) -> Output {
    let common = match &cmd {
        BundleCmd::Show(a) => a.common.clone(),
        BundleCmd::List(a) => a.common.clone(),
        BundleCmd::Set(a) => a.common.clone(),
        BundleCmd::Delete(a) => a.common.clone(),
        BundleCmd::Count(a) => a.common.clone(),
    };
    super::with_admin(&common, |mut ctx, admin| async move {
        let r = match &cmd {
            BundleCmd::Show(a) => show(&mut ctx, &admin, a).await,
            BundleCmd::List(a) => list(&mut ctx, &admin, a).await,
            BundleCmd::Set(a) => set(&mut ctx, &admin, a).await,
            BundleCmd::Delete(a) => delete(&mut ctx, &admin, a).await,
            BundleCmd::Count(_) => count(&mut ctx, &admin).await,
        };
        (ctx, r)
    })
    .await
}

fn client(admin: &Admin) -> bundlepb::bundle_client::BundleClient<tonic::transport::Channel> {
    bundlepb::bundle_client::BundleClient::new(admin.channel())
}

/// `pem` or `spiffe` (case-insensitive; empty is `pem`).
fn validate_format(format: &str) -> Result<String, CliError> {
    let f = if format.is_empty() { "pem".to_owned() } else { format.to_lowercase() };
    match f.as_str() {
        "pem" | "spiffe" => Ok(f),
        _ => Err(cli_err!("invalid format: {}", go_quote(&f))),
    }
}

/// Prints `bundle` in `format`, with a `* <trust domain>` banner when `header` is set.
fn print_bundle(ctx: &mut Ctx, bundle: &types::Bundle, format: &str, header: bool) -> CliResult {
    let format = validate_format(format)?;
    if header {
        ctx.print(&format!(
            "****************************************\n* {}\n****************************************\n",
            bundle.trust_domain
        ));
    }
    if format == "pem" {
        for a in &bundle.x509_authorities {
            ctx.print(&pem::encode_config(
                &pem::Pem::new("CERTIFICATE", a.asn1.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            ));
        }
        return Ok(());
    }
    let core = ward_proto::convert::bundle_from_proto(bundle).map_err(|e| cli_err!("{e}"))?;
    let json = core.to_spiffe_json().map_err(|e| cli_err!("{e}"))?;
    let value: serde_json::Value = serde_json::from_str(&json).map_err(|e| cli_err!("{e}"))?;
    ctx.print(&indent4(&value));
    ctx.print("\n");
    Ok(())
}

/// `value` indented with four spaces, as SPIRE's CLI prints a SPIFFE bundle document: members
/// in the order go-spiffe and go-jose write them (`keys`, `spiffe_sequence`,
/// `spiffe_refresh_hint`; in a key `use`, `kty`, `kid`, `crv`, `alg`, `x`, `y`, `n`, `e`,
/// `x5c`), anything else after them in name order.
fn indent4(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_indented(value, 0, &mut out);
    out
}

const MEMBER_ORDER: &[&str] = &[
    "keys",
    "spiffe_sequence",
    "spiffe_refresh_hint",
    "use",
    "kty",
    "kid",
    "crv",
    "alg",
    "k",
    "x",
    "y",
    "n",
    "e",
    "x5c",
];

fn write_indented(value: &serde_json::Value, depth: usize, out: &mut String) {
    use serde_json::Value;
    let pad = |d: usize| "    ".repeat(d);
    match value {
        Value::Object(map) if !map.is_empty() => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| {
                (MEMBER_ORDER.iter().position(|m| m == k).unwrap_or(MEMBER_ORDER.len()), k.as_str())
            });
            out.push_str("{\n");
            for (i, k) in keys.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push_str(": ");
                if let Some(v) = map.get(*k) {
                    write_indented(v, depth + 1, out);
                }
                out.push_str(if i + 1 < keys.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push('}');
        }
        Value::Array(items) if !items.is_empty() => {
            out.push_str("[\n");
            for (i, v) in items.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                write_indented(v, depth + 1, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

async fn show(ctx: &mut Ctx, admin: &Admin, a: &Show) -> CliResult {
    let b = client(admin)
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await
        .map_err(|s| cli_err!("{}", admin.status(&s)))?
        .into_inner();
    ctx.print_proto(&b, |ctx, b| print_bundle(ctx, b, &a.format, false))
}

async fn list(ctx: &mut Ctx, admin: &Admin, a: &List) -> CliResult {
    let mut client = client(admin);
    if !a.id.is_empty() {
        let b = client
            .get_federated_bundle(bundlepb::GetFederatedBundleRequest {
                trust_domain: a.id.clone(),
                output_mask: None,
            })
            .await
            .map_err(|s| cli_err!("{}", admin.status(&s)))?
            .into_inner();
        return ctx.print_proto(&b, |ctx, b| print_bundle(ctx, b, &a.format, false));
    }
    let resp = client
        .list_federated_bundles(bundlepb::ListFederatedBundlesRequest::default())
        .await
        .map_err(|s| cli_err!("{}", admin.status(&s)))?
        .into_inner();
    ctx.print_proto(&resp, |ctx, resp| {
        for (i, b) in resp.bundles.iter().enumerate() {
            if i != 0 {
                ctx.print("\n");
            }
            print_bundle(ctx, b, &a.format, true)?;
        }
        Ok(())
    })
}

/// Reads bundle data as SPIRE's CLI does: a PEM file of X.509 authorities, or a SPIFFE
/// bundle document for the trust domain `id`.
///
/// # Errors
/// SPIRE's texts (`unable to parse bundle data: no PEM blocks`, ...).
pub fn parse_bundle(data: &[u8], format: &str, id: &str) -> Result<types::Bundle, CliError> {
    if format == "pem" {
        // Like Go's PEM decoder: text around the blocks is ignored.
        let blocks = pem::parse_many(data).unwrap_or_default();
        if blocks.is_empty() {
            return Err(cli_err!("unable to parse bundle data: no PEM blocks"));
        }
        let mut ders = Vec::new();
        for b in blocks {
            if b.tag() != "CERTIFICATE" {
                return Err(cli_err!(
                    "unable to parse bundle data: expected block type \"CERTIFICATE\"; got {}",
                    go_quote(b.tag())
                ));
            }
            use x509_parser::prelude::FromDer;
            if x509_parser::certificate::X509Certificate::from_der(b.contents()).is_err() {
                return Err(cli_err!("unable to parse bundle data: x509: malformed certificate"));
            }
            ders.push(b.into_contents());
        }
        return Ok(types::Bundle {
            trust_domain: id.to_owned(),
            x509_authorities: ders
                .into_iter()
                .map(|asn1| types::X509Certificate { asn1, tainted: false })
                .collect(),
            ..Default::default()
        });
    }
    let td = ward_core::TrustDomain::parse(id).map_err(|e| cli_err!("{e}"))?;
    if let Some(reason) = ec_key_problem(data) {
        return Err(cli_err!(
            "unable to parse to spiffe bundle: spiffebundle: unable to parse JWKS: {reason}"
        ));
    }
    let core = ward_core::bundle::Bundle::from_spiffe_json(td, data).map_err(|e| {
        cli_err!("unable to parse to spiffe bundle: spiffebundle: unable to parse JWKS: {e}")
    })?;
    Ok(ward_proto::convert::bundle_to_proto(&core, None))
}

/// The first EC key of a JWKS whose coordinates do not fit its curve, in the words of the
/// JOSE library SPIRE's CLI uses (ward's own decoder names the key instead).
fn ec_key_problem(data: &[u8]) -> Option<String> {
    use base64::Engine;
    let doc: serde_json::Value = serde_json::from_slice(data).ok()?;
    for key in doc.get("keys")?.as_array()? {
        if key.get("kty").and_then(|k| k.as_str()) != Some("EC") {
            continue;
        }
        let crv = key.get("crv").and_then(|c| c.as_str()).unwrap_or_default();
        let size = match crv {
            "P-256" => 32,
            "P-384" => 48,
            "P-521" => 66,
            other => return Some(format!("go-jose/go-jose: unsupported elliptic curve '{other}'")),
        };
        let coordinate = |name: &str| {
            let text = key.get(name)?.as_str()?;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
        };
        let (Some(x), Some(y)) = (coordinate("x"), coordinate("y")) else {
            return Some("go-jose/go-jose: invalid EC key, missing x/y values".to_owned());
        };
        for (name, value) in [("x", x), ("y", y)] {
            if value.len() != size {
                return Some(format!(
                    "go-jose/go-jose: invalid EC public key, wrong length for {name}"
                ));
            }
        }
    }
    None
}

async fn set(ctx: &mut Ctx, admin: &Admin, a: &Set) -> CliResult {
    if a.id.is_empty() {
        return Err(cli_err!("id flag is required"));
    }
    let format = validate_format(&a.format)?;
    let data = match &a.path {
        Some(p) => std::fs::read(p).map_err(|e| {
            cli_err!("unable to load bundle data: open {}: {}", p.display(), io_text(&e))
        })?,
        None => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(|e| cli_err!("unable to load bundle data: {}", io_text(&e)))?;
            buf
        }
    };
    let bundle = parse_bundle(&data, &format, &a.id)?;
    let resp = client(admin)
        .batch_set_federated_bundle(bundlepb::BatchSetFederatedBundleRequest {
            bundle: vec![bundle],
            output_mask: None,
        })
        .await
        .map_err(|s| cli_err!("failed to set federated bundle: {}", admin.status(&s)))?
        .into_inner();
    ctx.print_proto(&resp, |ctx, resp| {
        let status = resp.results.first().and_then(|r| r.status.clone()).unwrap_or_default();
        if status.code == 0 {
            ctx.print("bundle set.\n");
            Ok(())
        } else {
            Err(cli_err!("failed to set federated bundle: {}", status.message))
        }
    })
}

/// An I/O error's text as Go prints it (`no such file or directory`).
pub fn io_text(e: &std::io::Error) -> String {
    super::os_error_text(e)
}

async fn delete(ctx: &mut Ctx, admin: &Admin, a: &Delete) -> CliResult {
    if a.id.is_empty() {
        return Err(cli_err!("id is required"));
    }
    use bundlepb::batch_delete_federated_bundle_request::Mode;
    let mode = match a.mode.as_str() {
        "" | "restrict" => Mode::Restrict,
        "dissociate" => Mode::Dissociate,
        "delete" => Mode::Delete,
        other => return Err(cli_err!("unsupported mode {}", go_quote(other))),
    };
    let resp = client(admin)
        .batch_delete_federated_bundle(bundlepb::BatchDeleteFederatedBundleRequest {
            trust_domains: vec![a.id.clone()],
            mode: mode as i32,
        })
        .await
        .map_err(|s| cli_err!("failed to delete federated bundle: {}", admin.status(&s)))?
        .into_inner();
    ctx.print_proto(&resp, |ctx, resp| {
        let r = resp.results.first().map(|r| (r.status.clone(), r.trust_domain.as_str()));
        print_deleted(ctx, r, "bundle deleted.", "federated bundle")
    })
}

/// Prints the one result of a delete by trust domain: `done` when it succeeded, else the
/// error `failed to delete <what> "<trust domain>": <message>`.
pub fn print_deleted(
    ctx: &mut Ctx,
    result: Option<(Option<types::Status>, &str)>,
    done: &str,
    what: &str,
) -> CliResult {
    let Some((status, trust_domain)) = result else {
        return Err(cli_err!("internal error: cli printer; please report this bug"));
    };
    let status = status.unwrap_or_default();
    if status.code != 0 {
        return Err(cli_err!(
            "failed to delete {what} {}: {}",
            go_quote(trust_domain),
            status.message
        ));
    }
    ctx.print(done);
    ctx.print("\n");
    Ok(())
}

async fn count(ctx: &mut Ctx, admin: &Admin) -> CliResult {
    let resp = client(admin)
        .count_bundles(bundlepb::CountBundlesRequest {})
        .await
        .map_err(|s| cli_err!("{}", admin.status(&s)))?
        .into_inner();
    ctx.print_proto(&resp, |ctx, resp| {
        let n = usize::try_from(resp.count).unwrap_or_default();
        ctx.print(&format!("{}\n", plural(&format!("{n} "), "bundle", "bundles", n)));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_keys_of_the_wrong_size_read_as_go_jose_words_them() {
        let doc = br#"{"keys":[{"use":"jwt-svid","kty":"EC","kid":"k","crv":"P-256","x":"AAAA","y":"AAAA"}]}"#;
        assert_eq!(
            parse_bundle(doc, "spiffe", "spiffe://a.org").unwrap_err().to_string(),
            "unable to parse to spiffe bundle: spiffebundle: unable to parse JWKS: \
             go-jose/go-jose: invalid EC public key, wrong length for x"
        );
        let doc = br#"{"keys":[{"use":"jwt-svid","kty":"EC","kid":"k","crv":"P-999"}]}"#;
        assert!(
            parse_bundle(doc, "spiffe", "spiffe://a.org")
                .unwrap_err()
                .to_string()
                .ends_with("unsupported elliptic curve 'P-999'")
        );
    }

    #[test]
    fn bundle_formats() {
        assert_eq!(validate_format("").unwrap(), "pem");
        assert_eq!(validate_format("SPIFFE").unwrap(), "spiffe");
        assert_eq!(validate_format("jwks").unwrap_err().to_string(), "invalid format: \"jwks\"");
    }

    #[test]
    fn bad_pem_reads_like_spire() {
        assert_eq!(
            parse_bundle(b"not pem\n", "pem", "spiffe://a.org").unwrap_err().to_string(),
            "unable to parse bundle data: no PEM blocks"
        );
        assert_eq!(
            parse_bundle(b"", "pem", "spiffe://a.org").unwrap_err().to_string(),
            "unable to parse bundle data: no PEM blocks"
        );
    }

    #[test]
    fn spiffe_documents_indent_with_four_spaces_in_go_order() {
        let v = serde_json::json!({"keys": []});
        assert_eq!(indent4(&v), "{\n    \"keys\": []\n}");
        let v = serde_json::json!({
            "spiffe_sequence": 2,
            "keys": [{"x5c": ["AA"], "y": "Y", "x": "X", "crv": "P-256", "kty": "EC", "use": "x509-svid"}],
        });
        assert_eq!(
            indent4(&v),
            "{\n    \"keys\": [\n        {\n            \"use\": \"x509-svid\",\n            \"kty\": \"EC\",\n\
             \x20           \"crv\": \"P-256\",\n            \"x\": \"X\",\n            \"y\": \"Y\",\n\
             \x20           \"x5c\": [\n                \"AA\"\n            ]\n        }\n    ],\n\
             \x20   \"spiffe_sequence\": 2\n}"
        );
    }
}
