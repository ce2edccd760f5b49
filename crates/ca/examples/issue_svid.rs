//! Issues a demo X509-SVID and JWT-SVID for `spiffe://example.org/demo`.
//!
//! ```text
//! cargo run -p ward-ca --example issue_svid -- OUT_DIR
//! openssl verify -CAfile OUT_DIR/bundle.pem OUT_DIR/svid.pem
//! ```
//!
//! Writes `bundle.pem` (the CA certificate), `svid.pem` (the leaf and any intermediates),
//! `svid.key.pem` (the workload key, PKCS#8, mode 0600), `jwt.txt` (a JWT-SVID for audience
//! `demo`) and `bundle.jwks.json` (the SPIFFE bundle: X.509 and JWT authorities as JWKS).

use std::error::Error;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ward_ca::{
    JwtSigner, KeyManager, KeyType, MemoryKeyManager, PrivateKey, SvidParams, X509Ca, build_csr,
    new_key_id,
};
use ward_core::bundle::pem::encode_certificates;
use ward_core::{Bundle, SpiffeId, TrustDomain, X509Authority};

/// The demo workload's SPIFFE ID.
pub const DEMO_ID: &str = "spiffe://example.org/demo";
/// The demo JWT-SVID's audience.
pub const DEMO_AUDIENCE: &str = "demo";

/// What [`run`] wrote.
#[derive(Debug)]
pub struct Issued {
    /// The directory the files are in.
    pub dir: PathBuf,
    /// The JWT key id.
    pub key_id: String,
}

/// Issues the demo SVIDs into `out_dir` (created if missing).
pub fn run(out_dir: &Path) -> Result<Issued, Box<dyn Error>> {
    fs::create_dir_all(out_dir)?;
    let now = SystemTime::now();
    let td = TrustDomain::new("example.org")?;
    let keys = MemoryKeyManager::new();

    let ca_key = keys.get_or_generate("x509-CA-A", KeyType::EcP256)?;
    let ca = X509Ca::self_signed(ca_key, &td, Duration::from_secs(24 * 3600), now)?;

    // The workload side: a key and a CSR. Only the CSR's key ends up in the SVID.
    let workload_key = PrivateKey::generate(KeyType::EcP256)?;
    let csr = build_csr(&workload_key)?;
    let id = SpiffeId::parse(DEMO_ID)?;
    let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(3600) };
    let leaf = ca.sign_x509_svid_from_csr(&csr, &params, now)?;

    let mut chain: Vec<&[u8]> = vec![&leaf];
    chain.extend(ca.svid_chain_tail().iter().map(Vec::as_slice));
    fs::write(out_dir.join("bundle.pem"), encode_certificates(&[ca.trust_anchor_der()]))?;
    fs::write(out_dir.join("svid.pem"), encode_certificates(&chain))?;
    let mut key_file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out_dir.join("svid.key.pem"))?;
    key_file.write_all(workload_key.to_pkcs8_pem().as_bytes())?;

    let jwt_key = keys.get_or_generate("JWT-Signer-A", KeyType::EcP256)?;
    let signer = JwtSigner::new(jwt_key, new_key_id()?, ca.not_after_unix())?;
    let jwt = signer.sign(&id, &[DEMO_AUDIENCE.to_owned()], now, Duration::from_secs(300))?;
    fs::write(out_dir.join("jwt.txt"), format!("{}\n", jwt.token))?;

    let mut bundle = Bundle::new(td);
    bundle.x509_authorities.push(X509Authority::new(ca.trust_anchor_der().to_vec()));
    bundle.jwt_authorities.push(signer.authority());
    bundle.sequence_number = 1;
    fs::write(out_dir.join("bundle.jwks.json"), bundle.to_spiffe_json()?)?;
    Ok(Issued { dir: out_dir.to_owned(), key_id: signer.key_id().to_owned() })
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn Error>> {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: issue_svid OUT_DIR");
        std::process::exit(2);
    };
    let issued = run(Path::new(&out))?;
    println!(
        "wrote bundle.pem, svid.pem, svid.key.pem, jwt.txt (kid {}), bundle.jwks.json to {}",
        issued.key_id,
        issued.dir.display()
    );
    Ok(())
}
