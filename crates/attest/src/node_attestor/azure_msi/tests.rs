use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::*;
use crate::node_attestor::test_http::{http_answer, serve, serve_with};

const NOW: i64 = 1_800_000_000;
const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const PRINCIPAL: &str = "99999999-8888-7777-6666-555555555555";

/// An ES256 key of the issuer and its JWK.
struct Issuer {
    key: EcdsaKeyPair,
    jwk: serde_json::Value,
}

fn issuer(kid: &str) -> Issuer {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = key.public_key().as_ref().to_vec();
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    Issuer { key, jwk }
}

impl Issuer {
    fn set(&self) -> String {
        serde_json::json!({ "keys": [self.jwk] }).to_string()
    }

    fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn payload(&self, claims: &serde_json::Value) -> Vec<u8> {
        let token = self.sign(&serde_json::json!({"alg": "ES256", "kid": "k1"}), claims);
        serde_json::to_vec(&AttestationData { token }).unwrap()
    }
}

fn claims() -> serde_json::Value {
    serde_json::json!({
        "aud": DEFAULT_RESOURCE_ID,
        "iss": format!("https://sts.windows.net/{TENANT}/"),
        "iat": NOW, "nbf": NOW, "exp": NOW + 3600,
        "oid": PRINCIPAL, "sub": PRINCIPAL, "tid": TENANT,
    })
}

/// Nothing listens there: the lookup fails once the token is accepted.
const NOWHERE: &str = "http://127.0.0.1:9";
const SUB: &str = "d5b40d61-272e-48da-beb9-05f295c42bd6";

fn tenant() -> AzureTenant {
    AzureTenant {
        resource_id: String::new(),
        subscription_id: SUB.into(),
        app_id: "app-1".into(),
        app_secret: "s3cret".into(),
    }
}

fn config(i: &Issuer) -> AzureMsiServerConfig {
    AzureMsiServerConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        tenants: BTreeMap::from([(TENANT.to_owned(), tenant())]),
        agent_path_template: None,
        oidc_issuer: None,
        extra_keys: Some(serde_json::from_str(&i.set()).unwrap()),
        login_url: NOWHERE.into(),
        resource_manager_url: NOWHERE.into(),
        metadata_url: NOWHERE.into(),
    }
}

/// A verifier of [`config`] whose login service and Resource Manager are both at `addr`.
fn verifier_on(i: &Issuer, addr: &str) -> AzureMsiVerifier {
    let mut c = config(i);
    c.login_url = format!("http://{addr}");
    c.resource_manager_url = format!("http://{addr}");
    AzureMsiVerifier::new(c).unwrap()
}

/// The refusal of a token that passed every check, from a server that cannot reach Azure.
fn unreachable() -> String {
    format!(
        "unable to get resource for principal \"{PRINCIPAL}\": rpc error: code = Internal desc = \
         unable to list virtual machine by principal: ClientSecretCredential: Post \
         \"{NOWHERE}/{TENANT}/oauth2/v2.0/token\": dial: "
    )
}

fn accepted_claims(v: Result<Verification, Refusal>) {
    let (code, message) = refusal(v);
    assert_eq!(code, RefusalCode::Internal);
    assert!(message.starts_with(&unreachable()), "{message}");
}

fn arm_id(group: &str, rest: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{group}/providers/{rest}")
}

fn json_answer(body: &serde_json::Value) -> String {
    http_answer("200 OK", "Content-Type: application/json\r\n", &body.to_string())
}

/// `begin`, then `complete` when it attests (as the server runs them).
fn run(v: &AzureMsiVerifier, payload: &[u8], now: i64) -> Result<Verification, Refusal> {
    match v.begin(payload, now)? {
        Verification::Attested(a) => v.complete(a, now).map(Verification::Attested),
        other => Ok(other),
    }
}

#[test]
fn begin_checks_the_token_without_asking_azure() {
    let i = issuer("k1");
    // Nothing listens at NOWHERE: `begin` must not need it.
    let v = AzureMsiVerifier::new(config(&i)).unwrap();
    let Ok(Verification::Attested(a)) = v.begin(&i.payload(&claims()), NOW) else {
        panic!("not attested");
    };
    assert_eq!(
        a.agent_id.as_str(),
        format!("spiffe://example.org/spire/agent/azure_msi/{TENANT}/{PRINCIPAL}")
    );
    assert!(!a.can_reattest);
    let (code, message) = refusal(v.complete(a, NOW).map(Verification::Attested));
    assert_eq!(code, RefusalCode::Internal);
    assert!(message.starts_with(&unreachable()), "{message}");
}

fn refusal(v: Result<Verification, Refusal>) -> (RefusalCode, String) {
    match v {
        Err(r) => (r.code, r.message),
        Ok(other) => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_valid_token_attests_with_the_selectors_resource_manager_gives() {
    let vm = arm_id("frontend", "Microsoft.Compute/virtualMachines/blog");
    let nic = arm_id("frontend", "Microsoft.Network/networkInterfaces/blog-nic");
    let (addr, heads) = serve(vec![
        json_answer(&serde_json::json!({
            "token_type": "Bearer", "expires_in": 3599, "access_token": "arm-token"
        })),
        json_answer(&serde_json::json!({"value": [{"id": vm, "name": "blog"}]})),
        json_answer(&serde_json::json!({"id": vm, "properties": {"networkProfile": {
            "networkInterfaces": [{"id": nic}, {}]
        }}})),
        json_answer(&serde_json::json!({"id": nic, "properties": {
            "networkSecurityGroup": {
                "id": arm_id("frontend", "Microsoft.Network/networkSecurityGroups/webservers")
            },
            "ipConfigurations": [
                {"properties": {"subnet": {
                    "id": arm_id("net", "Microsoft.Network/virtualNetworks/vnet/subnets/default")
                }}},
                {"properties": {"subnet": {
                    "id": arm_id("net", "Microsoft.Network/virtualNetworks/vnet/subnets/db")
                }}},
                {"properties": {}}
            ]
        }})),
    ]);
    let i = issuer("k1");
    let mut c = config(&i);
    c.login_url = format!("http://{addr}");
    c.resource_manager_url = format!("http://{addr}/");
    let v = AzureMsiVerifier::new(c).unwrap();
    let Ok(Verification::Attested(a)) = run(&v, &i.payload(&claims()), NOW) else {
        panic!("not attested");
    };
    assert_eq!(
        a.agent_id.as_str(),
        format!("spiffe://example.org/spire/agent/azure_msi/{TENANT}/{PRINCIPAL}")
    );
    assert_eq!(
        a.selector_values,
        [
            "network-security-group:frontend:webservers".to_owned(),
            format!("subscription-id:{SUB}"),
            "virtual-network-subnet:net:vnet:db".to_owned(),
            "virtual-network-subnet:net:vnet:default".to_owned(),
            "virtual-network:net:vnet".to_owned(),
            "vm-name:frontend:blog".to_owned(),
        ]
    );
    assert!(!a.can_reattest);
    let token = heads.recv().unwrap();
    assert!(
        token.starts_with(&format!("POST /{TENANT}/oauth2/v2.0/token HTTP/1.1\r\n")),
        "{token}"
    );
    assert!(
        token.contains("content-type: application/x-www-form-urlencoded; charset=utf-8\r\n"),
        "{token}"
    );
    let list = heads.recv().unwrap();
    assert!(
        list.starts_with(&format!(
            "GET /subscriptions/{SUB}/resources?%24filter=resourceType+eq+%27Microsoft.Compute%2F\
             virtualMachines%27+and+identity%2FprincipalId+eq+%27{PRINCIPAL}%27&api-version=\
             2021-04-01 HTTP/1.1\r\n"
        )),
        "{list}"
    );
    assert!(list.to_ascii_lowercase().contains("authorization: bearer arm-token\r\n"), "{list}");
    let vm_get = heads.recv().unwrap();
    assert!(
        vm_get.starts_with(&format!("GET {vm}?api-version=2022-03-01 HTTP/1.1\r\n")),
        "{vm_get}"
    );
    let nic_get = heads.recv().unwrap();
    assert!(
        nic_get.starts_with(&format!("GET {nic}?api-version=2022-01-01 HTTP/1.1\r\n")),
        "{nic_get}"
    );
}

/// The refusal `answers` (after a good token) lead to.
fn lookup_refusal(answers: Vec<String>) -> (RefusalCode, String) {
    let mut all = vec![json_answer(&serde_json::json!({"expires_in": 3599, "access_token": "t"}))];
    all.extend(answers);
    let (addr, _heads) = serve(all);
    let i = issuer("k1");
    let v = verifier_on(&i, &addr);
    refusal(run(&v, &i.payload(&claims()), NOW))
}

#[test]
fn lookup_failures_are_refused_with_spire_texts() {
    use RefusalCode::Internal;
    let principal = format!(
        "unable to get resource for principal \"{PRINCIPAL}\": rpc error: code = Internal desc = "
    );
    assert_eq!(
        lookup_refusal(vec![json_answer(&serde_json::json!({"value": []}))]),
        (Internal, format!("{principal}principal \"{PRINCIPAL}\" not found"))
    );
    let vm = arm_id("rg", "Microsoft.Compute/virtualMachines/vm");
    assert_eq!(
        lookup_refusal(vec![json_answer(&serde_json::json!({"value": [{"id": vm}, {"id": vm}]}))]),
        (Internal, format!("{principal}expected one result for principal \"{PRINCIPAL}\" at most"))
    );
    assert_eq!(
        lookup_refusal(vec![json_answer(&serde_json::json!({"value": [{"name": "x"}]}))]),
        (Internal, format!("{principal}virtual machine resource missing ID"))
    );
    assert_eq!(
        lookup_refusal(vec![json_answer(&serde_json::json!({"value": [{"id": "/vm"}]}))]),
        (Internal, "malformed virtual machine ID \"/vm\"".into())
    );
    let error = r#"{"error":{"code":"AuthorizationFailed","message":"no","details":[]}}"#;
    let (code, message) = lookup_refusal(vec![http_answer("403 Forbidden", "", error)]);
    assert_eq!(code, Internal);
    assert_eq!(
        message,
        format!(
            "{principal}unable to list virtual machine by principal: GET http://{}/subscriptions/{SUB}/resources\n\
             {SEP}\nRESPONSE 403: 403 Forbidden\nERROR CODE: AuthorizationFailed\n{SEP}\n{{\n  \
             \"error\": {{\n    \"code\": \"AuthorizationFailed\",\n    \"message\": \"no\",\n    \
             \"details\": []\n  }}\n}}\n{SEP}\n",
            message.split("GET http://").nth(1).unwrap().split('/').next().unwrap(),
        )
    );
    let (_, message) = lookup_refusal(vec![
        json_answer(&serde_json::json!({"value": [{"id": vm}]})),
        http_answer("404 Not Found", "x-ms-error-code: ResourceNotFound\r\n", ""),
    ]);
    assert!(
        message.starts_with(
            "unable to get virtual machine \"rg:vm\": rpc error: code = Internal desc = unable to \
             get virtual machine: GET http://"
        ),
        "{message}"
    );
    assert!(
        message.ends_with(&format!(
            "/virtualMachines/vm\n{SEP}\nRESPONSE 404: 404 Not Found\nERROR CODE: \
             ResourceNotFound\n{SEP}\nResponse contained no body\n{SEP}\n"
        )),
        "{message}"
    );
    let (_, message) = lookup_refusal(vec![
        json_answer(&serde_json::json!({"value": [{"id": vm}]})),
        json_answer(&serde_json::json!({"properties": {"networkProfile": {
            "networkInterfaces": [{"id": "/nic"}]
        }}})),
    ]);
    assert_eq!(message, "malformed network interface ID \"/nic\"");
}

#[test]
fn the_resource_list_is_followed_through_its_next_links() {
    let vm = arm_id("rg", "Microsoft.Compute/virtualMachines/vm");
    let (addr, heads) = serve_with(|addr| {
        let next = format!(
            "http://{addr}/subscriptions/{SUB}/resources?api-version=2021-04-01&%24skiptoken=a%20b;c"
        );
        vec![
            json_answer(&serde_json::json!({"expires_in": 3599, "access_token": "t"})),
            json_answer(&serde_json::json!({"value": [], "nextLink": next})),
            json_answer(&serde_json::json!({"value": [{"id": vm}]})),
            json_answer(&serde_json::json!({"id": vm, "properties": {}})),
        ]
    });
    let i = issuer("k1");
    let v = verifier_on(&i, &addr);
    let Ok(Verification::Attested(a)) = run(&v, &i.payload(&claims()), NOW) else {
        panic!("not attested");
    };
    assert_eq!(a.selector_values, [format!("subscription-id:{SUB}"), "vm-name:rg:vm".to_owned()]);
    // The SDK decodes the link's query and encodes it again, keys sorted.
    let page = heads.iter().nth(2).unwrap();
    assert!(
        page.starts_with(&format!(
            "GET /subscriptions/{SUB}/resources?%24skiptoken=a+b%3Bc&api-version=2021-04-01 HTTP/1.1\r\n"
        )),
        "{page}"
    );
    assert!(page.to_ascii_lowercase().contains("authorization: bearer t\r\n"), "{page}");
}

#[test]
fn a_next_link_to_another_host_is_refused_and_never_sent_the_token() {
    let (elsewhere, elsewhere_heads) = serve(vec![json_answer(&serde_json::json!({"value": []}))]);
    let next = format!("http://{elsewhere}/subscriptions/{SUB}/resources?api-version=2021-04-01");
    let (addr, _heads) = serve(vec![
        json_answer(&serde_json::json!({"expires_in": 3599, "access_token": "t"})),
        json_answer(&serde_json::json!({"value": [], "nextLink": next})),
    ]);
    let i = issuer("k1");
    let v = verifier_on(&i, &addr);
    let Err(refusal) = run(&v, &i.payload(&claims()), NOW) else { panic!("attested") };
    assert!(refusal.message.contains("is not on Resource Manager's endpoint"), "{refusal:?}");
    assert!(
        elsewhere_heads.recv_timeout(std::time::Duration::from_millis(300)).is_err(),
        "the other host was asked"
    );
}

#[test]
fn a_token_lifetime_beyond_any_clock_is_believed_for_a_day_only() {
    let vm = arm_id("rg", "Microsoft.Compute/virtualMachines/vm");
    for lifetime in [serde_json::json!(u64::MAX), serde_json::json!("18446744073709551615")] {
        let (addr, _heads) = serve(vec![
            json_answer(&serde_json::json!({"expires_in": lifetime, "access_token": "t"})),
            json_answer(&serde_json::json!({"value": [{"id": vm}]})),
            json_answer(&serde_json::json!({"id": vm, "properties": {}})),
        ]);
        let i = issuer("k1");
        let v = verifier_on(&i, &addr);
        assert!(
            matches!(run(&v, &i.payload(&claims()), NOW), Ok(Verification::Attested(_))),
            "expires_in {lifetime}"
        );
    }
}

const SEP: &str =
    "--------------------------------------------------------------------------------";

#[test]
fn a_refused_client_secret_is_reported_as_the_sdk_reports_it() {
    let body = r#"{"error":"invalid_client","error_codes":[7000215]}"#;
    let (addr, _heads) = serve(vec![http_answer("401 Unauthorized", "", body)]);
    let i = issuer("k1");
    let mut c = config(&i);
    c.login_url = format!("http://{addr}");
    let v = AzureMsiVerifier::new(c).unwrap();
    assert_eq!(
        refusal(run(&v, &i.payload(&claims()), NOW)),
        (
            RefusalCode::Internal,
            format!(
                "unable to get resource for principal \"{PRINCIPAL}\": rpc error: code = Internal \
                 desc = unable to list virtual machine by principal: ClientSecretCredential \
                 authentication failed. \nPOST http://{addr}/{TENANT}/oauth2/v2.0/token\n{SEP}\n\
                 RESPONSE 401: 401 Unauthorized\n{SEP}\n{{\n  \"error\": \"invalid_client\",\n  \
                 \"error_codes\": [\n    7000215\n  ]\n}}\n{SEP}\nTo troubleshoot, visit \
                 https://aka.ms/azsdk/go/identity/troubleshoot#client-secret"
            )
        )
    );
}

#[test]
fn go_json_indent_reflows_as_go_does() {
    use resource_manager::go_json_indent;
    assert_eq!(
        go_json_indent(b" {\"a\":[],\"b\":{},\"c\":[1, \"x,y\"]} \n").unwrap(),
        "{\n  \"a\": [],\n  \"b\": {},\n  \"c\": [\n    1,\n    \"x,y\"\n  ]\n} \n"
    );
    assert_eq!(go_json_indent(b"not json"), None);
    assert_eq!(resource_manager::query_escape("a b/'~*"), "a+b%2F%27~%2A");
}

#[test]
fn bad_tokens_are_refused_with_spire_codes_and_messages() {
    use RefusalCode::{Internal, InvalidArgument, PermissionDenied};
    let i = issuer("k1");
    let v = AzureMsiVerifier::new(config(&i)).unwrap();
    let r = |payload: &[u8]| refusal(run(&v, payload, NOW));
    assert_eq!(
        r(b"{\"token\":\"\"}"),
        (InvalidArgument, "missing token from attestation data".into())
    );
    assert_eq!(
        r(b"{\"tok"),
        (InvalidArgument, "failed to unmarshal data payload: unexpected end of JSON input".into())
    );
    let no_kid = serde_json::to_vec(&AttestationData {
        token: i.sign(&serde_json::json!({"alg": "ES256"}), &claims()),
    })
    .unwrap();
    assert_eq!(r(&no_kid), (InvalidArgument, "token missing key id".into()));
    let other_kid = serde_json::to_vec(&AttestationData {
        token: i.sign(&serde_json::json!({"alg": "ES256", "kid": "k2"}), &claims()),
    })
    .unwrap();
    assert_eq!(r(&other_kid), (InvalidArgument, "key id \"k2\" not found".into()));
    assert_eq!(
        r(&issuer("k1").payload(&claims())),
        (InvalidArgument, format!("unable to verify token: {CRYPTO_FAILURE}"))
    );
    let hs = serde_json::to_vec(&AttestationData {
        token: i.sign(&serde_json::json!({"alg": "HS256", "kid": "k1"}), &claims()),
    })
    .unwrap();
    assert!(r(&hs).1.starts_with("unable to parse token: unexpected signature algorithm \"HS256\"; expected [\"RS256\" \"RS384\""));

    let mut c = claims();
    c["tid"] = "".into();
    assert_eq!(r(&i.payload(&c)), (Internal, "token missing tenant ID claim".into()));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(r(&i.payload(&c)), (Internal, "token missing subject claim".into()));
    let mut c = claims();
    c["tid"] = "other-tenant".into();
    assert_eq!(
        r(&i.payload(&c)),
        (PermissionDenied, "tenant \"other-tenant\" is not authorized".into())
    );
    let mut c = claims();
    c["aud"] = "https://vault.azure.net".into();
    assert_eq!(
        r(&i.payload(&c)),
        (
            Internal,
            "unable to validate token claims: go-jose/go-jose/jwt: validation failed, invalid \
             audience claim (aud)"
                .into()
        )
    );
    // Five minutes of leeway.
    let good = i.payload(&claims());
    accepted_claims(run(&v, &good, NOW + 3600 + 300));
    assert_eq!(
        refusal(run(&v, &good, NOW + 3600 + 301)).1,
        "unable to validate token claims: go-jose/go-jose/jwt: validation failed, token is \
         expired (exp)"
    );
}

#[test]
fn the_key_set_is_discovered_from_the_issuer() {
    let i = issuer("k1");
    let keys = i.set();
    let (keys_addr, key_heads) = serve(vec![http_answer("200 OK", "", &keys)]);
    let discovery = http_answer(
        "200 OK",
        "",
        &format!("{{\"jwks_uri\": \"http://{keys_addr}/discovery/keys\"}}"),
    );
    let (oidc_addr, oidc_heads) = serve(vec![discovery]);
    let mut c = config(&i);
    c.extra_keys = None;
    c.oidc_issuer = Some(format!("http://{oidc_addr}/common/"));
    let v = AzureMsiVerifier::new(c).unwrap();
    accepted_claims(run(&v, &i.payload(&claims()), NOW));
    // Kept for an hour: no second fetch.
    accepted_claims(run(&v, &i.payload(&claims()), NOW));
    assert!(
        oidc_heads.recv().unwrap().starts_with("GET /common/.well-known/openid-configuration ")
    );
    assert!(key_heads.recv().unwrap().starts_with("GET /discovery/keys "));

    let (down, _h) = serve(vec![http_answer("404 Not Found", "", "nope")]);
    let mut c = config(&i);
    c.oidc_issuer = Some(format!("http://{down}/common/"));
    let v = AzureMsiVerifier::new(c).unwrap();
    assert_eq!(
        refusal(run(&v, &i.payload(&claims()), NOW)),
        (RefusalCode::Internal, "unable to obtain JWKS: unexpected status code 404: nope".into())
    );
}

#[test]
fn the_agent_asks_the_metadata_service_as_spire_does() {
    let (addr, heads) = serve(vec![
        http_answer("200 OK", "", "{\"access_token\": \"a.b.c\", \"expires_in\": \"3599\"}"),
        http_answer("400 Bad Request", "", "{\"error\":\"invalid_resource\"}"),
    ]);
    let a = AzureMsiAttestor::new(AzureMsiAgentConfig {
        resource_id: String::new(),
        metadata_host: addr,
    })
    .unwrap();
    assert_eq!(a.payload().unwrap(), b"{\"token\":\"a.b.c\"}");
    let head = heads.recv().unwrap();
    assert!(
        head.starts_with(
            "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2F\
             management.azure.com%2F HTTP/1.1\r\n"
        ),
        "{head}"
    );
    assert!(head.to_ascii_lowercase().contains("metadata: true\r\n"), "{head}");
    assert_eq!(
        a.payload().unwrap_err().to_string(),
        "azure_msi: unable to fetch token: unexpected status code 400: {\"error\":\"invalid_resource\"}"
    );
}

#[test]
fn configuration_is_refused_as_spire_refuses_it() {
    let i = issuer("k1");
    let mut c = config(&i);
    c.tenants.clear();
    assert_eq!(
        AzureMsiVerifier::new(c).unwrap_err().to_string(),
        "azure_msi: configuration must have at least one tenant"
    );
    let refused = |edit: fn(&mut AzureTenant)| {
        let mut c = config(&i);
        edit(c.tenants.get_mut(TENANT).unwrap());
        AzureMsiVerifier::new(c).unwrap_err().to_string()
    };
    assert_eq!(
        refused(|t| t.app_id.clear()),
        format!("azure_msi: misconfigured tenant \"{TENANT}\": missing app id")
    );
    assert_eq!(
        refused(|t| t.subscription_id.clear()),
        format!("azure_msi: misconfigured tenant \"{TENANT}\": missing subscription id")
    );
    assert_eq!(
        refused(|t| t.app_secret.clear()),
        format!("azure_msi: misconfigured tenant \"{TENANT}\": missing app secret")
    );
    assert!(refused(|t| *t = AzureTenant::default()).starts_with(&format!(
        "azure_msi: tenant \"{TENANT}\" has no subscription_id, app_id and app_secret, so \
             the server VM's managed identity is used, but its instance metadata could not be \
             read: Get \"{NOWHERE}/metadata/instance?api-version=2017-08-01&format=json\": "
    )),);
}

#[test]
fn a_tenant_without_credentials_uses_the_vms_managed_identity_in_its_own_subscription() {
    let vm = arm_id("rg", "Microsoft.Compute/virtualMachines/vm");
    let (imds, imds_heads) = serve(vec![
        json_answer(&serde_json::json!({"compute": {
            "name": "server-vm", "subscriptionId": SUB, "resourceGroupName": "rg-s"
        }})),
        json_answer(&serde_json::json!({"access_token": "mi", "expires_in": "3599"})),
    ]);
    let (arm, arm_heads) = serve(vec![
        json_answer(&serde_json::json!({"value": [{"id": vm}]})),
        json_answer(&serde_json::json!({"id": vm, "properties": {}})),
    ]);
    let i = issuer("k1");
    let mut c = config(&i);
    c.tenants = BTreeMap::from([(TENANT.to_owned(), AzureTenant::default())]);
    c.metadata_url = format!("http://{imds}");
    c.resource_manager_url = format!("http://{arm}");
    let v = AzureMsiVerifier::new(c).unwrap();
    let Ok(Verification::Attested(a)) = run(&v, &i.payload(&claims()), NOW) else {
        panic!("not attested");
    };
    assert_eq!(a.selector_values, [format!("subscription-id:{SUB}"), "vm-name:rg:vm".to_owned()]);
    let instance = imds_heads.recv().unwrap();
    assert!(
        instance.starts_with("GET /metadata/instance?api-version=2017-08-01&format=json HTTP/1.1"),
        "{instance}"
    );
    let token = imds_heads.recv().unwrap();
    assert!(
        token.starts_with(
            "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.core.windows.net%2F HTTP/1.1"
        ),
        "{token}"
    );
    for head in [&instance, &token] {
        assert!(head.to_ascii_lowercase().contains("\r\nmetadata: true\r\n"), "{head}");
    }
    let list = arm_heads.recv().unwrap();
    assert!(list.starts_with(&format!("GET /subscriptions/{SUB}/resources?")), "{list}");
    assert!(list.to_ascii_lowercase().contains("authorization: bearer mi\r\n"), "{list}");
}
