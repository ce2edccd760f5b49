//! Google's APIs behind `gcp_iit`'s `use_instance_metadata`, for the `gcp_iit` suite, inside
//! the namespace of a [`GcpLab`]: a fake `oauth2.googleapis.com` (the token endpoint: it
//! verifies a service account's JWT-bearer assertion with the account's public key and hands
//! out an access token) and a fake `compute.googleapis.com` (`instances.get`: the instances the
//! test describes, to holders of that token). Both serve HTTPS with the lab's test CA, and
//! record every request (head and body) for comparisons between servers.
//!
//! Needs root, as [`GcpLab`] does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use aws_lc_rs::signature::{
    KeyPair as _, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::gcp::{
    Answer, COMPUTE_ADDRESS, FakeServer, GcpLab, Handler, Head, OAUTH2_ADDRESS, serve,
};

/// The service account's email (the assertion's `iss`).
pub const SA_EMAIL: &str = "attestor@project-123.iam.gserviceaccount.com";
/// The key's ID (the assertion's `kid`).
pub const SA_KEY_ID: &str = "0123456789abcdef";
/// The key file's `token_uri`: Google's, answered by the fake.
pub const TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The key file's `quota_project_id`, which clients send as `X-Goog-User-Project`.
pub const QUOTA_PROJECT: &str = "billing-project";
/// The access token the fake token endpoint hands out.
pub const ACCESS_TOKEN: &str = "ya29.ward-test-access-token";
/// The scopes the Compute Engine client asks for, space-separated.
pub const SCOPES: &str = "https://www.googleapis.com/auth/cloud-platform \
                          https://www.googleapis.com/auth/compute \
                          https://www.googleapis.com/auth/compute.readonly \
                          https://www.googleapis.com/auth/devstorage.full_control \
                          https://www.googleapis.com/auth/devstorage.read_only \
                          https://www.googleapis.com/auth/devstorage.read_write";

/// A service-account key written as Google's JSON key file.
pub struct ServiceAccount {
    key: RsaKeyPair,
    /// The key file.
    pub path: PathBuf,
}

impl ServiceAccount {
    /// A new RSA key, written as `dir/<name>`.
    ///
    /// # Errors
    /// When the key cannot be made or the file written.
    pub fn write(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let generated = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
        let key = RsaKeyPair::from_pkcs8(&generated.serialize_der())
            .map_err(|e| anyhow::anyhow!("RSA key: {e}"))?;
        let file = serde_json::json!({
            "type": "service_account",
            "project_id": "project-123",
            "private_key_id": SA_KEY_ID,
            "private_key": generated.serialize_pem(),
            "client_email": SA_EMAIL,
            "client_id": "109876543210987654321",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": TOKEN_URI,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "quota_project_id": QUOTA_PROJECT,
            "universe_domain": "googleapis.com"
        });
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&file)?)?;
        Ok(Self { key, path })
    }
}

/// Splits a recorded request into its head (request line and headers) and body.
pub fn split_request(request: &str) -> (&str, &str) {
    request.split_once("\r\n\r\n").map_or((request, ""), |(h, b)| (h, b))
}

/// A header's value in a recorded request head (names compared without case).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A form body's fields.
pub fn form(body: &str) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes()).into_owned().collect()
}

/// A JWT's header and claims, decoded.
///
/// # Errors
/// When it is not three base64url JSON parts.
pub fn jwt_parts(jwt: &str) -> anyhow::Result<(serde_json::Value, serde_json::Value, Vec<u8>)> {
    let parts: Vec<&str> = jwt.split('.').collect();
    anyhow::ensure!(parts.len() == 3, "not a compact JWS: {jwt}");
    let json = |p: &str| -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p)?)?)
    };
    Ok((json(parts[0])?, json(parts[1])?, URL_SAFE_NO_PAD.decode(parts[2])?))
}

/// Whether an assertion is signed by `public` (PKCS#1 DER) and names the account, the token
/// endpoint and the scopes.
fn assertion_holds(assertion: &str, public: &[u8]) -> bool {
    let Some((signed, signature)) = assertion.rsplit_once('.') else { return false };
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else { return false };
    let verified = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public)
        .verify(signed.as_bytes(), &signature)
        .is_ok();
    let Ok((header, claims, _)) = jwt_parts(assertion) else { return false };
    verified
        && header["alg"] == "RS256"
        && header["kid"] == SA_KEY_ID
        && claims["iss"] == SA_EMAIL
        && claims["aud"] == TOKEN_URI
        && claims["scope"] == SCOPES
}

/// A Google API error answer (`{"error": {"code", "message", "errors": [...]}}`).
pub fn google_error(status: u16, message: &str, reason: &str) -> Answer {
    let body = serde_json::json!({"error": {
        "code": status,
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}]
    }});
    (status, vec![json_type()], body.to_string().into_bytes())
}

fn json_type() -> (String, String) {
    ("Content-Type".to_owned(), "application/json; charset=UTF-8".to_owned())
}

/// A `200 OK` JSON answer.
pub fn json_answer(body: &serde_json::Value) -> Answer {
    (200, vec![json_type()], body.to_string().into_bytes())
}

/// A token endpoint's (or the metadata server's) answer handing out [`ACCESS_TOKEN`].
pub fn access_token_answer() -> Answer {
    json_answer(&serde_json::json!({
        "access_token": ACCESS_TOKEN,
        "expires_in": 3599,
        "token_type": "Bearer"
    }))
}

/// The fake token endpoint and Compute Engine API, until dropped.
pub struct ComputeApi {
    /// Every request the token endpoint answered, in order (head, blank line, body).
    pub token_requests: Arc<Mutex<Vec<Head>>>,
    /// Every request the Compute Engine API answered, in order.
    pub compute_requests: Arc<Mutex<Vec<Head>>>,
    /// While set, the token endpoint refuses every assertion (`400 invalid_grant`).
    pub refuse_tokens: Arc<AtomicBool>,
    _servers: Vec<FakeServer>,
}

impl ComputeApi {
    /// Starts both servers in the lab's namespace (the calling thread must have entered it):
    /// tokens for assertions of `account`, and `instances.get` of project `project`, zone
    /// `zone`, answered from `instances` by instance name (`404 notFound` for others).
    ///
    /// # Errors
    /// When the lab has not been entered or a server cannot listen.
    pub fn start(
        lab: &GcpLab,
        account: &ServiceAccount,
        project: &str,
        zone: &str,
        instances: BTreeMap<String, Answer>,
    ) -> anyhow::Result<Self> {
        let tls = lab.tls.clone().context("the lab has not been entered")?;
        let token_requests = Arc::new(Mutex::new(Vec::new()));
        let compute_requests = Arc::new(Mutex::new(Vec::new()));

        let public = account.key.public_key().as_ref().to_vec();
        let refuse_tokens = Arc::new(AtomicBool::new(false));
        let refusing = Arc::clone(&refuse_tokens);
        let seen = Arc::clone(&token_requests);
        let token: Handler = Arc::new(move |request| {
            seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(request.clone());
            let (head, body) = split_request(request);
            let fields = form(body);
            let grant = fields.get("grant_type").map(String::as_str);
            let assertion = fields.get("assertion").map_or("", String::as_str);
            if !refusing.load(Ordering::SeqCst)
                && head.starts_with("POST /token ")
                && grant == Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
                && assertion_holds(assertion, &public)
            {
                access_token_answer()
            } else {
                let body =
                    r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
                (400, vec![json_type()], body.as_bytes().to_vec())
            }
        });
        let listener = std::net::TcpListener::bind((OAUTH2_ADDRESS, 443)).context(":443")?;
        let mut servers = vec![serve(listener, Some(Arc::clone(&tls)), token)?];

        let prefix = format!("GET /compute/v1/projects/{project}/zones/{zone}/instances/");
        let seen = Arc::clone(&compute_requests);
        let compute: Handler = Arc::new(move |request| {
            seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(request.clone());
            let (head, _) = split_request(request);
            if header(head, "authorization") != Some(&format!("Bearer {ACCESS_TOKEN}")) {
                return google_error(
                    401,
                    "Request is missing required authentication credential.",
                    "required",
                );
            }
            let line = head.lines().next().unwrap_or_default();
            let name = line
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once("?alt=json&prettyPrint=false HTTP/1.1"))
                .map(|(name, _)| name.to_owned());
            match name.and_then(|n| instances.get(&n).cloned().map(|a| (n, a))) {
                Some((_, answer)) => answer,
                None => google_error(
                    404,
                    &format!("The resource '{}' was not found", resource(line)),
                    "notFound",
                ),
            }
        });
        let listener = std::net::TcpListener::bind((COMPUTE_ADDRESS, 443)).context(":443")?;
        servers.push(serve(listener, Some(tls), compute)?);
        Ok(Self { token_requests, compute_requests, refuse_tokens, _servers: servers })
    }

    /// The last token request and the last `instances.get` request.
    pub fn last_requests(&self) -> (Head, Head) {
        let last = |v: &Arc<Mutex<Vec<Head>>>| {
            v.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .last()
                .cloned()
                .unwrap_or_default()
        };
        (last(&self.token_requests), last(&self.compute_requests))
    }
}

/// `projects/<p>/zones/<z>/instances/<name>` of an `instances.get` request line.
fn resource(line: &str) -> &str {
    line.split_once("/compute/v1/")
        .and_then(|(_, rest)| rest.split_once('?'))
        .map_or("", |(path, _)| path)
}
