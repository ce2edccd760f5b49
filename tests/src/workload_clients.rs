//! Workload API clients nobody here wrote, run as separate programs: a workload on go-spiffe
//! v2 (`tests/interop/go-spiffe/`, pinned in its `go.mod`) and one on py-spiffe, the `spiffe`
//! package from PyPI (`tests/interop/python/`, pinned in its `requirements.txt`). Both print
//! what they fetched in one JSON shape, [`Fetched`], which [`check_fetched`] compares with
//! what the Workload API was expected to serve.
//!
//! The Go program is built once per go-spiffe version into a cache outside the repository by
//! `tests/interop/go-spiffe/build.sh` (`$WARD_GO_SPIFFE_BIN` names one built elsewhere); the
//! Python virtual environment is made once by `tests/interop/python/setup.sh`
//! (`$WARD_PY_SPIFFE_PYTHON` names its interpreter).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail, ensure};
use rcgen::PublicKeyData;
use serde::Deserialize;
use ward_core::{Bundle, SpiffeId, jwtsvid, x509svid};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::agent_scenario::pem_certificates;
use crate::command::run;

/// Environment variable naming a built go-spiffe workload.
pub const GO_SPIFFE_BIN_ENV: &str = "WARD_GO_SPIFFE_BIN";

/// Environment variable naming the Python interpreter of a py-spiffe virtual environment.
pub const PY_SPIFFE_PYTHON_ENV: &str = "WARD_PY_SPIFFE_PYTHON";

/// Deadline for building a client when no cached build exists.
const BUILD_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The go-spiffe workload: `$WARD_GO_SPIFFE_BIN`, or what `build.sh` builds.
///
/// # Errors
/// When the build fails (no Go toolchain, no module proxy and no cached module).
pub fn go_spiffe() -> anyhow::Result<PathBuf> {
    cached_tool(GO_SPIFFE_BIN_ENV, "interop/go-spiffe/build.sh")
}

/// The Python interpreter that has py-spiffe: `$WARD_PY_SPIFFE_PYTHON`, or what `setup.sh`
/// makes.
///
/// # Errors
/// When the set-up fails (no `python3 -m venv`, no package index and nothing cached).
pub fn py_spiffe_python() -> anyhow::Result<PathBuf> {
    cached_tool(PY_SPIFFE_PYTHON_ENV, "interop/python/setup.sh")
}

/// Environment variable naming a built java-spiffe workload jar.
pub const JAVA_SPIFFE_JAR_ENV: &str = "WARD_JAVA_SPIFFE_JAR";

/// The java-spiffe workload's jar (all dependencies in it): `$WARD_JAVA_SPIFFE_JAR`, or what
/// `tests/interop/java/build.sh` builds.
///
/// # Errors
/// When the build fails (no Maven or JDK, no Maven Central and nothing cached).
pub fn java_spiffe_jar() -> anyhow::Result<PathBuf> {
    cached_tool(JAVA_SPIFFE_JAR_ENV, "interop/java/build.sh")
}

/// The py-spiffe workload script.
pub fn py_spiffe_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/python/fetch.py")
}

fn cached_tool(env: &str, script: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = run(&mut Command::new(&script), BUILD_TIMEOUT)?
        .success()
        .with_context(|| format!("running {}", script.display()))?;
    let path = out.stdout.trim();
    if path.is_empty() {
        bail!("{} printed no path\n{}", script.display(), out.describe());
    }
    Ok(PathBuf::from(path))
}

/// What a client fetched from the Workload API, as it printed it.
#[derive(Debug, Clone, Deserialize)]
pub struct Fetched {
    /// FetchX509SVID's SVIDs, in the order served.
    pub x509_svids: Vec<FetchedX509Svid>,
    /// FetchX509Bundles' bundles, by trust domain.
    pub x509_bundles: Vec<FetchedX509Bundle>,
    /// The bundles FetchX509SVID delivered with the SVIDs.
    pub context_bundles: Vec<FetchedX509Bundle>,
    /// FetchJWTSVID's SVIDs for the audience asked for.
    pub jwt_svids: Vec<FetchedJwtSvid>,
    /// FetchJWTBundles' bundles, by trust domain.
    pub jwt_bundles: Vec<FetchedJwtBundle>,
}

/// One X509-SVID as a client decoded it.
#[derive(Debug, Clone, Deserialize)]
pub struct FetchedX509Svid {
    /// The SPIFFE ID the client read from the leaf.
    pub spiffe_id: String,
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The SPIFFE ID the client's own chain verifier returned against the bundles, where the
    /// client has one (go-spiffe's `x509svid.Verify`).
    #[serde(default)]
    pub verified_id: Option<String>,
    /// That verifier's error.
    #[serde(default)]
    pub verify_error: Option<String>,
}

/// One trust domain's X.509 authorities as a client decoded them.
#[derive(Debug, Clone, Deserialize)]
pub struct FetchedX509Bundle {
    /// The trust domain name.
    pub trust_domain: String,
    /// The authorities, PEM.
    pub pem: String,
}

/// One JWT-SVID as a client decoded and validated it.
#[derive(Debug, Clone, Deserialize)]
pub struct FetchedJwtSvid {
    /// The subject the client read.
    pub spiffe_id: String,
    /// The token.
    pub token: String,
    /// The audience the client read.
    pub audience: Vec<String>,
    /// `exp`, Unix seconds.
    pub expiry: i64,
    /// The SPIFFE ID the client's own validation against the JWT bundle returned.
    #[serde(default)]
    pub local_id: Option<String>,
    /// That validation's error.
    #[serde(default)]
    pub local_error: Option<String>,
    /// What the client's own validation said for another audience.
    #[serde(default)]
    pub wrong_audience_error: Option<String>,
    /// The SPIFFE ID the Workload API's ValidateJWTSVID returned.
    #[serde(default)]
    pub validated_id: Option<String>,
    /// ValidateJWTSVID's error.
    #[serde(default)]
    pub validate_error: Option<String>,
}

/// One trust domain's JWT authorities as a client decoded them.
#[derive(Debug, Clone, Deserialize)]
pub struct FetchedJwtBundle {
    /// The trust domain name.
    pub trust_domain: String,
    /// The key IDs of its authorities, sorted.
    pub key_ids: Vec<String>,
}

/// What a workload is expected to get.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// The trust domain's bundle the agent serves.
    pub bundle: &'a Bundle,
    /// The SPIFFE IDs of its X509-SVIDs, in the order served.
    pub svids: Vec<SpiffeId>,
    /// The audience the client asked JWT-SVIDs for.
    pub audience: &'a str,
}

/// Checks what a client fetched against what it should have got: the same SPIFFE IDs in the
/// same order; each chain verifies to the bundle (ward-core's verifier) and, where the client
/// has a verifier, the client's too; each key is the leaf's key; the X.509 bundles are the trust domain's authorities, both from
/// FetchX509Bundles and with the SVIDs; the JWT bundle has the trust domain's key IDs; each
/// JWT-SVID verifies with ward-core against the bundle for the audience, carries `sub` and
/// `aud` as the client read them, was accepted by the client's own validation and by
/// ValidateJWTSVID, and refused by the client for another audience.
///
/// # Errors
/// The first difference, with what the client printed.
pub fn check_fetched(got: &Fetched, want: &Expected<'_>, now: SystemTime) -> anyhow::Result<()> {
    let got_ids: Vec<&str> = got.x509_svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    let want_ids: Vec<&str> = want.svids.iter().map(SpiffeId::as_str).collect();
    ensure!(got_ids == want_ids, "X509-SVIDs for {got_ids:?}, expected {want_ids:?}");
    for (svid, expected) in got.x509_svids.iter().zip(&want.svids) {
        check_x509_svid(svid, expected, want.bundle, now)
            .with_context(|| format!("the X509-SVID of {expected}"))?;
    }

    let authorities: Vec<&[u8]> =
        want.bundle.x509_authorities.iter().map(|a| a.der.as_slice()).collect();
    let td = want.bundle.trust_domain.as_str();
    for (call, bundles) in
        [("FetchX509Bundles", &got.x509_bundles), ("FetchX509SVID", &got.context_bundles)]
    {
        let [bundle] = bundles.as_slice() else {
            bail!("{call} bundles for {:?}, expected only {td}", trust_domains(bundles));
        };
        ensure!(bundle.trust_domain == td, "{call} bundle for {}", bundle.trust_domain);
        let ders = pem_certificates(&bundle.pem)?;
        ensure!(
            ders.iter().map(Vec::as_slice).eq(authorities.iter().copied()),
            "{call}: the {td} bundle has {} certificates that are not the trust domain's {}",
            ders.len(),
            authorities.len()
        );
    }

    let [jwt_bundle] = got.jwt_bundles.as_slice() else {
        bail!("JWT bundles {:?}, expected only {td}", got.jwt_bundles);
    };
    let mut key_ids: Vec<&str> =
        want.bundle.jwt_authorities.iter().map(|a| a.key_id.as_str()).collect();
    key_ids.sort_unstable();
    ensure!(
        jwt_bundle.trust_domain == td && jwt_bundle.key_ids == key_ids,
        "JWT bundle {jwt_bundle:?}, expected {td} with key IDs {key_ids:?}"
    );

    let mut jwt_ids: Vec<&str> = got.jwt_svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    jwt_ids.sort_unstable();
    let mut want_jwt_ids = want_ids.clone();
    want_jwt_ids.sort_unstable();
    ensure!(jwt_ids == want_jwt_ids, "JWT-SVIDs for {jwt_ids:?}, expected {want_jwt_ids:?}");
    for svid in &got.jwt_svids {
        check_jwt_svid(svid, want, now)
            .with_context(|| format!("the JWT-SVID of {}", svid.spiffe_id))?;
    }
    Ok(())
}

fn trust_domains(bundles: &[FetchedX509Bundle]) -> Vec<&str> {
    bundles.iter().map(|b| b.trust_domain.as_str()).collect()
}

fn check_x509_svid(
    got: &FetchedX509Svid,
    want: &SpiffeId,
    bundle: &Bundle,
    now: SystemTime,
) -> anyhow::Result<()> {
    let chain = pem_certificates(&got.chain_pem)?;
    let id = x509svid::verify_with_bundle(&chain, bundle, now)
        .context("the chain does not verify to the bundle")?;
    ensure!(id == *want, "the chain names {id}");
    if let Some(error) = &got.verify_error {
        bail!("the client's verifier refused the chain: {error}");
    }
    if let Some(verified) = &got.verified_id {
        ensure!(verified == want.as_str(), "the client verified it as {verified}");
    }
    let key = pem::parse(&got.key_pem).context("the key is not PEM")?;
    ensure!(key.tag() == "PRIVATE KEY", "the key is a {} block, not PKCS#8", key.tag());
    let key_pair = rcgen::KeyPair::try_from(key.contents()).context("the key is not PKCS#8")?;
    let (_, leaf) = X509Certificate::from_der(&chain[0]).context("parsing the leaf")?;
    ensure!(
        key_pair.subject_public_key_info() == leaf.public_key().raw,
        "the private key is not the leaf certificate's key"
    );
    Ok(())
}

fn check_jwt_svid(
    got: &FetchedJwtSvid,
    want: &Expected<'_>,
    now: SystemTime,
) -> anyhow::Result<()> {
    let verified = jwtsvid::validate(&got.token, want.bundle, &[want.audience], now)
        .context("the token does not verify against the bundle")?;
    ensure!(
        verified.spiffe_id.as_str() == got.spiffe_id,
        "the token's sub is {}",
        verified.spiffe_id
    );
    ensure!(verified.audience == [want.audience], "the token's aud is {:?}", verified.audience);
    ensure!(got.audience == [want.audience], "the client read aud {:?}", got.audience);
    ensure!(got.expiry == verified.expires_at, "the client read exp {}", got.expiry);
    ensure!(
        got.local_id.as_deref() == Some(got.spiffe_id.as_str()),
        "the client's own validation: {:?} {:?}",
        got.local_id,
        got.local_error
    );
    ensure!(
        got.validated_id.as_deref() == Some(got.spiffe_id.as_str()),
        "ValidateJWTSVID: {:?} {:?}",
        got.validated_id,
        got.validate_error
    );
    ensure!(
        got.wrong_audience_error.as_deref().is_some_and(|e| !e.is_empty()),
        "the client accepted the token for another audience"
    );
    Ok(())
}
