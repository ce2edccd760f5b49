//! `federation create|list|show|update|delete|refresh`.

use clap::Subcommand;
use types::federation_relationship::BundleEndpointProfile;
use ward_proto::spire::api::server::trustdomain::v1 as tdpb;
use ward_proto::spire::api::types;

use super::{Admin, CliError, CliResult, Common, Ctx, Output, code_name, go_quote, plural};
use crate::cli_err;

/// The federation commands.
#[derive(Subcommand, Debug)]
pub enum FederationCmd {
    /// Creates a federation relationship with a foreign trust domain.
    Create(Relationship),
    /// Updates a federation relationship.
    Update(Relationship),
    /// Lists federation relationships.
    List(ListArgs),
    /// Shows a federation relationship.
    Show(ShowArgs),
    /// Deletes a federation relationship.
    Delete(ById),
    /// Refreshes the bundle of a federated trust domain.
    Refresh(ById),
}

/// Flags of `federation create` and `federation update`.
#[derive(clap::Args, Debug)]
pub struct Relationship {
    /// Path to a JSON file of federation relationships ('-' for stdin).
    #[arg(long = "data", default_value = "")]
    pub data: String,
    /// Name of the trust domain to federate with (e.g., example.org).
    #[arg(long = "trustDomain", default_value = "")]
    pub trust_domain: String,
    /// URL of the SPIFFE bundle endpoint that serves the trust bundle (HTTPS).
    #[arg(long = "bundleEndpointURL", default_value = "")]
    pub bundle_endpoint_url: String,
    /// Endpoint profile type ("https_web" or "https_spiffe").
    #[arg(long = "bundleEndpointProfile", default_value = "")]
    pub bundle_endpoint_profile: String,
    /// SPIFFE ID of the bundle endpoint server (https_spiffe only).
    #[arg(long = "endpointSpiffeID", default_value = "")]
    pub endpoint_spiffe_id: String,
    /// Path to the trust domain bundle data.
    #[arg(long = "trustDomainBundlePath", default_value = "")]
    pub trust_domain_bundle_path: String,
    /// The format of the bundle data: "pem" or "spiffe".
    #[arg(long = "trustDomainBundleFormat", default_value = "pem")]
    pub trust_domain_bundle_format: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `federation list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `federation show`.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The trust domain name of the federation relationship to show.
    #[arg(long = "trustDomain", default_value = "")]
    pub trust_domain: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// `-id` of one relationship.
#[derive(clap::Args, Debug)]
pub struct ById {
    /// SPIFFE ID of the trust domain.
    #[arg(long = "id", default_value = "")]
    pub id: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Runs a federation command.
pub async fn run(cmd: FederationCmd) -> Output {
    let common = match &cmd {
        FederationCmd::Create(a) | FederationCmd::Update(a) => a.common.clone(),
        FederationCmd::List(a) => a.common.clone(),
        FederationCmd::Show(a) => a.common.clone(),
        FederationCmd::Delete(a) | FederationCmd::Refresh(a) => a.common.clone(),
    };
    super::with_admin(&common, |mut ctx, admin| async move {
        let r = match &cmd {
            FederationCmd::Create(a) => create_or_update(&mut ctx, &admin, a, true).await,
            FederationCmd::Update(a) => create_or_update(&mut ctx, &admin, a, false).await,
            FederationCmd::List(_) => list(&mut ctx, &admin).await,
            FederationCmd::Show(a) => show(&mut ctx, &admin, a).await,
            FederationCmd::Delete(a) => delete(&mut ctx, &admin, a).await,
            FederationCmd::Refresh(a) => refresh(&mut ctx, &admin, a).await,
        };
        (ctx, r)
    })
    .await
}

fn client(
    admin: &Admin,
) -> tdpb::trust_domain_client::TrustDomainClient<tonic::transport::Channel> {
    tdpb::trust_domain_client::TrustDomainClient::new(admin.channel())
}

/// A relationship as printed by SPIRE's CLI.
pub fn format_relationship(fr: &types::FederationRelationship) -> String {
    let mut s = format!(
        "Trust domain              : {}\nBundle endpoint URL       : {}\n",
        fr.trust_domain, fr.bundle_endpoint_url
    );
    match &fr.bundle_endpoint_profile {
        Some(BundleEndpointProfile::HttpsWeb(_)) => {
            s.push_str("Bundle endpoint profile   : https_web\n");
        }
        Some(BundleEndpointProfile::HttpsSpiffe(p)) => {
            s.push_str("Bundle endpoint profile   : https_spiffe\n");
            s.push_str(&format!("Endpoint SPIFFE ID        : {}\n", p.endpoint_spiffe_id));
        }
        None => {}
    }
    s
}

/// One relationship of a `-data` file (SPIRE's camel-case names).
#[derive(serde::Deserialize, Default, Clone)]
#[serde(default, rename_all = "camelCase")]
struct RelationshipConfig {
    trust_domain: String,
    #[serde(rename = "bundleEndpointURL")]
    bundle_endpoint_url: String,
    bundle_endpoint_profile: String,
    #[serde(rename = "endpointSPIFFEID")]
    endpoint_spiffe_id: String,
    trust_domain_bundle: Option<serde_json::Value>,
    trust_domain_bundle_format: String,
    #[serde(skip)]
    trust_domain_bundle_path: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RelationshipsFile {
    federation_relationships: Vec<RelationshipConfig>,
}

fn to_proto(c: &RelationshipConfig) -> Result<types::FederationRelationship, CliError> {
    if c.trust_domain.is_empty() {
        return Err(cli_err!("trust domain is required"));
    }
    if c.bundle_endpoint_url.is_empty() {
        return Err(cli_err!("bundle endpoint URL is required"));
    }
    let mut bundle_td = c.trust_domain.clone();
    let profile = match c.bundle_endpoint_profile.as_str() {
        "https_web" => BundleEndpointProfile::HttpsWeb(types::HttpsWebProfile {}),
        "https_spiffe" => {
            if c.endpoint_spiffe_id.is_empty() {
                return Err(cli_err!(
                    "endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set"
                ));
            }
            let id = super::parse_id(&c.endpoint_spiffe_id)
                .map_err(|e| cli_err!("cannot parse bundle endpoint SPIFFE ID: {e}"))?;
            bundle_td = id.trust_domain;
            BundleEndpointProfile::HttpsSpiffe(types::HttpsspiffeProfile {
                endpoint_spiffe_id: c.endpoint_spiffe_id.clone(),
            })
        }
        other => {
            return Err(cli_err!("unknown bundle endpoint profile type: {}", go_quote(other)));
        }
    };
    let bundle = if !c.trust_domain_bundle_path.is_empty() {
        let data = std::fs::read(&c.trust_domain_bundle_path).map_err(|e| {
            cli_err!(
                "cannot read bundle file: open {}: {}",
                c.trust_domain_bundle_path,
                super::os_error_text(&e)
            )
        })?;
        Some(
            super::bundle::parse_bundle(&data, &c.trust_domain_bundle_format, &bundle_td)
                .map_err(|e| cli_err!("cannot parse bundle file: {e}"))?,
        )
    } else if let Some(raw) = &c.trust_domain_bundle {
        let data = match c.trust_domain_bundle_format.as_str() {
            "pem" => match raw {
                serde_json::Value::String(s) => s.clone().into_bytes(),
                _ => {
                    return Err(cli_err!(
                        "cannot parse bundle raw message: failed to unmarshal json: json: cannot \
                         unmarshal {} into Go value of type string",
                        json_kind(raw)
                    ));
                }
            },
            "spiffe" => raw.to_string().into_bytes(),
            other => {
                return Err(cli_err!(
                    "cannot parse bundle raw message: bundle format {} is unsupported",
                    go_quote(other)
                ));
            }
        };
        Some(
            super::bundle::parse_bundle(&data, &c.trust_domain_bundle_format, &bundle_td)
                .map_err(|e| cli_err!("cannot parse bundle raw message: {e}"))?,
        )
    } else {
        None
    };
    Ok(types::FederationRelationship {
        trust_domain: c.trust_domain.clone(),
        bundle_endpoint_url: c.bundle_endpoint_url.clone(),
        bundle_endpoint_profile: Some(profile),
        trust_domain_bundle: bundle,
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Object(_) => "object",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::Bool(_) => "bool",
        _ => "null",
    }
}

fn relationships(a: &Relationship) -> Result<Vec<types::FederationRelationship>, CliError> {
    let config = RelationshipConfig {
        trust_domain: a.trust_domain.clone(),
        bundle_endpoint_url: a.bundle_endpoint_url.clone(),
        bundle_endpoint_profile: a.bundle_endpoint_profile.clone(),
        endpoint_spiffe_id: a.endpoint_spiffe_id.clone(),
        trust_domain_bundle: None,
        trust_domain_bundle_format: a.trust_domain_bundle_format.clone(),
        trust_domain_bundle_path: a.trust_domain_bundle_path.clone(),
    };
    if a.data.is_empty() {
        return Ok(vec![to_proto(&config)?]);
    }
    let empty = config.bundle_endpoint_profile.is_empty()
        && config.bundle_endpoint_url.is_empty()
        && config.trust_domain_bundle_format == "pem"
        && config.trust_domain_bundle_path.is_empty()
        && config.endpoint_spiffe_id.is_empty()
        && config.trust_domain.is_empty();
    if !empty {
        return Err(cli_err!(
            "cannot use other flags to specify relationship fields when 'data' flag is set"
        ));
    }
    let data = super::entry::read_input(&a.data)?;
    let file: RelationshipsFile = serde_json::from_slice(&data)
        .map_err(|e| cli_err!("failed to parse JSON: {}", super::entry::json_error(&e)))?;
    let mut out = Vec::new();
    for (i, c) in file.federation_relationships.iter().enumerate() {
        out.push(to_proto(c).map_err(|e| cli_err!("could not parse item {i}: {e}"))?);
    }
    Ok(out)
}

async fn create_or_update(
    ctx: &mut Ctx,
    admin: &Admin,
    a: &Relationship,
    create: bool,
) -> CliResult {
    let sent = relationships(a)?;
    let federation_relationships = sent.clone();
    let mut client = client(admin);
    let failed = |s: tonic::Status| cli_err!("request failed: {}", admin.status(&s));
    // (status, relationship) per result, and the response as JSON.
    let (results, json): (Vec<(Option<types::Status>, Option<types::FederationRelationship>)>, _) =
        if create {
            let resp = client
                .batch_create_federation_relationship(
                    tdpb::BatchCreateFederationRelationshipRequest {
                        federation_relationships,
                        output_mask: None,
                    },
                )
                .await
                .map_err(failed)?
                .into_inner();
            let json = super::printer::proto_json(&resp);
            (
                resp.results.into_iter().map(|r| (r.status, r.federation_relationship)).collect(),
                json,
            )
        } else {
            let resp = client
                .batch_update_federation_relationship(
                    tdpb::BatchUpdateFederationRelationshipRequest {
                        federation_relationships,
                        input_mask: None,
                        output_mask: None,
                    },
                )
                .await
                .map_err(failed)?
                .into_inner();
            let json = super::printer::proto_json(&resp);
            (
                resp.results.into_iter().map(|r| (r.status, r.federation_relationship)).collect(),
                json,
            )
        };
    if ctx.format == super::Format::Json {
        ctx.print(&json.map_err(|e| cli_err!("{e}"))?);
        return Ok(());
    }
    let verb = if create { "create" } else { "update" };
    if sent.len() < results.len() {
        return Err(cli_err!("internal error: cli printer; please report this bug"));
    }
    let code = |s: &Option<types::Status>| s.as_ref().map_or(0, |s| s.code);
    for (status, fr) in &results {
        if code(status) == 0 {
            ctx.print("\n");
            ctx.print(&format_relationship(&fr.clone().unwrap_or_default()));
        }
    }
    let mut any_failed = false;
    for (i, (status, _)) in results.iter().enumerate() {
        if code(status) != 0 {
            any_failed = true;
            let status = status.clone().unwrap_or_default();
            ctx.print("\n");
            ctx.eprint(&format!(
                "Failed to {verb} the following federation relationship (code: {}, msg: {}):\n",
                code_name(status.code),
                go_quote(&status.message)
            ));
            ctx.eprint(&format_relationship(&sent.get(i).cloned().unwrap_or_default()));
        }
    }
    if any_failed {
        return Err(cli_err!("failed to {verb} one or more federation relationships"));
    }
    Ok(())
}

async fn list(ctx: &mut Ctx, admin: &Admin) -> CliResult {
    let resp = client(admin)
        .list_federation_relationships(tdpb::ListFederationRelationshipsRequest::default())
        .await
        .map_err(|s| cli_err!("error listing federation relationship: {}", admin.status(&s)))?
        .into_inner();
    ctx.print_proto(&resp, |ctx, resp| {
        let n = resp.federation_relationships.len();
        ctx.print(&format!(
            "{}\n",
            plural(
                &format!("Found {n} "),
                "federation relationship",
                "federation relationships",
                n
            )
        ));
        for fr in &resp.federation_relationships {
            ctx.print("\n");
            ctx.print(&format_relationship(fr));
        }
        Ok(())
    })
}

async fn show(ctx: &mut Ctx, admin: &Admin, a: &ShowArgs) -> CliResult {
    if a.trust_domain.is_empty() {
        return Err(cli_err!("a trust domain name is required"));
    }
    let fr = client(admin)
        .get_federation_relationship(tdpb::GetFederationRelationshipRequest {
            trust_domain: a.trust_domain.clone(),
            output_mask: None,
        })
        .await
        .map_err(|s| cli_err!("error showing federation relationship: {}", admin.status(&s)))?
        .into_inner();
    ctx.print_proto(&fr, |ctx, fr| {
        ctx.print(&format!(
            "Found a federation relationship with trust domain {}:\n\n",
            a.trust_domain
        ));
        ctx.print(&format_relationship(fr));
        Ok(())
    })
}

async fn delete(ctx: &mut Ctx, admin: &Admin, a: &ById) -> CliResult {
    if a.id.is_empty() {
        return Err(cli_err!("id is required"));
    }
    let resp = client(admin)
        .batch_delete_federation_relationship(tdpb::BatchDeleteFederationRelationshipRequest {
            trust_domains: vec![a.id.clone()],
        })
        .await
        .map_err(|s| cli_err!("failed to delete federation relationship: {}", admin.status(&s)))?
        .into_inner();
    ctx.print_proto(&resp, |ctx, resp| {
        let r = resp.results.first().map(|r| (r.status.clone(), r.trust_domain.as_str()));
        super::bundle::print_deleted(
            ctx,
            r,
            "federation relationship deleted.",
            "federation relationship",
        )
    })
}

async fn refresh(ctx: &mut Ctx, admin: &Admin, a: &ById) -> CliResult {
    if a.id.is_empty() {
        return Err(cli_err!("id is required"));
    }
    match client(admin)
        .refresh_bundle(tdpb::RefreshBundleRequest { trust_domain: a.id.clone() })
        .await
    {
        Ok(_) => {
            let ok = types::Status { code: 0, message: "OK".into() };
            ctx.print_proto(&ok, |ctx, _| {
                ctx.print("Bundle refreshed\n");
                Ok(())
            })
        }
        Err(s) if s.code() == tonic::Code::NotFound => Err(cli_err!(
            "there is no federation relationship with trust domain {}",
            go_quote(&a.id)
        )),
        Err(s) => Err(cli_err!("failed to refresh bundle: {}", admin.status(&s))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relationships_print_as_spire_does() {
        let fr = types::FederationRelationship {
            trust_domain: "a.org".into(),
            bundle_endpoint_url: "https://a.org/b".into(),
            bundle_endpoint_profile: Some(BundleEndpointProfile::HttpsSpiffe(
                types::HttpsspiffeProfile { endpoint_spiffe_id: "spiffe://a.org/s".into() },
            )),
            trust_domain_bundle: None,
        };
        assert_eq!(
            format_relationship(&fr),
            "Trust domain              : a.org\nBundle endpoint URL       : https://a.org/b\n\
             Bundle endpoint profile   : https_spiffe\nEndpoint SPIFFE ID        : spiffe://a.org/s\n"
        );
    }

    #[test]
    fn missing_fields_give_spire_sentences() {
        let c = RelationshipConfig::default();
        assert_eq!(to_proto(&c).unwrap_err().to_string(), "trust domain is required");
        let c = RelationshipConfig { trust_domain: "a.org".into(), ..Default::default() };
        assert_eq!(to_proto(&c).unwrap_err().to_string(), "bundle endpoint URL is required");
        let c = RelationshipConfig {
            trust_domain: "a.org".into(),
            bundle_endpoint_url: "https://a.org".into(),
            bundle_endpoint_profile: "https_spiffe".into(),
            ..Default::default()
        };
        assert_eq!(
            to_proto(&c).unwrap_err().to_string(),
            "endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set"
        );
    }
}
