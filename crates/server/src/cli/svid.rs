//! `x509 mint` and `jwt mint`.

use std::path::{Path, PathBuf};

use base64::Engine;
use clap::Subcommand;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::svid::v1 as svidpb;

use super::agent::parse_go_duration;
use super::{Admin, CliError, CliResult, Common, Ctx, Format, Output, checked_i32, parse_id};
use crate::cli_err;

/// The x509 commands.
#[derive(Subcommand, Debug)]
pub enum X509Cmd {
    /// Mints an X509-SVID.
    Mint(X509Mint),
}

/// The jwt commands.
#[derive(Subcommand, Debug)]
pub enum JwtCmd {
    /// Mints a JWT-SVID.
    Mint(JwtMint),
}

/// Flags of `x509 mint`.
#[derive(clap::Args, Debug)]
pub struct X509Mint {
    /// SPIFFE ID of the X509-SVID.
    #[arg(long = "spiffeID", default_value = "")]
    pub spiffe_id: String,
    /// TTL of the X509-SVID (Go duration; 0 is the server default).
    #[arg(long = "ttl", default_value = "0s", value_parser = parse_go_duration, allow_hyphen_values = true)]
    pub ttl: i64,
    /// DNS name included in the SVID. Can be used more than once.
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// Directory to write the SVID, key and bundle to instead of stdout.
    #[arg(long = "write", default_value = "")]
    pub write: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `jwt mint`.
#[derive(clap::Args, Debug)]
pub struct JwtMint {
    /// SPIFFE ID of the JWT-SVID.
    #[arg(long = "spiffeID", default_value = "")]
    pub spiffe_id: String,
    /// TTL of the JWT-SVID (Go duration; 0 is the server default).
    #[arg(long = "ttl", default_value = "0s", value_parser = parse_go_duration, allow_hyphen_values = true)]
    pub ttl: i64,
    /// Audience claim of the SVID. Can be used more than once.
    #[arg(long = "audience")]
    pub audience: Vec<String>,
    /// File to write the token to instead of stdout.
    #[arg(long = "write", default_value = "")]
    pub write: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

const NANOS: i64 = 1_000_000_000;

/// A Go duration in nanoseconds rounded up to whole seconds, as an `int32`.
fn ttl_seconds(ttl_nanos: i64) -> Result<i32, CliError> {
    // Go's integer division truncates toward zero, as Rust's does.
    let secs = ttl_nanos.saturating_add(NANOS - 1) / NANOS;
    checked_i32(secs).map_err(|e| cli_err!("invalid value for TTL: {e}"))
}

fn now_nanos() -> i128 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos()
}

/// Runs an x509 command.
pub async fn run_x509(cmd: X509Cmd) -> Output {
    let X509Cmd::Mint(a) = cmd;
    let common = a.common.clone();
    super::with_admin(&common, |mut ctx, admin| async move {
        let r = x509_mint(&mut ctx, &admin, &a).await;
        (ctx, r)
    })
    .await
}

/// Runs a jwt command.
pub async fn run_jwt(cmd: JwtCmd) -> Output {
    let JwtCmd::Mint(a) = cmd;
    let common = a.common.clone();
    super::with_admin(&common, |mut ctx, admin| async move {
        let r = jwt_mint(&mut ctx, &admin, &a).await;
        (ctx, r)
    })
    .await
}

/// A fresh P-256 key and a CSR for `spiffe_id` and `dns`, as (CSR DER, PKCS#8 DER).
fn key_and_csr(spiffe_id: &str, dns: &[String]) -> Result<(Vec<u8>, Vec<u8>), CliError> {
    use rcgen::{CertificateParams, KeyPair, SanType};
    let key = KeyPair::generate().map_err(|e| cli_err!("unable to generate key: {e}"))?;
    let mut params = CertificateParams::default();
    let uri = spiffe_id.try_into().map_err(|e| cli_err!("unable to generate CSR: {e}"))?;
    params.subject_alt_names.push(SanType::URI(uri));
    for d in dns {
        let name = d.as_str().try_into().map_err(|e| cli_err!("unable to generate CSR: {e}"))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr =
        params.serialize_request(&key).map_err(|e| cli_err!("unable to generate CSR: {e}"))?;
    Ok((csr.der().to_vec(), key.serialize_der()))
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// `open <path>: <reason>`, as Go words a failed open.
fn open_error(path: &Path, e: &std::io::Error) -> String {
    format!("open {}: {}", path.display(), super::os_error_text(e))
}

/// Writes `data` to `path` with `mode` permissions (created or truncated).
fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)
}

async fn x509_mint(ctx: &mut Ctx, admin: &Admin, a: &X509Mint) -> CliResult {
    if a.spiffe_id.is_empty() {
        return Err(cli_err!("spiffeID must be specified"));
    }
    let id = parse_id(&a.spiffe_id)?;
    let ttl = ttl_seconds(a.ttl)?;
    let (csr, key) = key_and_csr(&super::id_string(Some(&id)), &a.dns)?;
    let resp = svidpb::svid_client::SvidClient::new(admin.channel())
        .mint_x509svid(svidpb::MintX509svidRequest { csr, ttl })
        .await
        .map_err(|s| cli_err!("unable to mint SVID: {}", admin.status(&s)))?
        .into_inner();
    let svid = resp.svid.unwrap_or_default();
    if svid.cert_chain.is_empty() {
        return Err(cli_err!("server response missing SVID chain"));
    }
    let ca = bundlepb::bundle_client::BundleClient::new(admin.channel())
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await
        .map_err(|s| cli_err!("unable to get bundle: {}", admin.status(&s)))?
        .into_inner();
    if ca.x509_authorities.is_empty() {
        return Err(cli_err!("server response missing X509 Authorities"));
    }
    if i128::from(svid.expires_at) * i128::from(NANOS) - now_nanos() < i128::from(a.ttl) {
        ctx.eprint(&format!(
            "X509-SVID lifetime was capped shorter than specified ttl; expires \"{}\"\n",
            super::printer::rfc3339_utc(svid.expires_at)
        ));
    }
    let roots: Vec<Vec<u8>> = ca.x509_authorities.into_iter().map(|c| c.asn1).collect();
    let svid_pem: String = svid.cert_chain.iter().map(|c| pem_block("CERTIFICATE", c)).collect();
    let key_pem = pem_block("PRIVATE KEY", &key);
    let bundle_pem: String = roots.iter().map(|c| pem_block("CERTIFICATE", c)).collect();
    if !a.write.is_empty() {
        let dir = PathBuf::from(&a.write);
        let svid_path = dir.join("svid.pem");
        let key_path = dir.join("key.pem");
        let bundle_path = dir.join("bundle.pem");
        write_file(&svid_path, svid_pem.as_bytes(), 0o644)
            .map_err(|e| cli_err!("unable to write SVID: {}", open_error(&svid_path, &e)))?;
        ctx.print(&format!("X509-SVID written to {}\n", svid_path.display()));
        write_file(&key_path, key_pem.as_bytes(), 0o600)
            .map_err(|e| cli_err!("unable to write key: {}", open_error(&key_path, &e)))?;
        ctx.print(&format!("Private key written to {}\n", key_path.display()));
        write_file(&bundle_path, bundle_pem.as_bytes(), 0o644)
            .map_err(|e| cli_err!("unable to write bundle: {}", open_error(&bundle_path, &e)))?;
        ctx.print(&format!("Root CAs written to {}\n", bundle_path.display()));
        return Ok(());
    }
    match ctx.format {
        Format::Json => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let list = |items: &[Vec<u8>]| {
                items.iter().map(|d| format!("\"{}\"", b64.encode(d))).collect::<Vec<_>>().join(",")
            };
            // SPIRE's CLI prints this struct's fields in declaration order, inside a list.
            ctx.print(&format!(
                "[{{\"x509_svid\":[{}],\"private_key\":\"{}\",\"root_cas\":[{}]}}]\n",
                list(&svid.cert_chain),
                b64.encode(&key),
                list(&roots)
            ));
        }
        Format::Pretty => {
            ctx.print(&format!("X509-SVID:\n{svid_pem}\n"));
            ctx.print(&format!("Private key:\n{key_pem}\n"));
            ctx.print(&format!("Root CAs:\n{bundle_pem}\n"));
        }
    }
    Ok(())
}

/// The `exp` claim of a compact JWT, without verifying it.
fn jwt_expiry(token: &str) -> Result<i64, String> {
    let payload = token.split('.').nth(1).ok_or("compact JWS format must have three parts")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| e.to_string())?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    claims.get("exp").and_then(serde_json::Value::as_i64).ok_or_else(|| "no expiry claim".into())
}

async fn jwt_mint(ctx: &mut Ctx, admin: &Admin, a: &JwtMint) -> CliResult {
    if a.spiffe_id.is_empty() {
        return Err(cli_err!("spiffeID must be specified"));
    }
    if a.audience.is_empty() {
        return Err(cli_err!("at least one audience must be specified"));
    }
    let id = parse_id(&a.spiffe_id)?;
    let ttl = ttl_seconds(a.ttl)?;
    let resp = svidpb::svid_client::SvidClient::new(admin.channel())
        .mint_jwtsvid(svidpb::MintJwtsvidRequest {
            id: Some(id),
            audience: a.audience.clone(),
            ttl,
        })
        .await
        .map_err(|s| cli_err!("unable to mint SVID: {}", admin.status(&s)))?
        .into_inner();
    let token = resp.svid.as_ref().map(|s| s.token.clone()).unwrap_or_default();
    if token.is_empty() {
        return Err(cli_err!("server response missing token"));
    }
    match jwt_expiry(&token) {
        Err(e) => ctx.eprint(&format!("Unable to determine JWT-SVID lifetime: {e}\n")),
        Ok(exp) => {
            if i128::from(exp) * i128::from(NANOS) - now_nanos() < i128::from(a.ttl) {
                ctx.eprint(&format!(
                    "JWT-SVID lifetime was capped shorter than specified ttl; expires \"{}\"\n",
                    super::printer::rfc3339_utc(exp)
                ));
            }
        }
    }
    if !a.write.is_empty() {
        write_file(Path::new(&a.write), token.as_bytes(), 0o600).map_err(|e| {
            cli_err!("unable to write token: {}", open_error(Path::new(&a.write), &e))
        })?;
        ctx.print(&format!("JWT-SVID written to {}\n", a.write));
        return Ok(());
    }
    ctx.print_proto(&resp, |ctx, _| {
        ctx.print(&format!("{token}\n"));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_seconds_like_go() {
        assert_eq!(ttl_seconds(0).unwrap(), 0);
        assert_eq!(ttl_seconds(1).unwrap(), 1);
        assert_eq!(ttl_seconds(30 * 60 * NANOS).unwrap(), 1800);
        assert_eq!(ttl_seconds(-60 * NANOS).unwrap(), -59);
    }

    #[test]
    fn csr_carries_the_spiffe_id_and_dns_names() {
        let (csr, key) = key_and_csr("spiffe://example.org/w", &["a.example.org".into()]).unwrap();
        assert!(ward_ca::verify_csr(&csr).is_ok());
        assert!(!key.is_empty());
        use x509_parser::prelude::{
            FromDer, GeneralName, ParsedExtension, X509CertificationRequest,
        };
        let (_, req) = X509CertificationRequest::from_der(&csr).unwrap();
        let mut names = Vec::new();
        for ext in req.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    match n {
                        GeneralName::URI(u) => names.push(format!("uri:{u}")),
                        GeneralName::DNSName(d) => names.push(format!("dns:{d}")),
                        _ => {}
                    }
                }
            }
        }
        assert_eq!(names, ["uri:spiffe://example.org/w", "dns:a.example.org"]);
    }

    #[test]
    fn jwt_expiry_reads_the_exp_claim() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!("h.{}.s", b64.encode(br#"{"exp":1700000000}"#));
        assert_eq!(jwt_expiry(&token), Ok(1_700_000_000));
        assert_eq!(jwt_expiry("nope"), Err("compact JWS format must have three parts".into()));
    }
}
