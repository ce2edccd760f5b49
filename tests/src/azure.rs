//! Azure for the `azure_msi` suite, inside a network namespace the test makes: a fake instance
//! metadata service on `169.254.169.254:80` (an address of the namespace's loopback) that
//! hands out a managed identity access token and the instance's metadata, and a fake
//! `login.microsoftonline.com` (HTTPS on port 443, certificate from a test CA) that publishes
//! the OpenID configuration and key set of the key that signs the token. Processes started
//! with [`AzureLab::launcher`] see the name in their `/etc/hosts` and trust the test CA through
//! `SSL_CERT_FILE`.
//!
//! Needs root (`ip netns`, `setns`); see [`crate::gcp`] for how the calling thread joins the
//! namespace.

use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::gcp::{FakeServer, Handler, TokenSigner, enter_namespace, serve, test_ca_tls};
use crate::netns::NetLab;

/// Where `login.microsoftonline.com` is in the namespace.
pub const LOGIN_ADDRESS: &str = "127.0.0.2";
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
    servers: Vec<FakeServer>,
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
        lab.set_hosts(member, &[(LOGIN_ADDRESS, "login.microsoftonline.com")])?;
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
        let tls = test_ca_tls(&self.ca_path, "login.microsoftonline.com")?;
        let keys = serde_json::json!({ "keys": [rsa_jwk(&self.signer)?] }).to_string().into_bytes();
        let login: Handler = Arc::new(move |head| {
            let json =
                |b: Vec<u8>| (200, vec![("Content-Type".into(), "application/json".into())], b);
            if head.starts_with("GET /common/.well-known/openid-configuration ") {
                json(
                    br#"{"issuer":"https://login.microsoftonline.com/{tenantid}/v2.0","jwks_uri":"https://login.microsoftonline.com/common/discovery/keys"}"#
                        .to_vec(),
                )
            } else if head.starts_with("GET /common/discovery/keys ") {
                json(keys.clone())
            } else {
                (404, Vec::new(), b"not found".to_vec())
            }
        });
        let listener = TcpListener::bind((LOGIN_ADDRESS, 443)).context("binding :443")?;
        self.servers.push(serve(listener, Some(Arc::new(tls)), login)?);

        let token = Arc::clone(&self.token);
        let imds: Handler = Arc::new(move |head| {
            if !head.to_ascii_lowercase().contains("\r\nmetadata: true\r\n") {
                return (400, Vec::new(), b"missing Metadata header".to_vec());
            }
            if head.starts_with(
                "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F ",
            ) {
                let t = token.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                let body = serde_json::json!({"access_token": t, "token_type": "Bearer"});
                (200, Vec::new(), body.to_string().into_bytes())
            } else if head.starts_with("GET /metadata/instance?") {
                let body = serde_json::json!({"compute": {
                    "name": "vm-1", "subscriptionId": "sub-1", "resourceGroupName": "rg-1"
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
        *self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = token.to_owned();
    }
}
