//! `entry create|show|update|delete|count`.

use std::path::Path;

use clap::Subcommand;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;

use super::{
    Admin, CliError, CliResult, Common, Ctx, Output, checked_i32, code_name, go_quote, id_string,
    parse_id, parse_selector, plural,
};
use crate::cli_err;

/// The entry commands.
#[derive(Subcommand, Debug)]
pub enum EntryCmd {
    /// Creates registration entries.
    Create(Create),
    /// Updates registration entries.
    Update(Update),
    /// Displays registration entries.
    Show(Show),
    /// Counts registration entries.
    Count(Show),
    /// Deletes registration entries.
    Delete(Delete),
}

/// The entry fields `entry create` and `entry update` take.
#[derive(clap::Args, Debug)]
pub struct Fields {
    /// The entry ID (create: a custom ID, generated when absent; update: required).
    #[arg(long = "entryID", default_value = "")]
    pub entry_id: String,
    /// The SPIFFE ID of this record's parent.
    #[arg(long = "parentID", default_value = "")]
    pub parent_id: String,
    /// The SPIFFE ID that this record represents.
    #[arg(long = "spiffeID", default_value = "")]
    pub spiffe_id: String,
    /// The lifetime, in seconds, of X509-SVIDs issued for this entry.
    #[arg(long = "x509SVIDTTL", default_value_t = 0, allow_negative_numbers = true)]
    pub x509_svid_ttl: i64,
    /// The lifetime, in seconds, of JWT-SVIDs issued for this entry.
    #[arg(long = "jwtSVIDTTL", default_value_t = 0, allow_negative_numbers = true)]
    pub jwt_svid_ttl: i64,
    /// Path to a file of registration JSON ('-' for stdin).
    #[arg(long = "data", default_value = "")]
    pub data: String,
    /// A colon-delimited type:value selector. Can be used more than once.
    #[arg(long = "selector")]
    pub selector: Vec<String>,
    /// SPIFFE ID of a trust domain to federate with. Can be used more than once.
    #[arg(long = "federatesWith")]
    pub federates_with: Vec<String>,
    /// Grants the SPIFFE ID access to the server's management APIs.
    #[arg(long = "admin")]
    pub admin: bool,
    /// SVIDs of this entry are stored through an SVIDStore plugin.
    #[arg(long = "storeSVID")]
    pub store_svid: bool,
    /// The entry describes a downstream server.
    #[arg(long = "downstream")]
    pub downstream: bool,
    /// An expiry, from epoch in seconds, after which the entry is pruned.
    #[arg(long = "entryExpiry", default_value_t = 0, allow_negative_numbers = true)]
    pub entry_expiry: i64,
    /// A DNS name included in SVIDs of this entry. Can be used more than once.
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// The entry hint, used to disambiguate entries with the same SPIFFE ID.
    #[arg(long = "hint", default_value = "")]
    pub hint: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `entry create`.
#[derive(clap::Args, Debug)]
pub struct Create {
    #[command(flatten)]
    /// The entry.
    pub fields: Fields,
    /// The entry applies to matching nodes rather than workloads (parent: the server).
    #[arg(long = "node")]
    pub node: bool,
}

/// Flags of `entry update`.
#[derive(clap::Args, Debug)]
pub struct Update {
    #[command(flatten)]
    /// The entry.
    pub fields: Fields,
}

/// Flags of `entry show` and `entry count` (`-entryID` is `show`'s only).
#[derive(clap::Args, Debug)]
pub struct Show {
    /// The entry ID of the record to show.
    #[arg(long = "entryID", default_value = "")]
    pub entry_id: String,
    /// The parent ID of the records to show.
    #[arg(long = "parentID", default_value = "")]
    pub parent_id: String,
    /// The SPIFFE ID of the records to show.
    #[arg(long = "spiffeID", default_value = "")]
    pub spiffe_id: String,
    /// Only entries that describe a downstream server (otherwise only those that do not).
    #[arg(long = "downstream")]
    pub downstream: bool,
    /// A colon-delimited type:value selector. Can be used more than once.
    #[arg(long = "selector")]
    pub selector: Vec<String>,
    /// SPIFFE ID of a trust domain an entry federates with. Can be used more than once.
    #[arg(long = "federatesWith")]
    pub federates_with: Vec<String>,
    /// The match mode for -federatesWith: exact, any, superset or subset.
    #[arg(long = "matchFederatesWithOn", default_value = "superset")]
    pub match_federates_with_on: String,
    /// The match mode for -selector: exact, any, superset or subset.
    #[arg(long = "matchSelectorsOn", default_value = "superset")]
    pub match_selectors_on: String,
    /// The hint of the records to show.
    #[arg(long = "hint", default_value = "")]
    pub hint: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `entry delete`.
#[derive(clap::Args, Debug)]
pub struct Delete {
    /// The ID of the entry to delete.
    #[arg(long = "entryID", default_value = "")]
    pub entry_id: String,
    /// Path to a JSON file of IDs to delete ('-' for stdin).
    #[arg(long = "file", default_value = "")]
    pub file: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Runs an entry command.
pub async fn run(cmd: EntryCmd) -> Output {
    let common = match &cmd {
        EntryCmd::Create(a) => a.fields.common.clone(),
        EntryCmd::Update(a) => a.fields.common.clone(),
        EntryCmd::Show(a) | EntryCmd::Count(a) => a.common.clone(),
        EntryCmd::Delete(a) => a.common.clone(),
    };
    super::with_admin(&common, |mut ctx, admin| async move {
        let r = match &cmd {
            EntryCmd::Create(a) => create(&mut ctx, &admin, a).await,
            EntryCmd::Update(a) => update(&mut ctx, &admin, a).await,
            EntryCmd::Show(a) => show(&mut ctx, &admin, a).await,
            EntryCmd::Count(a) => count(&mut ctx, &admin, a).await,
            EntryCmd::Delete(a) => delete(&mut ctx, &admin, a).await,
        };
        (ctx, r)
    })
    .await
}

fn client(admin: &Admin) -> entrypb::entry_client::EntryClient<tonic::transport::Channel> {
    entrypb::entry_client::EntryClient::new(admin.channel())
        .max_decoding_message_size(super::ANSWER_LIMIT)
}

/// Prints an entry as SPIRE's CLI does, blank line included.
pub fn format_entry(e: &types::Entry) -> String {
    let mut s = String::new();
    let id = if e.id.is_empty() { "(none)" } else { &e.id };
    s.push_str(&format!("Entry ID         : {id}\n"));
    s.push_str(&format!("SPIFFE ID        : {}\n", id_string(e.spiffe_id.as_ref())));
    s.push_str(&format!("Parent ID        : {}\n", id_string(e.parent_id.as_ref())));
    s.push_str(&format!("Revision         : {}\n", e.revision_number));
    if e.downstream {
        s.push_str("Downstream       : true\n");
    }
    let ttl = |t: i32| if t == 0 { "default".to_owned() } else { t.to_string() };
    s.push_str(&format!("X509-SVID TTL    : {}\n", ttl(e.x509_svid_ttl)));
    s.push_str(&format!("JWT-SVID TTL     : {}\n", ttl(e.jwt_svid_ttl)));
    if e.expires_at != 0 {
        s.push_str(&format!("Expiration time  : {}\n", super::printer::go_time_utc(e.expires_at)));
    }
    for sel in &e.selectors {
        s.push_str(&format!("Selector         : {}:{}\n", sel.r#type, sel.value));
    }
    for td in &e.federates_with {
        s.push_str(&format!("FederatesWith    : {td}\n"));
    }
    for d in &e.dns_names {
        s.push_str(&format!("DNS name         : {d}\n"));
    }
    if e.admin {
        s.push_str("Admin            : true\n");
    }
    if e.store_svid {
        s.push_str("StoreSvid        : true\n");
    }
    if !e.hint.is_empty() {
        s.push_str(&format!("Hint             : {}\n", e.hint));
    }
    s.push('\n');
    s
}

/// The entry the flags describe, under `parent_id`.
fn entry_from_flags(f: &Fields, parent_id: types::Spiffeid) -> Result<types::Entry, CliError> {
    let spiffe_id = parse_id(&f.spiffe_id)?;
    let x509_svid_ttl = checked_i32(f.x509_svid_ttl)
        .map_err(|e| cli_err!("invalid value for X509 SVID TTL: {e}"))?;
    let jwt_svid_ttl =
        checked_i32(f.jwt_svid_ttl).map_err(|e| cli_err!("invalid value for JWT SVID TTL: {e}"))?;
    let selectors = f.selector.iter().map(|s| parse_selector(s)).collect::<Result<_, _>>()?;
    Ok(types::Entry {
        id: f.entry_id.clone(),
        spiffe_id: Some(spiffe_id),
        parent_id: Some(parent_id),
        selectors,
        x509_svid_ttl,
        jwt_svid_ttl,
        federates_with: f.federates_with.clone(),
        admin: f.admin,
        downstream: f.downstream,
        expires_at: f.entry_expiry,
        dns_names: f.dns.clone(),
        store_svid: f.store_svid,
        hint: f.hint.clone(),
        ..Default::default()
    })
}

/// The checks `create` and `update` share after their own: SPIFFE ID and TTLs.
fn check_id_and_ttls(f: &Fields) -> CliResult {
    if f.spiffe_id.is_empty() {
        return Err(cli_err!("a SPIFFE ID is required"));
    }
    if f.x509_svid_ttl < 0 {
        return Err(cli_err!("a positive x509-SVID TTL is required"));
    }
    if f.jwt_svid_ttl < 0 {
        return Err(cli_err!("a positive JWT-SVID TTL is required"));
    }
    Ok(())
}

/// One entry of a `-data` file, as SPIRE's registration JSON names its fields.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct FileEntry {
    selectors: Vec<types::Selector>,
    parent_id: String,
    spiffe_id: String,
    x509_svid_ttl: i32,
    federates_with: Vec<String>,
    entry_id: String,
    admin: bool,
    downstream: bool,
    #[serde(rename = "entryExpiry")]
    entry_expiry: i64,
    dns_names: Vec<String>,
    revision_number: i64,
    store_svid: bool,
    jwt_svid_ttl: i32,
    hint: String,
    created_at: i64,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct FileEntries {
    entries: Vec<FileEntry>,
}

/// Reads `path` (or stdin for `-`) as Go's `os.Open` + `io.ReadAll` would report errors.
pub fn read_input(path: &str) -> Result<Vec<u8>, CliError> {
    if path == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| cli_err!("{}", super::os_error_text(&e)))?;
        return Ok(buf);
    }
    std::fs::read(Path::new(path))
        .map_err(|e| cli_err!("open {path}: {}", super::os_error_text(&e)))
}

/// A JSON decoding error in Go's words where they are known.
pub fn json_error(e: &serde_json::Error) -> CliError {
    if e.is_eof() { cli_err!("unexpected end of JSON input") } else { cli_err!("{e}") }
}

fn parse_file(path: &str) -> Result<Vec<types::Entry>, CliError> {
    let data = read_input(path)?;
    let file: FileEntries = serde_json::from_slice(&data).map_err(|e| json_error(&e))?;
    let mut out = Vec::new();
    for e in file.entries {
        let spiffe_id =
            parse_id(&e.spiffe_id).map_err(|err| cli_err!("invalid SPIFFE ID: {err}"))?;
        let parent_id =
            parse_id(&e.parent_id).map_err(|err| cli_err!("invalid parent ID: {err}"))?;
        let mut federates_with = Vec::new();
        for td in &e.federates_with {
            let td = ward_core::TrustDomain::parse(td)
                .map_err(|err| cli_err!("invalid federated trust domain: {err}"))?;
            federates_with.push(td.as_str().to_owned());
        }
        out.push(types::Entry {
            id: e.entry_id,
            spiffe_id: Some(spiffe_id),
            parent_id: Some(parent_id),
            selectors: e.selectors,
            x509_svid_ttl: e.x509_svid_ttl,
            federates_with,
            admin: e.admin,
            downstream: e.downstream,
            expires_at: e.entry_expiry,
            dns_names: e.dns_names,
            revision_number: e.revision_number,
            store_svid: e.store_svid,
            jwt_svid_ttl: e.jwt_svid_ttl,
            hint: e.hint,
            created_at: e.created_at,
        });
    }
    Ok(out)
}

async fn create(ctx: &mut Ctx, admin: &Admin, a: &Create) -> CliResult {
    let f = &a.fields;
    let entries = if f.data.is_empty() {
        if f.selector.is_empty() {
            return Err(cli_err!("at least one selector is required"));
        }
        if a.node && !f.federates_with.is_empty() {
            return Err(cli_err!("node entries can not federate"));
        }
        if f.parent_id.is_empty() && !a.node {
            return Err(cli_err!("a parent ID is required if the node flag is not set"));
        }
        check_id_and_ttls(f)?;
        // SPIRE parses the SPIFFE ID before the parent ID here (and after it on update).
        let spiffe_id = parse_id(&f.spiffe_id)?;
        let parent_id = if a.node {
            types::Spiffeid { trust_domain: spiffe_id.trust_domain, path: "/spire/server".into() }
        } else {
            parse_id(&f.parent_id)?
        };
        vec![entry_from_flags(f, parent_id)?]
    } else {
        parse_file(&f.data)?
    };
    let mut resp = client(admin)
        .batch_create_entry(entrypb::BatchCreateEntryRequest {
            entries: entries.clone(),
            output_mask: None,
        })
        .await
        .map_err(|s| cli_err!("{}", admin.status(&s)))?
        .into_inner();
    let results = resp.results.iter_mut().map(|r| (&r.status, &mut r.entry));
    print_batch(ctx, &with_sent_entries(results, &entries), "create", &resp)
}

/// Puts the entry as sent into each failed result (SPIRE's CLI does, so that both outputs
/// show what failed) and returns (status, entry) per result.
fn with_sent_entries<'a>(
    results: impl Iterator<Item = (&'a Option<types::Status>, &'a mut Option<types::Entry>)>,
    sent: &[types::Entry],
) -> Vec<(Option<types::Status>, Option<types::Entry>)> {
    results
        .zip(sent)
        .map(|((status, entry), sent)| {
            if status.as_ref().map_or(0, |s| s.code) != 0 {
                *entry = Some(sent.clone());
            }
            (status.clone(), entry.clone())
        })
        .collect()
}

/// Prints a batch of create or update results: successes on stdout, failures on stderr.
fn print_batch<T: serde::Serialize>(
    ctx: &mut Ctx,
    results: &[(Option<types::Status>, Option<types::Entry>)],
    verb: &str,
    resp: &T,
) -> CliResult {
    if ctx.format == super::Format::Json {
        return ctx.print_proto(resp, |_, _| Ok(()));
    }
    let code = |s: &Option<types::Status>| s.as_ref().map_or(0, |s| s.code);
    for (status, entry) in results.iter().filter(|(s, _)| code(s) == 0) {
        let _ = status;
        ctx.print(&format_entry(&entry.clone().unwrap_or_default()));
    }
    let mut failed = false;
    for (status, entry) in results.iter().filter(|(s, _)| code(s) != 0) {
        failed = true;
        let status = status.clone().unwrap_or_default();
        ctx.eprint(&format!(
            "Failed to {verb} the following entry (code: {}, msg: {}):\n",
            code_name(status.code),
            go_quote(&status.message)
        ));
        ctx.eprint(&format_entry(&entry.clone().unwrap_or_default()));
    }
    if failed {
        return Err(cli_err!("failed to {verb} one or more entries"));
    }
    Ok(())
}

async fn update(ctx: &mut Ctx, admin: &Admin, a: &Update) -> CliResult {
    let f = &a.fields;
    let entries = if f.data.is_empty() {
        if f.entry_id.is_empty() {
            return Err(cli_err!("entry ID is required"));
        }
        if f.selector.is_empty() {
            return Err(cli_err!("at least one selector is required"));
        }
        if f.parent_id.is_empty() {
            return Err(cli_err!("a parent ID is required"));
        }
        check_id_and_ttls(f)?;
        let parent_id = parse_id(&f.parent_id)?;
        vec![entry_from_flags(f, parent_id)?]
    } else {
        parse_file(&f.data)?
    };
    let mut resp = client(admin)
        .batch_update_entry(entrypb::BatchUpdateEntryRequest {
            entries: entries.clone(),
            input_mask: None,
            output_mask: None,
        })
        .await
        .map_err(|s| cli_err!("{}", admin.status(&s)))?
        .into_inner();
    let results = resp.results.iter_mut().map(|r| (&r.status, &mut r.entry));
    print_batch(ctx, &with_sent_entries(results, &entries), "update", &resp)
}

/// The list/count filter built from `show`/`count` flags, in SPIRE's check order.
struct Filter {
    by_spiffe_id: Option<types::Spiffeid>,
    by_parent_id: Option<types::Spiffeid>,
    by_selectors: Option<types::SelectorMatch>,
    by_federates_with: Option<types::FederatesWithMatch>,
    by_hint: Option<String>,
    by_downstream: Option<bool>,
}

fn match_behavior(s: &str) -> Result<i32, CliError> {
    use types::selector_match::MatchBehavior as M;
    Ok(match s {
        "exact" => M::MatchExact,
        "any" => M::MatchAny,
        "superset" => M::MatchSuperset,
        "subset" => M::MatchSubset,
        other => return Err(cli_err!("match behavior {} unknown", go_quote(other))),
    } as i32)
}

fn filter(a: &Show) -> Result<Filter, CliError> {
    let mut f = Filter {
        by_spiffe_id: None,
        by_parent_id: None,
        by_selectors: None,
        by_federates_with: None,
        by_hint: None,
        by_downstream: Some(a.downstream),
    };
    if !a.parent_id.is_empty() {
        f.by_parent_id =
            Some(parse_id(&a.parent_id).map_err(|e| {
                cli_err!("error parsing parent ID {}: {e}", go_quote(&a.parent_id))
            })?);
    }
    if !a.spiffe_id.is_empty() {
        f.by_spiffe_id =
            Some(parse_id(&a.spiffe_id).map_err(|e| {
                cli_err!("error parsing SPIFFE ID {}: {e}", go_quote(&a.spiffe_id))
            })?);
    }
    if !a.selector.is_empty() {
        let m = match_behavior(&a.match_selectors_on)?;
        let mut selectors = Vec::new();
        for s in &a.selector {
            selectors
                .push(parse_selector(s).map_err(|e| cli_err!("error parsing selectors: {e}"))?);
        }
        f.by_selectors = Some(types::SelectorMatch { selectors, r#match: m });
    }
    if !a.federates_with.is_empty() {
        let m = match_behavior(&a.match_federates_with_on)?;
        f.by_federates_with =
            Some(types::FederatesWithMatch { trust_domains: a.federates_with.clone(), r#match: m });
    }
    if !a.hint.is_empty() {
        f.by_hint = Some(a.hint.clone());
    }
    Ok(f)
}

/// SPIRE's CLI order for listed entries: by SPIFFE ID, parent ID, TTLs, then selectors
/// (each entry's selectors sorted first).
pub fn sort_entries(entries: &mut [types::Entry]) {
    let sel_key = |s: &types::Selector| (s.r#type.clone(), s.value.clone());
    for e in entries.iter_mut() {
        e.selectors.sort_by_key(sel_key);
    }
    let id_key = |i: &Option<types::Spiffeid>| {
        i.as_ref().map(|i| (i.trust_domain.clone(), i.path.clone())).unwrap_or_default()
    };
    entries.sort_by(|a, b| {
        id_key(&a.spiffe_id)
            .cmp(&id_key(&b.spiffe_id))
            .then_with(|| id_key(&a.parent_id).cmp(&id_key(&b.parent_id)))
            .then_with(|| a.x509_svid_ttl.cmp(&b.x509_svid_ttl))
            .then_with(|| a.jwt_svid_ttl.cmp(&b.jwt_svid_ttl))
            .then_with(|| a.selectors.len().cmp(&b.selectors.len()))
            .then_with(|| {
                let ka: Vec<_> = a.selectors.iter().map(sel_key).collect();
                let kb: Vec<_> = b.selectors.iter().map(sel_key).collect();
                ka.cmp(&kb)
            })
    });
}

async fn show(ctx: &mut Ctx, admin: &Admin, a: &Show) -> CliResult {
    if !a.entry_id.is_empty()
        && (!a.parent_id.is_empty() || !a.spiffe_id.is_empty() || !a.selector.is_empty())
    {
        return Err(cli_err!("the -entryID flag can't be combined with others"));
    }
    let mut client = client(admin);
    let mut listed = entrypb::ListEntriesResponse::default();
    if !a.entry_id.is_empty() {
        let e = client
            .get_entry(entrypb::GetEntryRequest { id: a.entry_id.clone(), output_mask: None })
            .await
            .map_err(|s| cli_err!("error fetching entry ID {}: {}", a.entry_id, admin.status(&s)))?
            .into_inner();
        listed.entries.push(e);
    } else {
        let f = filter(a)?;
        let filter = entrypb::list_entries_request::Filter {
            by_spiffe_id: f.by_spiffe_id,
            by_parent_id: f.by_parent_id,
            by_selectors: f.by_selectors,
            by_federates_with: f.by_federates_with,
            by_hint: f.by_hint,
            by_downstream: f.by_downstream,
        };
        let mut page_token = String::new();
        loop {
            let resp = client
                .list_entries(entrypb::ListEntriesRequest {
                    filter: Some(filter.clone()),
                    output_mask: None,
                    page_size: 500,
                    page_token: page_token.clone(),
                })
                .await
                .map_err(|s| cli_err!("error fetching entries: {}", admin.status(&s)))?
                .into_inner();
            listed.entries.extend(resp.entries);
            if resp.next_page_token.is_empty() || resp.next_page_token == page_token {
                break;
            }
            page_token = resp.next_page_token;
        }
    }
    sort_entries(&mut listed.entries);
    ctx.print_proto(&listed, |ctx, listed| {
        let n = listed.entries.len();
        ctx.print(&format!("{}\n", plural(&format!("Found {n} "), "entry", "entries", n)));
        for e in &listed.entries {
            ctx.print(&format_entry(e));
        }
        Ok(())
    })
}

async fn count(ctx: &mut Ctx, admin: &Admin, a: &Show) -> CliResult {
    let f = filter(a)?;
    let filter = entrypb::count_entries_request::Filter {
        by_spiffe_id: f.by_spiffe_id,
        by_parent_id: f.by_parent_id,
        by_selectors: f.by_selectors,
        by_federates_with: f.by_federates_with,
        by_hint: f.by_hint,
        by_downstream: f.by_downstream,
    };
    let resp = client(admin)
        .count_entries(entrypb::CountEntriesRequest { filter: Some(filter) })
        .await
        .map_err(|s| cli_err!("{}", admin.status(&s)))?
        .into_inner();
    ctx.print_proto(&resp, |ctx, resp| {
        let n = usize::try_from(resp.count).unwrap_or_default();
        ctx.print(&format!("{}\n", plural(&format!("{n} registration "), "entry", "entries", n)));
        Ok(())
    })
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct DeleteFile {
    ids: Vec<String>,
}

async fn delete(ctx: &mut Ctx, admin: &Admin, a: &Delete) -> CliResult {
    let ids = if a.file.is_empty() {
        if a.entry_id.is_empty() {
            return Err(cli_err!("an entry ID is required"));
        }
        vec![a.entry_id.clone()]
    } else {
        let data = read_input(&a.file)?;
        let file: DeleteFile = serde_json::from_slice(&data).map_err(|e| json_error(&e))?;
        file.ids
    };
    let resp = client(admin)
        .batch_delete_entry(entrypb::BatchDeleteEntryRequest { ids })
        .await
        .map_err(|s| cli_err!("{}", admin.status(&s)))?
        .into_inner();
    ctx.print_proto(&resp, |ctx, resp| {
        let code = |r: &entrypb::batch_delete_entry_response::Result| {
            r.status.as_ref().map_or(0, |s| s.code)
        };
        let ok: Vec<_> = resp.results.iter().filter(|r| code(r) == 0).collect();
        let failed: Vec<_> = resp.results.iter().filter(|r| code(r) != 0).collect();
        for r in &ok {
            ctx.print(&format!("Deleted entry with ID: {}\n", r.id));
        }
        if !ok.is_empty() {
            ctx.print("\n\n");
        }
        for r in &failed {
            let status = r.status.clone().unwrap_or_default();
            ctx.eprint(&format!(
                "Failed to delete entry with ID {} (code: {}, msg: {})\n",
                r.id,
                code_name(status.code),
                go_quote(&status.message)
            ));
        }
        if !failed.is_empty() {
            ctx.print("\n\n");
            if ok.is_empty() {
                ctx.print(&format!("Failed to delete {} entries", failed.len()));
            } else {
                ctx.print(&format!(
                    "Deleted {} entries successfully, but failed to delete {} entries",
                    ok.len(),
                    failed.len()
                ));
            }
            return Err(cli_err!("failed to delete one or more entries"));
        }
        ctx.print(&format!("Deleted {} entries successfully", ok.len()));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(path: &str) -> Option<types::Spiffeid> {
        Some(types::Spiffeid { trust_domain: "example.org".into(), path: path.into() })
    }

    #[test]
    fn entries_print_as_spire_does() {
        let e = types::Entry {
            id: "e1".into(),
            spiffe_id: id("/w"),
            parent_id: id("/node"),
            selectors: vec![types::Selector { r#type: "unix".into(), value: "uid:1".into() }],
            x509_svid_ttl: 3600,
            expires_at: 4_102_444_800,
            downstream: true,
            admin: true,
            hint: "h".into(),
            ..Default::default()
        };
        assert_eq!(
            format_entry(&e),
            "Entry ID         : e1\nSPIFFE ID        : spiffe://example.org/w\n\
             Parent ID        : spiffe://example.org/node\nRevision         : 0\n\
             Downstream       : true\nX509-SVID TTL    : 3600\nJWT-SVID TTL     : default\n\
             Expiration time  : 2100-01-01 00:00:00 +0000 UTC\n\
             Selector         : unix:uid:1\nAdmin            : true\nHint             : h\n\n"
        );
        assert!(format_entry(&types::Entry::default()).starts_with("Entry ID         : (none)\n"));
    }

    #[test]
    fn entries_sort_by_spiffe_id_then_selectors() {
        let sel = |v: &str| types::Selector { r#type: "unix".into(), value: v.into() };
        let mut list = vec![
            types::Entry {
                id: "b".into(),
                spiffe_id: id("/b"),
                parent_id: id("/p"),
                ..Default::default()
            },
            types::Entry {
                id: "a2".into(),
                spiffe_id: id("/a"),
                parent_id: id("/p"),
                selectors: vec![sel("2"), sel("1")],
                ..Default::default()
            },
            types::Entry {
                id: "a1".into(),
                spiffe_id: id("/a"),
                parent_id: id("/p"),
                ..Default::default()
            },
        ];
        sort_entries(&mut list);
        let ids: Vec<&str> = list.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a1", "a2", "b"]);
        assert_eq!(list[1].selectors[0].value, "1");
    }

    #[test]
    fn ttl_above_int32_is_refused_with_spire_text() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            fields: Fields,
        }
        let cmd = Cmd::parse_from([
            "entry",
            "--spiffeID",
            "spiffe://example.org/w",
            "--x509SVIDTTL",
            "2147483648",
        ]);
        let err = entry_from_flags(&cmd.fields, id("/p").unwrap_or_default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for X509 SVID TTL: overflow converting int(2147483648) to int32"
        );
        let cmd = Cmd::parse_from(["entry", "--jwtSVIDTTL", "-1"]);
        assert_eq!(
            check_id_and_ttls(&cmd.fields).unwrap_err().to_string(),
            "a SPIFFE ID is required"
        );
    }
}
