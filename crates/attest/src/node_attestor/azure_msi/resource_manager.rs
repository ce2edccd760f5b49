//! The Azure calls behind `azure_msi`'s selectors, as SPIRE v1.13.3's server plugin makes them
//! through the Azure SDK for Go (`azidentity` 1.13, `armresources` 1.2, `armcompute` 1.0,
//! `armnetwork` 1.1):
//!
//! 1. a token by the client-credentials grant:
//!    `POST <login>/<tenant>/oauth2/v2.0/token` (form: `client_id`, `client_secret`,
//!    `grant_type=client_credentials`, `scope=https://management.core.windows.net//.default
//!    openid offline_access profile`), kept until five minutes before it expires;
//! 2. the VM whose managed identity is the principal:
//!    `GET <arm>/subscriptions/<sub>/resources?$filter=resourceType eq
//!    'Microsoft.Compute/virtualMachines' and identity/principalId eq '<principal>'&api-version=2021-04-01`,
//!    following `nextLink`;
//! 3. the VM: `GET <arm>/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachines/<vm>?api-version=2022-03-01`;
//! 4. each network interface the VM names:
//!    `GET <arm>/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Network/networkInterfaces/<nic>?api-version=2022-01-01`.
//!
//! Errors carry the SDK's texts (`ClientSecretCredential authentication failed.`, the
//! `RESPONSE <status>` block with the body indented as Go's `json.Indent` does) inside the
//! plugin's `rpc error: code = Internal desc = …` wrappers, so that refusals read as
//! spire-server's.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::super::http_get::{HttpGetter, HttpResponse};
use super::super::x509pop::go_json_error;

/// The public cloud's sign-in host.
pub const DEFAULT_LOGIN_URL: &str = "https://login.microsoftonline.com";
/// The public cloud's Resource Manager.
pub const DEFAULT_RESOURCE_MANAGER_URL: &str = "https://management.azure.com";
/// The scope asked for: Resource Manager's audience, then MSAL's default scopes.
const SCOPE: &str = "https://management.core.windows.net//.default openid offline_access profile";
/// `api-version` of the resource list (`armresources`).
const RESOURCES_API: &str = "2021-04-01";
/// `api-version` of virtual machines (`armcompute`).
const COMPUTE_API: &str = "2022-03-01";
/// `api-version` of network interfaces (`armnetwork`).
const NETWORK_API: &str = "2022-01-01";
/// A token is asked for again this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// The resource a managed identity's token is asked for (azidentity turns the scope
/// `https://management.core.windows.net//.default` into it).
const MANAGED_IDENTITY_RESOURCE: &str = "https://management.core.windows.net/";
/// The longest token lifetime believed, in seconds (a day; Azure's are about an hour).
const MAX_TOKEN_LIFETIME_SECS: u64 = 86_400;
/// The most result pages followed.
const MAX_PAGES: usize = 100;
/// The SDK's section separator.
const SEPARATOR: &str =
    "--------------------------------------------------------------------------------";

/// Go's `url.QueryEscape` keeps these (and turns spaces into `+`).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// Go's `url.PathEscape` keeps these.
const PATH_SEGMENT: &AsciiSet =
    &QUERY.remove(b'$').remove(b'&').remove(b'+').remove(b':').remove(b'=').remove(b'@');

/// Go's `url.QueryEscape`.
pub(crate) fn query_escape(s: &str) -> String {
    utf8_percent_encode(s, QUERY).to_string().replace("%20", "+")
}

/// Go's `url.Values.Encode`: keys sorted, values in order.
pub(crate) fn encode_query(pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
        .iter()
        .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Go's `json.Indent(dst, body, "", "  ")`, or `None` when `body` is not one JSON value.
pub(crate) fn go_json_indent(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
    let text = std::str::from_utf8(body).ok()?;
    let mut out = String::with_capacity(text.len() * 2);
    let (mut depth, mut need_indent, mut in_string, mut escaped) = (0usize, false, false, false);
    let mut started = false;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if matches!(c, ' ' | '\t' | '\n' | '\r') {
            // Leading space is dropped, space after the value kept.
            if started && depth == 0 {
                out.push(c);
            }
            continue;
        }
        if need_indent && c != '}' && c != ']' {
            need_indent = false;
            depth += 1;
            newline(&mut out, depth);
        }
        started = true;
        match c {
            '{' | '[' => {
                need_indent = true;
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            '}' | ']' => {
                if need_indent {
                    need_indent = false;
                } else {
                    depth = depth.saturating_sub(1);
                    newline(&mut out, depth);
                }
                out.push(c);
            }
            '"' => {
                in_string = true;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    Some(out)
}

/// The body as the SDK's error texts show it: indented JSON, else as it is.
fn shown_body(body: &[u8]) -> String {
    go_json_indent(body).unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// `METHOD scheme://host/path` of a request, as the SDK's error texts name it.
fn request_line(method: &str, url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = match u.port() {
                Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
                None => u.host_str().unwrap_or_default().to_owned(),
            };
            let path = percent_encoding::percent_decode_str(u.path()).decode_utf8_lossy();
            format!("{method} {}://{host}{path}", u.scheme())
        }
        Err(_) => format!("{method} {url}"),
    }
}

/// `azcore.ResponseError`'s text for an answer that is not 200.
fn response_error(method: &str, url: &str, response: &HttpResponse) -> String {
    let code = response
        .headers
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| body_error_code(&response.body));
    let mut msg = format!("{}\n{SEPARATOR}\n", request_line(method, url));
    msg.push_str(&format!("RESPONSE {}: {}\n", response.status, response.status_text));
    match code {
        Some(code) => msg.push_str(&format!("ERROR CODE: {code}\n")),
        None => msg.push_str("ERROR CODE UNAVAILABLE\n"),
    }
    msg.push_str(SEPARATOR);
    msg.push('\n');
    if response.body.is_empty() {
        msg.push_str("Response contained no body\n");
    } else {
        msg.push_str(&shown_body(&response.body));
        msg.push('\n');
    }
    msg.push_str(SEPARATOR);
    msg.push('\n');
    msg
}

/// The error code in a JSON error body (`{"error": {"code": …}}`, `{"odata.error": …}` or
/// `{"code": …}`); XML bodies' `<Code>` as the SDK's pattern finds it.
fn body_error_code(body: &[u8]) -> Option<String> {
    if let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice(body) {
        for wrapper in ["error", "odata.error"] {
            if let Some(inner) = obj.remove(wrapper) {
                let serde_json::Value::Object(inner) = inner else { return None };
                obj = inner;
                break;
            }
        }
        return match obj.get("code") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
    }
    let text = String::from_utf8_lossy(body);
    let re = regex::Regex::new(r"<(?:\w+:)?[c|C]ode>\s*(\w+)\s*</(?:\w+:)?[c|C]ode>").ok()?;
    re.captures(&text).and_then(|c| c.get(1)).map(|m| m.as_str().to_owned())
}

/// How the server signs in to Resource Manager for a tenant.
#[derive(Clone, PartialEq, Eq)]
pub struct AppCredentials {
    /// `subscription_id`: the subscription searched for the VM (for a managed identity, the
    /// server VM's own, from its instance metadata).
    pub subscription_id: String,
    /// `app_id`: the application (client) ID; empty: the server VM's managed identity.
    pub app_id: String,
    /// `app_secret`: the application's client secret.
    pub app_secret: String,
    /// With an empty `app_id`: the instance metadata service whose managed-identity token
    /// endpoint is asked (`http://169.254.169.254`).
    pub metadata_url: String,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("subscription_id", &self.subscription_id)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

/// A token and when to stop using it.
#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    until: Instant,
}

/// The Resource Manager client of one tenant.
#[derive(Debug)]
pub(crate) struct ResourceManager {
    tenant: String,
    credentials: AppCredentials,
    login_url: String,
    arm_url: String,
    token: Mutex<Option<CachedToken>>,
}

/// `{"value": [...], "nextLink": ...}` of the resource list.
#[derive(Debug, Default, Deserialize)]
struct ResourceList {
    #[serde(default)]
    value: Option<Vec<Option<GenericResource>>>,
    #[serde(default, rename = "nextLink")]
    next_link: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct GenericResource {
    #[serde(default)]
    id: Option<String>,
}

/// An `{"id": …}` reference.
#[derive(Debug, Default, Deserialize)]
struct Reference {
    #[serde(default)]
    id: Option<String>,
}

/// The parts of a virtual machine read.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct VirtualMachine {
    #[serde(default)]
    properties: Option<VmProperties>,
}

#[derive(Debug, Default, Deserialize)]
struct VmProperties {
    #[serde(default, rename = "networkProfile")]
    network_profile: Option<NetworkProfile>,
}

#[derive(Debug, Default, Deserialize)]
struct NetworkProfile {
    #[serde(default, rename = "networkInterfaces")]
    network_interfaces: Option<Vec<Option<Reference>>>,
}

/// The parts of a network interface read.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NetworkInterface {
    #[serde(default)]
    properties: Option<NicProperties>,
}

#[derive(Debug, Default, Deserialize)]
struct NicProperties {
    #[serde(default, rename = "networkSecurityGroup")]
    network_security_group: Option<Reference>,
    #[serde(default, rename = "ipConfigurations")]
    ip_configurations: Option<Vec<Option<IpConfiguration>>>,
}

#[derive(Debug, Default, Deserialize)]
struct IpConfiguration {
    #[serde(default)]
    properties: Option<IpConfigurationProperties>,
}

#[derive(Debug, Default, Deserialize)]
struct IpConfigurationProperties {
    #[serde(default)]
    subnet: Option<Reference>,
}

/// `%v` of a gRPC status error with code Internal, as the plugin nests them.
fn internal(desc: &str) -> String {
    format!("rpc error: code = Internal desc = {desc}")
}

/// Go's `%q` for the ASCII-printable names found here (Rust's `{:?}` elsewhere).
fn q(s: &str) -> String {
    format!("{s:?}")
}

impl ResourceManager {
    pub(crate) fn new(
        tenant: &str,
        credentials: AppCredentials,
        login_url: &str,
        arm_url: &str,
    ) -> Self {
        Self {
            tenant: tenant.to_owned(),
            credentials,
            login_url: login_url.trim_end_matches('/').to_owned(),
            arm_url: arm_url.trim_end_matches('/').to_owned(),
            token: Mutex::new(None),
        }
    }

    pub(crate) fn subscription_id(&self) -> &str {
        &self.credentials.subscription_id
    }

    /// A token for Resource Manager: the cached one, else a new one (`ClientSecretCredential`'s
    /// texts on failure).
    fn token(&self, client: &HttpGetter) -> Result<String, String> {
        let cached = |token: &Mutex<Option<CachedToken>>| {
            token.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
        };
        if let Some(t) = cached(&self.token).filter(|t| Instant::now() < t.until) {
            return Ok(t.token);
        }
        // The request is made without the lock: a slow login endpoint must not queue every
        // attestation of the tenant behind one another (two may both ask; the later is kept).
        if self.credentials.app_id.is_empty() {
            return self.managed_identity_token(client);
        }
        const CRED: &str = "ClientSecretCredential";
        let url = format!("{}/{}/oauth2/v2.0/token", self.login_url, self.tenant);
        let form = encode_query(&[
            ("client_id".into(), self.credentials.app_id.clone()),
            ("client_secret".into(), self.credentials.app_secret.clone()),
            ("grant_type".into(), "client_credentials".into()),
            ("scope".into(), SCOPE.into()),
        ]);
        let response = client
            .post(
                &url,
                &[
                    ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
                    ("Accept", "application/json"),
                ],
                form,
            )
            .map_err(|e| format!("{CRED}: {e}"))?;
        if response.status != 200 {
            let body = if response.body.is_empty() {
                "Response contained no body".to_owned()
            } else {
                shown_body(&response.body)
            };
            return Err(format!(
                "{CRED} authentication failed. \n{}\n{SEPARATOR}\nRESPONSE {}: {}\n{SEPARATOR}\n\
                 {body}\n{SEPARATOR}\nTo troubleshoot, visit \
                 https://aka.ms/azsdk/go/identity/troubleshoot#client-secret",
                request_line("POST", &url),
                response.status,
                response.status_text,
            ));
        }
        self.keep_token(CRED, &response.body)
    }

    /// A Resource Manager token of the server VM's managed identity, from the instance
    /// metadata service (azidentity's `ManagedIdentityCredential` on a VM: the scope's
    /// resource, `Metadata: true`), kept as a client-secret token is.
    fn managed_identity_token(&self, client: &HttpGetter) -> Result<String, String> {
        const CRED: &str = "ManagedIdentityCredential";
        let url = format!(
            "{}/metadata/identity/oauth2/token?{}",
            self.credentials.metadata_url.trim_end_matches('/'),
            encode_query(&[
                ("api-version".into(), "2018-02-01".into()),
                ("resource".into(), MANAGED_IDENTITY_RESOURCE.into()),
            ])
        );
        let response =
            client.get(&url, &[("Metadata", "true")]).map_err(|e| format!("{CRED}: {e}"))?;
        if response.status != 200 {
            return Err(format!(
                "{CRED} authentication failed. \n{}\n{SEPARATOR}\nRESPONSE {}: {}\n{SEPARATOR}\n{}\n{SEPARATOR}",
                request_line("GET", &url),
                response.status,
                response.status_text,
                shown_body(&response.body),
            ));
        }
        self.keep_token(CRED, &response.body)
    }

    /// Reads a token answer (`access_token`, `expires_in` as a number or a string) and keeps
    /// the token until [`TOKEN_MARGIN`] before it expires.
    fn keep_token(&self, cred: &str, body: &[u8]) -> Result<String, String> {
        #[derive(Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            access_token: String,
            #[serde(default)]
            expires_in: Option<serde_json::Value>,
        }
        let r: TokenResponse =
            serde_json::from_slice(body).map_err(|e| format!("{cred}: {}", go_json_error(&e)))?;
        if r.access_token.is_empty() {
            return Err(format!("{cred}: response is missing access_token"));
        }
        let lifetime = match &r.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(0);
        // A lifetime beyond a day is read as a day: the clock cannot overflow, whatever the
        // endpoint says.
        let lifetime = Duration::from_secs(lifetime.min(MAX_TOKEN_LIFETIME_SECS));
        let now = Instant::now();
        let until = now.checked_add(lifetime.saturating_sub(TOKEN_MARGIN)).unwrap_or(now);
        *self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(CachedToken { token: r.access_token.clone(), until });
        Ok(r.access_token)
    }

    /// `GET url` with the token: the 200 body, else the SDK's error text.
    fn get(&self, client: &HttpGetter, url: &str) -> Result<bytes::Bytes, String> {
        let token = self.token(client)?;
        let bearer = format!("Bearer {token}");
        let response = client
            .get(url, &[("Accept", "application/json"), ("Authorization", bearer.as_str())])?;
        if response.status != 200 {
            return Err(response_error("GET", url, &response));
        }
        Ok(response.body)
    }

    /// The resource ID of the VM whose identity is `principal` (the plugin's texts, the inner
    /// status error included).
    pub(crate) fn vm_resource_id(
        &self,
        client: &HttpGetter,
        principal: &str,
    ) -> Result<String, String> {
        let filter = format!(
            "resourceType eq 'Microsoft.Compute/virtualMachines' and identity/principalId eq '{principal}'"
        );
        let first = format!(
            "{}/subscriptions/{}/resources?{}",
            self.arm_url,
            utf8_percent_encode(self.subscription_id(), PATH_SEGMENT),
            encode_query(&[
                ("$filter".into(), filter),
                ("api-version".into(), RESOURCES_API.into())
            ])
        );
        let listing =
            |e: String| internal(&format!("unable to list virtual machine by principal: {e}"));
        let mut values = Vec::new();
        let mut url = first;
        for _ in 0..MAX_PAGES {
            let body = self.get(client, &url).map_err(listing)?;
            let page: ResourceList = if body.is_empty() {
                ResourceList::default()
            } else {
                serde_json::from_slice(&body).map_err(|e| {
                    listing(format!(
                        "unmarshalling type *armresources.ResourceListResult: {}",
                        go_json_error(&e)
                    ))
                })?
            };
            values.extend(page.value.unwrap_or_default());
            if values.len() > 1 {
                // The answer is the "more than one" refusal whatever the other pages hold.
                break;
            }
            match page.next_link.filter(|l| !l.is_empty()) {
                // The token goes only to Resource Manager's own origin, never to a host (or a
                // plain-HTTP URL) an answer names.
                Some(next) if same_origin(&next, &self.arm_url) => url = reencode_query(&next),
                Some(next) => {
                    return Err(listing(format!(
                        "the next page {} is not on Resource Manager's endpoint {}",
                        q(&next),
                        q(&self.arm_url)
                    )));
                }
                None => break,
            }
        }
        match values.as_slice() {
            [] => Err(internal(&format!("principal {} not found", q(principal)))),
            [one] => match one.as_ref().and_then(|r| r.id.as_deref()).filter(|id| !id.is_empty()) {
                Some(id) => Ok(id.to_owned()),
                None => Err(internal("virtual machine resource missing ID")),
            },
            _ => Err(internal(&format!(
                "expected one result for principal {} at most",
                q(principal)
            ))),
        }
    }

    fn resource_url(&self, group: &str, provider: &str, name: &str, api: &str) -> String {
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/{provider}/{}?api-version={api}",
            self.arm_url,
            utf8_percent_encode(self.subscription_id(), PATH_SEGMENT),
            utf8_percent_encode(group, PATH_SEGMENT),
            utf8_percent_encode(name, PATH_SEGMENT),
        )
    }

    pub(crate) fn virtual_machine(
        &self,
        client: &HttpGetter,
        group: &str,
        name: &str,
    ) -> Result<VirtualMachine, String> {
        let url = self.resource_url(group, "Microsoft.Compute/virtualMachines", name, COMPUTE_API);
        let failed = |e: String| internal(&format!("unable to get virtual machine: {e}"));
        let body = self.get(client, &url).map_err(failed)?;
        if body.is_empty() {
            return Ok(VirtualMachine::default());
        }
        serde_json::from_slice(&body).map_err(|e| {
            failed(format!("unmarshalling type *armcompute.VirtualMachine: {}", go_json_error(&e)))
        })
    }

    pub(crate) fn network_interface(
        &self,
        client: &HttpGetter,
        group: &str,
        name: &str,
    ) -> Result<NetworkInterface, String> {
        let url =
            self.resource_url(group, "Microsoft.Network/networkInterfaces", name, NETWORK_API);
        let failed = |e: String| internal(&format!("unable to get network interface: {e}"));
        let body = self.get(client, &url).map_err(failed)?;
        if body.is_empty() {
            return Ok(NetworkInterface::default());
        }
        serde_json::from_slice(&body).map_err(|e| {
            failed(format!("unmarshalling type *armnetwork.Interface: {}", go_json_error(&e)))
        })
    }
}

/// A `nextLink` with its query decoded and encoded again, keys sorted (the SDK's
/// `EncodeQueryParams`).
fn reencode_query(link: &str) -> String {
    let Some((before, query)) = link.split_once('?') else {
        return link.to_owned();
    };
    let query = query.replace(';', "%3B");
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    format!("{before}?{}", encode_query(&pairs))
}

/// Which ID failed to parse.
#[derive(Debug, Clone, Copy)]
enum IdKind {
    VirtualMachine,
    NetworkInterface,
    NetworkSecurityGroup,
    Subnet,
}

impl IdKind {
    fn pattern(self) -> &'static str {
        match self {
            Self::VirtualMachine => {
                r"^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft.Compute/virtualMachines/([^/]+)$"
            }
            Self::NetworkInterface => {
                r"^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft.Network/networkInterfaces/([^/]+)$"
            }
            Self::NetworkSecurityGroup => {
                r"^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft.Network/networkSecurityGroups/([^/]+)$"
            }
            Self::Subnet => {
                r"^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft.Network/virtualNetworks/([^/]+)/subnets/([^/]+)$"
            }
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::VirtualMachine => "virtual machine",
            Self::NetworkInterface => "network interface",
            Self::NetworkSecurityGroup => "network security group",
            Self::Subnet => "virtual network subnet",
        }
    }
}

/// The captured parts of `id`, else SPIRE's `malformed <what> ID "<id>"`.
fn parse_id(kind: IdKind, id: &str) -> Result<Vec<String>, String> {
    let malformed = || format!("malformed {} ID {}", kind.what(), q(id));
    let re = regex::Regex::new(kind.pattern()).map_err(|_| malformed())?;
    let caps = re.captures(id).ok_or_else(malformed)?;
    Ok(caps.iter().skip(1).map(|m| m.map(|m| m.as_str().to_owned()).unwrap_or_default()).collect())
}

/// A refusal of the selector lookup: every one is `Internal` in SPIRE.
pub(crate) type LookupError = String;

/// SPIRE's selectors of the VM whose identity is `principal`, sorted and without repeats.
pub(crate) fn selectors(
    client: &HttpGetter,
    api: &ResourceManager,
    principal: &str,
) -> Result<Vec<String>, LookupError> {
    let vm_id = api
        .vm_resource_id(client, principal)
        .map_err(|e| format!("unable to get resource for principal {}: {e}", q(principal)))?;
    let vm = parse_id(IdKind::VirtualMachine, &vm_id)?;
    let (group, name) = (&vm[0], &vm[1]);
    let mut out = BTreeSet::from([
        format!("subscription-id:{}", api.subscription_id()),
        format!("vm-name:{group}:{name}"),
    ]);
    let machine = api.virtual_machine(client, group, name).map_err(|e| {
        format!("unable to get virtual machine {}: {e}", q(&format!("{group}:{name}")))
    })?;
    let interfaces = machine
        .properties
        .and_then(|p| p.network_profile)
        .and_then(|n| n.network_interfaces)
        .unwrap_or_default();
    for reference in interfaces.into_iter().flatten() {
        let Some(id) = reference.id else { continue };
        let nic = parse_id(IdKind::NetworkInterface, &id)?;
        let (group, name) = (&nic[0], &nic[1]);
        let interface = api.network_interface(client, group, name).map_err(|e| {
            format!("unable to get network interface {}: {e}", q(&format!("{group}:{name}")))
        })?;
        let Some(props) = interface.properties else { continue };
        if let Some(id) = props.network_security_group.and_then(|g| g.id) {
            let nsg = parse_id(IdKind::NetworkSecurityGroup, &id)?;
            out.insert(format!("network-security-group:{}:{}", nsg[0], nsg[1]));
        }
        for ipc in props.ip_configurations.unwrap_or_default().into_iter().flatten() {
            if let Some(id) = ipc.properties.and_then(|p| p.subnet).and_then(|s| s.id) {
                let subnet = parse_id(IdKind::Subnet, &id)?;
                out.insert(format!("virtual-network:{}:{}", subnet[0], subnet[1]));
                out.insert(format!(
                    "virtual-network-subnet:{}:{}:{}",
                    subnet[0], subnet[1], subnet[2]
                ));
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// Whether `url` has the scheme, host and port of `base`.
fn same_origin(url: &str, base: &str) -> bool {
    match (url::Url::parse(url), url::Url::parse(base)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}
