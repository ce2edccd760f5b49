//! Azure for the `azure_msi` suite, inside a network namespace the test makes: a fake instance
//! metadata service on `169.254.169.254:80` (an address of the namespace's loopback) that
//! hands out a managed identity access token and the instance's metadata; a fake
//! `login.microsoftonline.com` (HTTPS on port 443, certificate from a test CA) that publishes
//! the OpenID configuration and key set of the key that signs the token, the tenant's OpenID
//! configuration, and issues Resource Manager tokens to the test application by the
//! client-credentials grant; and a fake `management.azure.com` (same certificate) holding one
//! VM ([`VM_ID`]), its network interface, security group and subnet, answering the resource
//! list, VM and network interface requests with Azure's JSON shapes. Both record the requests
//! they answer ([`AzureLab::take_requests`]). Processes started with [`AzureLab::launcher`]
//! see the names in their `/etc/hosts` and trust the test CA through `SSL_CERT_FILE`.
//!
//! Needs root (`ip netns`, `setns`); see [`crate::gcp`] for how the calling thread joins the
//! namespace.

use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::gcp::{
    Answer, FakeServer, Handler, Head, TokenSigner, enter_namespace, serve, test_ca_tls_for,
};
use crate::netns::NetLab;

/// Where `login.microsoftonline.com` is in the namespace.
pub const LOGIN_ADDRESS: &str = "127.0.0.2";
/// Where `management.azure.com` is in the namespace.
pub const ARM_ADDRESS: &str = "127.0.0.3";
/// The subscription the VM is in.
pub const SUBSCRIPTION: &str = "d5b40d61-272e-48da-beb9-05f295c42bd6";
/// The application the servers sign in as.
pub const APP_ID: &str = "2f6b0c8e-51a4-4f0b-9a63-7d5e4c3b2a10";
/// Its client secret.
pub const APP_SECRET: &str = "test~app.secret-1";
/// The Resource Manager token the fake login service issues to the application.
pub const ARM_TOKEN: &str = "arm-access-token-for-the-test-application";
/// The VM the principal set with [`AzureLab::set_vm_principal`] runs as.
pub const VM_ID: &str = "/subscriptions/d5b40d61-272e-48da-beb9-05f295c42bd6/resourceGroups/frontend/providers/Microsoft.Compute/virtualMachines/blog";
/// Its network interface.
pub const NIC_ID: &str = "/subscriptions/d5b40d61-272e-48da-beb9-05f295c42bd6/resourceGroups/frontend/providers/Microsoft.Network/networkInterfaces/blog-nic";
/// The interface's security group.
pub const NSG_ID: &str = "/subscriptions/d5b40d61-272e-48da-beb9-05f295c42bd6/resourceGroups/frontend/providers/Microsoft.Network/networkSecurityGroups/webservers";
/// The interface's subnet (another resource group).
pub const SUBNET_ID: &str = "/subscriptions/d5b40d61-272e-48da-beb9-05f295c42bd6/resourceGroups/network/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default";
/// A principal the resource list names a VM for that Resource Manager then does not find.
pub const GHOST_PRINCIPAL: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
/// That VM.
pub const GHOST_VM_ID: &str = "/subscriptions/d5b40d61-272e-48da-beb9-05f295c42bd6/resourceGroups/frontend/providers/Microsoft.Compute/virtualMachines/ghost";
/// The selectors SPIRE derives from that VM (type `azure_msi`).
pub const VM_SELECTORS: &[&str] = &[
    "network-security-group:frontend:webservers",
    "subscription-id:d5b40d61-272e-48da-beb9-05f295c42bd6",
    "virtual-network-subnet:network:vnet:default",
    "virtual-network:network:vnet",
    "vm-name:frontend:blog",
];

/// The instance metadata service's address.
pub const IMDS_ADDRESS: &str = "169.254.169.254";
/// The key ID of the test signing key.
pub const KID: &str = "ward-test-key";

/// The JWK of `signer`'s RSA key, with key ID [`KID`].
///
/// # Errors
/// When the certificate does not parse.
pub fn rsa_jwk(signer: &TokenSigner) -> anyhow::Result<serde_json::Value> {
    let der = pem::parse(&signer.cert_pem)?.into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    let x509_parser::public_key::PublicKey::RSA(rsa) = cert.public_key().parsed()? else {
        anyhow::bail!("not an RSA key");
    };
    let trim = |b: &[u8]| b[b.iter().position(|&x| x != 0).unwrap_or(0)..].to_vec();
    Ok(serde_json::json!({
        "kty": "RSA", "use": "sig", "kid": KID,
        "n": URL_SAFE_NO_PAD.encode(trim(rsa.modulus)),
        "e": URL_SAFE_NO_PAD.encode(trim(rsa.exponent)),
    }))
}

/// Access token claims as Azure writes them for a VM's managed identity, valid from `now` for
/// an hour.
pub fn msi_claims(now: i64, tenant: &str, principal: &str) -> serde_json::Value {
    serde_json::json!({
        "aud": "https://management.azure.com/",
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now, "nbf": now, "exp": now + 3600,
        "appid": "e1b2c3d4", "idtyp": "app", "oid": principal, "sub": principal, "tid": tenant,
        "xms_mirid": "/subscriptions/sub-1/resourcegroups/rg-1/providers/Microsoft.Compute/virtualMachines/vm-1",
    })
}

/// The namespace, its `/etc/hosts`, the test CA and the fake services.
pub struct AzureLab {
    lab: NetLab,
    member: u64,
    ca_path: std::path::PathBuf,
    /// The key that signs tokens and whose JWK the fake login service publishes.
    pub signer: Arc<TokenSigner>,
    token: Arc<Mutex<String>>,
    vm_principal: Arc<Mutex<String>>,
    requests: Arc<Mutex<Vec<Head>>>,
    servers: Vec<FakeServer>,
}

/// A JSON answer.
fn json(status: u16, body: &serde_json::Value) -> Answer {
    let headers = vec![("Content-Type".to_owned(), "application/json; charset=utf-8".to_owned())];
    (status, headers, body.to_string().into_bytes())
}

/// Resource Manager's error document.
fn arm_error(status: u16, code: &str, message: &str) -> Answer {
    json(status, &serde_json::json!({"error": {"code": code, "message": message}}))
}

/// The query of a request line's target, decoded.
fn query_of(head: &str) -> (String, Vec<(String, String)>) {
    let target = head.split(' ').nth(1).unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let pairs = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    (path.to_owned(), pairs)
}

/// The form fields of a request's body (after the blank line).
pub fn form_of(head: &str) -> Vec<(String, String)> {
    let body = head.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    url::form_urlencoded::parse(body.as_bytes()).into_owned().collect()
}

/// `login.microsoftonline.com`: key discovery, tenant discovery and the token endpoint.
fn login_answer(head: &str, keys: &[u8]) -> Answer {
    let (path, _) = query_of(head);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if head.starts_with("GET ") && path == "/common/.well-known/openid-configuration" {
        return json(
            200,
            &serde_json::json!({
                "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
                "jwks_uri": "https://login.microsoftonline.com/common/discovery/keys",
            }),
        );
    }
    if head.starts_with("GET ") && path == "/common/discovery/keys" {
        return (200, vec![("Content-Type".into(), "application/json".into())], keys.to_vec());
    }
    match (head.split(' ').next(), parts.as_slice()) {
        (Some("GET"), [tenant, "v2.0", ".well-known", "openid-configuration"]) => {
            let base = format!("https://login.microsoftonline.com/{tenant}");
            json(
                200,
                &serde_json::json!({
                    "token_endpoint": format!("{base}/oauth2/v2.0/token"),
                    "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
                    "issuer": format!("{base}/v2.0"),
                    "jwks_uri": format!("{base}/discovery/v2.0/keys"),
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                }),
            )
        }
        (Some("POST"), [_, "oauth2", "v2.0", "token"]) => {
            let form = form_of(head);
            let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            if field("grant_type") != Some("client_credentials") {
                return json(
                    400,
                    &serde_json::json!({
                        "error": "unsupported_grant_type", "error_codes": [70003]
                    }),
                );
            }
            if field("client_id") != Some(APP_ID) || field("client_secret") != Some(APP_SECRET) {
                return json(
                    401,
                    &serde_json::json!({
                        "error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '2f6b0c8e-51a4-4f0b-9a63-7d5e4c3b2a10'.",
                        "error_codes": [7000215],
                        "error_uri": "https://login.microsoftonline.com/error?code=7000215",
                    }),
                );
            }
            json(
                200,
                &serde_json::json!({
                    "token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                    "access_token": ARM_TOKEN,
                }),
            )
        }
        _ => (404, Vec::new(), b"not found".to_vec()),
    }
}

/// `management.azure.com`: the resource list, the VM and its network interface.
fn arm_answer(head: &str, vm_principal: &str) -> Answer {
    let bearer = format!("\r\nauthorization: bearer {}\r\n", ARM_TOKEN.to_ascii_lowercase());
    if !head.to_ascii_lowercase().contains(&bearer) {
        return arm_error(401, "InvalidAuthenticationToken", "The access token is invalid.");
    }
    let (path, query) = query_of(head);
    let api = query.iter().find(|(k, _)| k == "api-version").map(|(_, v)| v.as_str());
    let list = format!("/subscriptions/{SUBSCRIPTION}/resources");
    let want = if path == list {
        "2021-04-01"
    } else if path == VM_ID {
        "2022-03-01"
    } else if path == NIC_ID {
        "2022-01-01"
    } else {
        return arm_error(
            404,
            "ResourceNotFound",
            &format!("The resource '{path}' was not found."),
        );
    };
    if api != Some(want) {
        return arm_error(400, "InvalidApiVersionParameter", "The api-version is invalid.");
    }
    if path == list {
        let filter = query.iter().find(|(k, _)| k == "$filter").map_or("", |(_, v)| v.as_str());
        let mine = format!(
            "resourceType eq 'Microsoft.Compute/virtualMachines' and identity/principalId eq '{vm_principal}'"
        );
        let ghost = mine.replace(vm_principal, GHOST_PRINCIPAL);
        let value = if filter == ghost {
            vec![serde_json::json!({"id": GHOST_VM_ID, "name": "ghost"})]
        } else if filter == mine {
            vec![serde_json::json!({
                "id": VM_ID, "name": "blog", "type": "Microsoft.Compute/virtualMachines",
                "location": "westus",
                "identity": {"type": "SystemAssigned", "principalId": vm_principal},
            })]
        } else {
            Vec::new()
        };
        json(200, &serde_json::json!({ "value": value }))
    } else if path == VM_ID {
        json(
            200,
            &serde_json::json!({
                "id": VM_ID, "name": "blog", "type": "Microsoft.Compute/virtualMachines",
                "location": "westus",
                "identity": {"type": "SystemAssigned", "principalId": vm_principal},
                "properties": {
                    "vmId": "0b4c3a2e-6f1d-4e8a-9c7b-5d2e1f0a9b8c",
                    "hardwareProfile": {"vmSize": "Standard_B1s"},
                    "networkProfile": {"networkInterfaces": [
                        {"id": NIC_ID, "properties": {"primary": true}}
                    ]},
                    "provisioningState": "Succeeded",
                },
            }),
        )
    } else {
        json(
            200,
            &serde_json::json!({
                "id": NIC_ID, "name": "blog-nic", "type": "Microsoft.Network/networkInterfaces",
                "location": "westus",
                "properties": {
                    "provisioningState": "Succeeded",
                    "ipConfigurations": [{
                        "id": format!("{NIC_ID}/ipConfigurations/ipconfig1"), "name": "ipconfig1",
                        "properties": {
                            "privateIPAddress": "10.0.0.4", "privateIPAllocationMethod": "Dynamic",
                            "subnet": {"id": SUBNET_ID}, "primary": true,
                            "privateIPAddressVersion": "IPv4",
                        },
                    }],
                    "networkSecurityGroup": {"id": NSG_ID},
                    "primary": true,
                    "virtualMachine": {"id": VM_ID},
                },
            }),
        )
    }
}

impl AzureLab {
    /// Makes the namespace (with `169.254.169.254` on its loopback) and its `/etc/hosts`, and
    /// the signing key; the test CA goes under `dir`. Nothing listens yet: see
    /// [`AzureLab::enter`].
    ///
    /// # Errors
    /// When the namespace cannot be made (not root) or a file cannot be written.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let mut lab = NetLab::new("az", 0)?;
        let member = lab.add_client()?;
        lab.set_hosts(
            member,
            &[(LOGIN_ADDRESS, "login.microsoftonline.com"), (ARM_ADDRESS, "management.azure.com")],
        )?;
        let ns = lab.namespace(member)?.to_owned();
        let status = std::process::Command::new("ip")
            .args(["-n", &ns, "addr", "add", &format!("{IMDS_ADDRESS}/32"), "dev", "lo"])
            .status()?;
        anyhow::ensure!(status.success(), "ip addr add {IMDS_ADDRESS}: {status}");
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            lab,
            member,
            ca_path: dir.join("test-ca.pem"),
            signer: Arc::new(TokenSigner::new()?),
            token: Arc::new(Mutex::new(String::new())),
            vm_principal: Arc::new(Mutex::new(String::new())),
            requests: Arc::new(Mutex::new(Vec::new())),
            servers: Vec::new(),
        })
    }

    /// The words that start a program in the namespace with its `/etc/hosts` and the test CA
    /// as `SSL_CERT_FILE`.
    ///
    /// # Errors
    /// When the namespace is gone.
    pub fn launcher(&self) -> anyhow::Result<Vec<String>> {
        let mut words = self.lab.launcher(self.member)?;
        words.push("env".to_owned());
        words.push(format!("SSL_CERT_FILE={}", self.ca_path.display()));
        Ok(words)
    }

    /// Moves the calling thread into the namespace and starts the fake services there.
    ///
    /// # Errors
    /// When `setns` fails or a service cannot listen.
    pub fn enter(&mut self) -> anyhow::Result<()> {
        enter_namespace(&self.lab, self.member)?;
        let tls = Arc::new(test_ca_tls_for(
            &self.ca_path,
            &["login.microsoftonline.com", "management.azure.com"],
        )?);
        let keys = serde_json::json!({ "keys": [rsa_jwk(&self.signer)?] }).to_string().into_bytes();
        let log = Arc::clone(&self.requests);
        let login: Handler = Arc::new(move |head| {
            if !head.contains("/common/") {
                lock(&log).push(head.clone());
            }
            login_answer(head, &keys)
        });
        let listener = TcpListener::bind((LOGIN_ADDRESS, 443)).context("binding :443")?;
        self.servers.push(serve(listener, Some(Arc::clone(&tls)), login)?);

        let log = Arc::clone(&self.requests);
        let principal = Arc::clone(&self.vm_principal);
        let arm: Handler = Arc::new(move |head| {
            lock(&log).push(head.clone());
            arm_answer(head, &lock(&principal))
        });
        let listener = TcpListener::bind((ARM_ADDRESS, 443)).context("binding :443")?;
        self.servers.push(serve(listener, Some(tls), arm)?);

        let token = Arc::clone(&self.token);
        let imds: Handler = Arc::new(move |head| {
            if !head.to_ascii_lowercase().contains("\r\nmetadata: true\r\n") {
                return (400, Vec::new(), b"missing Metadata header".to_vec());
            }
            if head.starts_with(
                "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F ",
            ) {
                let t = lock(&token).clone();
                let body = serde_json::json!({"access_token": t, "token_type": "Bearer"});
                (200, Vec::new(), body.to_string().into_bytes())
            } else if head.starts_with(
                "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.core.windows.net%2F ",
            ) {
                // The server VM's managed identity, asked for Resource Manager.
                let expires_on = (crate::gcp::unix_now() + 3599).to_string();
                let body = serde_json::json!({
                    "access_token": ARM_TOKEN, "expires_in": "3599", "expires_on": expires_on,
                    "resource": "https://management.core.windows.net/", "token_type": "Bearer",
                });
                (200, Vec::new(), body.to_string().into_bytes())
            } else if head.starts_with("GET /metadata/instance?") {
                let body = serde_json::json!({"compute": {
                    "name": "vm-1", "subscriptionId": SUBSCRIPTION, "resourceGroupName": "rg-1"
                }});
                (200, Vec::new(), body.to_string().into_bytes())
            } else {
                (404, Vec::new(), b"not found".to_vec())
            }
        });
        let listener = TcpListener::bind((IMDS_ADDRESS, 80)).context("binding :80")?;
        self.servers.push(serve(listener, None, imds)?);
        Ok(())
    }

    /// Sets the token the metadata service hands out.
    pub fn set_token(&self, token: &str) {
        *lock(&self.token) = token.to_owned();
    }

    /// Sets the principal whose VM [`VM_ID`] is.
    pub fn set_vm_principal(&self, principal: &str) {
        *lock(&self.vm_principal) = principal.to_owned();
    }

    /// The requests the fake login service (key discovery left out) and Resource Manager
    /// answered since the last call, in order, each with its body after a blank line.
    pub fn take_requests(&self) -> Vec<Head> {
        std::mem::take(&mut *lock(&self.requests))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
