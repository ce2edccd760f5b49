use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use rcgen::KeyPair;

use super::*;
use crate::node_attestor::test_http::{http_answer, serve};

const NOW: i64 = 1_800_000_000;

fn instance() -> Instance {
    serde_json::from_value(serde_json::json!({
        "id": "4815162342",
        "name": "blog-server",
        "tags": {"items": ["web", "blue"]},
        "serviceAccounts": [{"email": "1234-compute@developer.gserviceaccount.com"}],
        "labels": {"env": "prod", "team": "a", "secret": "x"},
        "metadata": {"items": [
            {"key": "role", "value": "frontend"},
            {"key": "empty"},
            {"key": "startup-script", "value": "echo hi"}
        ]}
    }))
    .unwrap()
}

fn config() -> InstanceMetadataConfig {
    InstanceMetadataConfig {
        service_account_file: None,
        allowed_label_keys: ["env", "team"].map(str::to_owned).into(),
        allowed_metadata_keys: ["role", "empty"].map(str::to_owned).into(),
        max_metadata_value_size: 0,
    }
}

#[test]
fn the_instance_gives_tags_accounts_and_only_allowed_labels_and_metadata() {
    let selectors = instance_selectors(&config(), &instance()).unwrap();
    assert_eq!(
        selectors,
        [
            "tag:web",
            "tag:blue",
            "sa:1234-compute@developer.gserviceaccount.com",
            "label:env:prod",
            "label:team:a",
            "metadata:role:frontend",
            "metadata:empty:",
        ]
    );
    assert_eq!(
        instance_selectors(&InstanceMetadataConfig::default(), &Instance::default()).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn nulls_read_as_go_reads_them_empty() {
    let instance: Instance = serde_json::from_value(serde_json::json!({
        "tags": {"items": null},
        "serviceAccounts": [{"email": null}],
        "labels": {"env": null},
        "metadata": {"items": [{"key": null, "value": null}]}
    }))
    .unwrap();
    let mut c = config();
    c.allowed_metadata_keys.insert(String::new());
    assert_eq!(instance_selectors(&c, &instance).unwrap(), ["sa:", "label:env:", "metadata::"]);
    let instance: Instance = serde_json::from_value(serde_json::json!({
        "tags": null, "serviceAccounts": null, "labels": null, "metadata": null
    }))
    .unwrap();
    assert_eq!(instance_selectors(&config(), &instance).unwrap(), Vec::<String>::new());
}

#[test]
fn an_allowed_metadata_value_over_the_limit_is_refused_as_spire_refuses_it() {
    let mut c = config();
    c.max_metadata_value_size = 4;
    let refusal = instance_selectors(&c, &instance()).unwrap_err();
    assert_eq!(refusal.code, RefusalCode::Internal);
    assert_eq!(refusal.message, "metadata \"role\" exceeded value limit (8 > 4)");
    // The default limit is 128 bytes.
    let mut long = instance();
    long.metadata.as_mut().unwrap().items[0].value = Some("x".repeat(129));
    let refusal = instance_selectors(&config(), &long).unwrap_err();
    assert_eq!(refusal.message, "metadata \"role\" exceeded value limit (129 > 128)");
}

#[test]
fn api_errors_read_as_googleapi_prints_them() {
    let not_found = serde_json::json!({"error": {
        "code": 404,
        "message": "The resource 'projects/p/zones/z/instances/i' was not found",
        "errors": [{
            "message": "The resource 'projects/p/zones/z/instances/i' was not found",
            "domain": "global",
            "reason": "notFound"
        }]
    }});
    assert_eq!(
        googleapi_error(404, not_found.to_string().as_bytes()),
        "googleapi: Error 404: The resource 'projects/p/zones/z/instances/i' was not found, \
         notFound"
    );
    assert_eq!(
        googleapi_error(503, b"busy"),
        "googleapi: got HTTP response code 503 with body: busy"
    );
    let two = serde_json::json!({"error": {"code": 403, "message": "denied", "errors": [
        {"reason": "forbidden", "message": "a"}, {"reason": "quota", "message": "b"}
    ]}});
    assert_eq!(
        googleapi_error(403, two.to_string().as_bytes()),
        "googleapi: Error 403: denied\nMore details:\nReason: forbidden, Message: a\n\
         Reason: quota, Message: b\n"
    );
    let bare = serde_json::json!({"error": {"message": "denied"}});
    assert_eq!(googleapi_error(401, bare.to_string().as_bytes()), "googleapi: Error 401: denied");
}

#[test]
fn instances_get_escapes_its_path_as_a_uri_template_does() {
    assert_eq!(
        instance_url(
            &Environment::default().compute_endpoint().unwrap(),
            "project-123",
            "us-west1-b",
            "a b/c"
        ),
        "https://compute.googleapis.com/compute/v1/projects/project-123/zones/us-west1-b/\
         instances/a%20b%2Fc?alt=json&prettyPrint=false"
    );
}

#[test]
fn the_endpoint_follows_the_universe_and_the_mtls_setting_as_the_go_client_does() {
    let env = |universe: Option<&str>, mtls: Option<&str>| Environment {
        universe_domain: universe.map(str::to_owned),
        mtls_endpoint: mtls.map(str::to_owned),
        ..Environment::default()
    };
    assert_eq!(
        env(Some("example.com"), Some("auto")).compute_endpoint().unwrap(),
        "https://compute.example.com/compute/v1/"
    );
    assert_eq!(
        env(None, Some("ALWAYS")).compute_endpoint().unwrap(),
        "https://compute.mtls.googleapis.com/compute/v1/"
    );
    assert_eq!(env(None, Some("never")).compute_endpoint().unwrap(), ENDPOINT);
    assert_eq!(
        ask(None, &env(Some("example.com"), Some("always"))).message,
        "failed to fetch instance metadata: failed to create compute service client: mTLS is \
         not supported in any universe other than googleapis.com"
    );
}

const ENDPOINT: &str = "https://compute.googleapis.com/compute/v1/";

fn service_account(token_uri: &str) -> (ServiceAccountKey, Vec<u8>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let public = RsaKeyPair::from_pkcs8(&key.serialize_der()).unwrap();
    let public = aws_lc_rs::signature::KeyPair::public_key(&public).as_ref().to_vec();
    let sa = ServiceAccountKey {
        private_key: key.serialize_pem(),
        private_key_id: "kid-1".to_owned(),
        client_email: "attestor@project-123.iam.gserviceaccount.com".to_owned(),
        token_uri: token_uri.to_owned(),
        universe_domain: String::new(),
    };
    (sa, public)
}

#[test]
fn the_assertion_is_signed_with_the_key_and_carries_gos_header_and_claims() {
    let (sa, public) = service_account("https://oauth2.googleapis.com/token");
    let jwt = service_account_assertion(&sa, GOOGLE_TOKEN_URL, NOW).unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header = URL_SAFE_NO_PAD.decode(parts[0]).unwrap();
    assert_eq!(header, br#"{"alg":"RS256","typ":"JWT","kid":"kid-1"}"#);
    let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        claims,
        format!(
            "{{\"iss\":\"attestor@project-123.iam.gserviceaccount.com\",\"scope\":\"{}\",\
             \"exp\":{},\"iat\":{},\"aud\":\"https://oauth2.googleapis.com/token\"}}",
            SCOPES.join(" "),
            NOW - 10 + 3600,
            NOW - 10
        )
    );
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .unwrap();
    let bad = ServiceAccountKey { private_key: "nope".to_owned(), ..sa };
    assert!(
        service_account_assertion(&bad, GOOGLE_TOKEN_URL, NOW)
            .unwrap_err()
            .starts_with("private key should be a PEM or plain PKCS1 or PKCS8: ")
    );
}

const URL: &str = "https://compute.googleapis.com/compute/v1/projects/project-123/zones/\
                   us-west1-b/instances/blog-server?alt=json&prettyPrint=false";

fn ask(file: Option<&Path>, env: &Environment) -> Refusal {
    ComputeClient::new()
        .unwrap()
        .instance(file, env, "project-123", "us-west1-b", "blog-server", NOW)
        .unwrap_err()
}

#[test]
fn credential_failures_are_refused_with_the_go_libraries_texts() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let r = ask(Some(&missing), &Environment::default());
    assert_eq!(r.code, RefusalCode::Internal);
    assert_eq!(
        r.message,
        format!(
            "failed to fetch instance metadata: failed to create compute service client: open \
             {}: no such file or directory",
            missing.display()
        )
    );
    let odd = dir.path().join("odd.json");
    std::fs::write(&odd, r#"{"type": "mystery"}"#).unwrap();
    let env = Environment {
        application_credentials: Some(odd.display().to_string()),
        ..Environment::default()
    };
    assert_eq!(
        ask(None, &env).message,
        "failed to fetch instance metadata: failed to create compute service client: \
         credentials: unsupported unidentified file type"
    );
    std::fs::write(&odd, "{").unwrap();
    assert_eq!(
        ask(Some(&odd), &Environment::default()).message,
        "failed to fetch instance metadata: failed to create compute service client: \
         unexpected end of JSON input"
    );
}

#[test]
fn a_refused_token_request_is_reported_as_the_instance_request_failing() {
    let body = r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
    let (addr, heads) = serve(vec![http_answer("400 Bad Request", "", body)]);
    let token_uri = format!("http://{addr}/token");
    let (sa, _) = service_account(&token_uri);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sa.json");
    let json = serde_json::json!({
        "type": "service_account",
        "private_key": sa.private_key,
        "private_key_id": sa.private_key_id,
        "client_email": sa.client_email,
        "token_uri": token_uri,
    });
    std::fs::write(&file, json.to_string()).unwrap();
    let r = ask(Some(&file), &Environment::default());
    assert_eq!(
        r.message,
        format!(
            "failed to fetch instance metadata: failed to fetch instance metadata: Get {URL:?}: \
             auth: cannot fetch token: 400\nResponse: {body}"
        )
    );
    let head = heads.recv().unwrap().to_ascii_lowercase();
    assert!(head.starts_with("post /token http/1.1\r\n"), "{head}");
    assert!(head.contains("content-type: application/x-www-form-urlencoded\r\n"), "{head}");
}

#[test]
fn without_a_file_the_metadata_servers_token_is_asked_for() {
    let (addr, heads) = serve(vec![http_answer("404 Not Found", "", "")]);
    let env = Environment { metadata_host: Some(addr), ..Environment::default() };
    let r = ask(None, &env);
    let suffix = "instance/service-accounts/default/token?scopes=https%3A%2F%2Fwww.googleapis.com\
                  %2Fauth%2Fcloud-platform%2Chttps%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcompute\
                  %2Chttps%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcompute.readonly%2Chttps%3A%2F%2F\
                  www.googleapis.com%2Fauth%2Fdevstorage.full_control%2Chttps%3A%2F%2F\
                  www.googleapis.com%2Fauth%2Fdevstorage.read_only%2Chttps%3A%2F%2F\
                  www.googleapis.com%2Fauth%2Fdevstorage.read_write";
    assert_eq!(
        r.message,
        format!(
            "failed to fetch instance metadata: failed to fetch instance metadata: Get {URL:?}: \
             credentials: cannot fetch token: metadata: GCE metadata {suffix:?} not defined"
        )
    );
    let head = heads.recv().unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with(&format!(
            "get /computemetadata/v1/{} http/1.1\r\n",
            suffix.to_lowercase()
        )),
        "{head}"
    );
    assert!(head.contains("metadata-flavor: google\r\n"), "{head}");
}

fn answer(status: u16, content_type: &str, body: &str) -> Result<HttpResponse, String> {
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
    let status_text = status.to_string();
    Ok(HttpResponse { status, status_text, headers, body: body.to_owned().into() })
}

#[test]
fn refresh_token_answers_read_as_the_three_legged_flow_reads_them() {
    let json = "application/json; charset=utf-8";
    assert_eq!(
        refreshed_token(answer(200, json, r#"{"access_token":"t","token_type":"Bearer"}"#)),
        Ok(("Bearer".to_owned(), "t".to_owned()))
    );
    assert_eq!(
        refreshed_token(answer(
            400,
            json,
            r#"{"error":"invalid_grant","error_description":"Bad Request"}"#
        )),
        Err("auth: \"invalid_grant\" \"Bad Request\"".to_owned())
    );
    assert_eq!(
        refreshed_token(answer(500, "text/html", "oops")),
        Err("auth: cannot fetch token: 500\nResponse: oops".to_owned())
    );
    assert_eq!(
        refreshed_token(answer(200, "text/plain", "access_token=q&token_type=bearer")),
        Ok(("bearer".to_owned(), "q".to_owned()))
    );
    assert_eq!(
        refreshed_token(answer(200, json, "{}")),
        Err("auth: server response missing access_token".to_owned())
    );
}
