//! The `[node_attestors]` table: the attestors agents may use besides join tokens, with
//! SPIRE's plugin settings (`NodeAttestor "x509pop" { plugin_data { ... } }` in SPIRE's file).

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use ward_attest::node_attestor::x509pop::{
    X509popServerConfig, X509popVerifier, certificates_from_pem,
};
use ward_core::TrustDomain;

use super::ConfigError;

/// `[node_attestors]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAttestorsFile {
    /// `[node_attestors.x509pop]`.
    pub x509pop: Option<X509popFile>,
}

/// `[node_attestors.x509pop]`: SPIRE's server `x509pop` plugin data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509popFile {
    /// `external_pki` (the default and the only mode ward has).
    pub mode: Option<String>,
    /// A PEM file of trusted CA certificates.
    pub ca_bundle_path: Option<PathBuf>,
    /// PEM files of trusted CA certificates.
    pub ca_bundle_paths: Option<Vec<PathBuf>>,
    /// The agent path template (default `/{{ .PluginName }}/{{ .Fingerprint }}`).
    pub agent_path_template: Option<String>,
}

/// The node attestors the server runs, ready to verify.
#[derive(Debug, Clone, Default)]
pub struct NodeAttestorsConfig {
    /// `x509pop`, when configured.
    pub x509pop: Option<Arc<X509popVerifier>>,
}

const X509POP: &str = "node_attestors.x509pop";

fn invalid(reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: X509POP, reason: reason.into() }
}

impl NodeAttestorsFile {
    /// Reads the CA files and builds each attestor, with SPIRE's sentences for what it
    /// refuses.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the problem.
    pub fn resolve(self, td: &TrustDomain) -> Result<NodeAttestorsConfig, ConfigError> {
        let Some(x) = self.x509pop else { return Ok(NodeAttestorsConfig::default()) };
        match x.mode.as_deref().unwrap_or("external_pki") {
            "" | "external_pki" => {}
            "spiffe" => {
                return Err(invalid(
                    "mode \"spiffe\" is not supported: ward's x509pop verifies certificates \
                     against ca_bundle_path or ca_bundle_paths (mode \"external_pki\")",
                ));
            }
            _ => return Err(invalid("mode can only be either spiffe or external_pki")),
        }
        let paths = match (x.ca_bundle_path, x.ca_bundle_paths.unwrap_or_default()) {
            (Some(_), more) if !more.is_empty() => {
                return Err(invalid(
                    "only one of ca_bundle_path or ca_bundle_paths can be configured, not both",
                ));
            }
            (Some(one), _) => vec![one],
            (None, more) => more,
        };
        if paths.is_empty() {
            return Err(invalid("one of ca_bundle_path or ca_bundle_paths must be configured"));
        }
        let mut ca_certificates = Vec::new();
        for path in &paths {
            let certs = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|text| certificates_from_pem(&text))
                .map_err(|e| {
                    invalid(format!("unable to load trust bundle {:?}: {e}", path.display()))
                })?;
            ca_certificates.extend(certs);
        }
        let verifier = X509popVerifier::new(X509popServerConfig {
            trust_domain: td.clone(),
            ca_certificates,
            agent_path_template: x.agent_path_template.filter(|t| !t.is_empty()),
        })
        .map_err(|e| match e {
            ward_attest::NodeAttestError::Config { reason, .. } => invalid(reason),
            other => invalid(other.to_string()),
        })?;
        Ok(NodeAttestorsConfig { x509pop: Some(Arc::new(verifier)) })
    }
}

/// A self-signed CA certificate, PEM, for tests that need a readable `ca_bundle_path`.
#[cfg(test)]
pub(crate) fn test_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml: &str) -> Result<NodeAttestorsConfig, ConfigError> {
        let file: NodeAttestorsFile = toml::from_str(toml).unwrap();
        file.resolve(&TrustDomain::new("example.org").unwrap())
    }

    fn reason(r: Result<NodeAttestorsConfig, ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid { key: X509POP, reason }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn x509pop_takes_ca_files_and_refuses_what_spire_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, test_ca_pem()).unwrap();
        let ca = ca.display().to_string();

        assert!(resolve("").unwrap().x509pop.is_none());
        let ok = resolve(&format!("[x509pop]\nca_bundle_paths = [{ca:?}, {ca:?}]\n")).unwrap();
        assert!(ok.x509pop.is_some());
        assert_eq!(
            reason(resolve("[x509pop]\n")),
            "one of ca_bundle_path or ca_bundle_paths must be configured"
        );
        assert_eq!(
            reason(resolve(&format!(
                "[x509pop]\nca_bundle_path = {ca:?}\nca_bundle_paths = [{ca:?}]\n"
            ))),
            "only one of ca_bundle_path or ca_bundle_paths can be configured, not both"
        );
        assert!(
            reason(resolve("[x509pop]\nmode = \"spiffe\"\n"))
                .starts_with("mode \"spiffe\" is not supported")
        );
        assert_eq!(
            reason(resolve("[x509pop]\nmode = \"other\"\nca_bundle_path = \"/x\"\n")),
            "mode can only be either spiffe or external_pki"
        );
        assert!(
            reason(resolve("[x509pop]\nca_bundle_path = \"/nonexistent/ca.pem\"\n"))
                .starts_with("unable to load trust bundle \"/nonexistent/ca.pem\": ")
        );
        let bad = format!(
            "[x509pop]\nca_bundle_path = {ca:?}\nagent_path_template = \"/{{{{ .Issuer }}}}\"\n"
        );
        assert!(reason(resolve(&bad)).contains("is not supported"));
    }
}
