//! The `[node_attestors]` table: the attestors agents may use besides join tokens, with
//! SPIRE's plugin settings (`NodeAttestor "x509pop" { plugin_data { ... } }` and
//! `NodeAttestor "sshpop"` in SPIRE's file).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use ward_attest::node_attestor::aws_iid::{
    AwsApiSettings, AwsIidServerConfig, AwsIidVerifier, KeyType, PARTITIONS,
};
use ward_attest::node_attestor::azure_msi::{
    AZURE_OIDC_ISSUER, AzureMsiServerConfig, AzureMsiVerifier, AzureTenant, DEFAULT_LOGIN_URL,
    DEFAULT_RESOURCE_MANAGER_URL,
};
use ward_attest::node_attestor::gcp_iit::compute::InstanceMetadataConfig;
use ward_attest::node_attestor::gcp_iit::{GOOGLE_CERTS_URL, GcpIitServerConfig, GcpIitVerifier};
use ward_attest::node_attestor::k8s_psat::{
    Credentials, DEFAULT_AUDIENCE, K8sPsatClusterConfig, K8sPsatServerConfig, K8sPsatVerifier,
};
use ward_attest::node_attestor::sshpop::{
    SshpopServerConfig, SshpopVerifier, cert_authorities_from_file,
};
use ward_attest::node_attestor::tpm_devid::{TpmDevidServerConfig, TpmDevidVerifier};
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
    /// `[node_attestors.gcp_iit]`.
    pub gcp_iit: Option<GcpIitFile>,
    /// `[node_attestors.tpm_devid]`.
    pub tpm_devid: Option<TpmDevidFile>,
    /// `[node_attestors.azure_msi]`.
    pub azure_msi: Option<AzureMsiFile>,
    /// `[node_attestors.k8s_psat]`.
    pub k8s_psat: Option<K8sPsatFile>,
    /// `[node_attestors.sshpop]`.
    pub sshpop: Option<SshpopFile>,
    /// `[node_attestors.aws_iid]`.
    pub aws_iid: Option<AwsIidFile>,
}

/// `[node_attestors.azure_msi]`: SPIRE's server `azure_msi` plugin data, and where ward
/// fetches the key set from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureMsiFile {
    /// The tenants whose tokens may attest, by tenant ID (at least one).
    pub tenants: Option<BTreeMap<String, AzureTenantFile>>,
    /// The agent path template (default `/{{ .PluginName }}/{{ .TenantID }}/{{ .PrincipalID }}`).
    pub agent_path_template: Option<String>,
    /// The OpenID issuer whose configuration names the key set (default
    /// `https://login.microsoftonline.com/common/`; empty: none, only `extra_jwks_path`).
    pub oidc_issuer_url: Option<String>,
    /// A JSON Web Key Set file trusted beside the fetched one.
    pub extra_jwks_path: Option<PathBuf>,
}

/// `[node_attestors.azure_msi.tenants."<tenant ID>"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureTenantFile {
    /// The resource tokens are for: their audience (default `https://management.azure.com/`).
    pub resource_id: Option<String>,
    /// The subscription the tenant's VMs are looked up in (Azure Resource Manager).
    pub subscription_id: Option<String>,
    /// The application (client) ID the server signs in as to look VMs up.
    pub app_id: Option<String>,
    /// That application's client secret.
    pub app_secret: Option<String>,
}

/// `[node_attestors.k8s_psat]`: SPIRE's server `k8s_psat` plugin data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sPsatFile {
    /// `[node_attestors.k8s_psat.clusters.<name>]`, by cluster name.
    #[serde(default)]
    pub clusters: BTreeMap<String, K8sPsatClusterFile>,
}

/// One cluster of `[node_attestors.k8s_psat.clusters]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sPsatClusterFile {
    /// `<namespace>:<service account>` names whose tokens attest agents (at least one).
    #[serde(default)]
    pub service_account_allow_list: Vec<String>,
    /// The audiences tokens are reviewed for (default `["spire-server"]`).
    pub audience: Option<Vec<String>>,
    /// A kubeconfig file; without it, the pod's in-cluster credentials.
    pub kube_config_file: Option<PathBuf>,
    /// Node label keys turned into `agent_node_label` selectors.
    #[serde(default)]
    pub allowed_node_label_keys: Vec<String>,
    /// Pod label keys turned into `agent_pod_label` selectors.
    #[serde(default)]
    pub allowed_pod_label_keys: Vec<String>,
}

/// `[node_attestors.aws_iid]`: SPIRE's server `aws_iid` plugin data that ward uses, and the
/// certificates of test regions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsIidFile {
    /// The agent path template (default
    /// `/{{ .PluginName}}/{{ .AccountID }}/{{ .Region }}/{{ .InstanceID }}`).
    pub agent_path_template: Option<String>,
    /// The AWS partition (`aws`, the default, `aws-cn` or `aws-us-gov`); checked as SPIRE
    /// checks it, otherwise unused (SPIRE uses it only for `assume_role`).
    pub partition: Option<String>,
    /// The AWS access key ID of the EC2 and IAM calls (default: `AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// Its secret access key (default: `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<String>,
    /// Skip the root volume attach-time check.
    pub skip_block_device: Option<bool>,
    /// No IAM call and no `iamrole:` selectors.
    pub disable_instance_profile_selectors: Option<bool>,
    /// Accounts whose instances skip the root volume check.
    pub account_ids_for_local_validation: Option<Vec<String>>,
    /// Refused: ward does not assume roles.
    pub assume_role: Option<String>,
    /// Refused: ward does not call AWS Organizations.
    pub verify_organization: Option<Present>,
    /// Refused: ward does not call EKS and Auto Scaling.
    pub validate_eks_cluster_membership: Option<Present>,
    /// PEM certificates verifying `rsa2048` PKCS#7 signatures, by region: they add to or
    /// replace AWS's compiled-in certificates.
    pub rsa2048_certificates: Option<BTreeMap<String, PathBuf>>,
    /// PEM certificates verifying RSA-1024 `signature`s, by region (`*`: any other region).
    pub rsa1024_certificates: Option<BTreeMap<String, PathBuf>>,
}

/// A setting of which ward reads only whether it is there (its value is not used).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present;

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Present)
    }
}

/// `[node_attestors.gcp_iit]`: SPIRE's server `gcp_iit` plugin data, and where ward fetches
/// Google's certificates from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpIitFile {
    /// The projects whose instances may attest (required).
    pub projectid_allow_list: Option<Vec<String>>,
    /// The agent path template (default `/{{ .PluginName }}/{{ .ProjectID }}/{{ .InstanceID }}`).
    pub agent_path_template: Option<String>,
    /// Ask the Compute Engine API about each attesting instance for the `tag`, `sa`, `label`
    /// and `metadata` selectors (default false).
    pub use_instance_metadata: Option<bool>,
    /// A Google credentials file for the Compute Engine API (empty or unset: Application
    /// Default Credentials); only used with `use_instance_metadata`.
    pub service_account_file: Option<String>,
    /// Label keys turned into `label:<key>:<value>` selectors (only used with
    /// `use_instance_metadata`).
    pub allowed_label_keys: Option<Vec<String>>,
    /// Metadata keys turned into `metadata:<key>:<value>` selectors (only used with
    /// `use_instance_metadata`).
    pub allowed_metadata_keys: Option<Vec<String>>,
    /// The longest allowed metadata value, bytes (0 or unset: 128); a longer one refuses the
    /// attestation (only used with `use_instance_metadata`).
    pub max_metadata_value_size: Option<i64>,
    /// Where Google's signing certificates are fetched (default
    /// `https://www.googleapis.com/oauth2/v1/certs`; empty: none, only
    /// `extra_certificates_path`).
    pub google_certs_url: Option<String>,
    /// A JSON file of more signing certificates, in the form of Google's answer
    /// (`{"<key ID>": "<PEM certificate>", ...}`).
    pub extra_certificates_path: Option<PathBuf>,
}

/// `[node_attestors.tpm_devid]`: SPIRE's server `tpm_devid` plugin data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmDevidFile {
    /// A PEM file of the CA certificates DevID certificates chain to.
    pub devid_ca_path: Option<PathBuf>,
    /// A PEM file of the TPM manufacturers' CA certificates endorsement certificates chain to.
    pub endorsement_ca_path: Option<PathBuf>,
}

/// `[node_attestors.sshpop]`: SPIRE's server `sshpop` plugin data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshpopFile {
    /// Trusted CA public keys, `authorized_keys` lines.
    pub cert_authorities: Option<Vec<String>>,
    /// A file of trusted CA public keys, one `authorized_keys` line each.
    pub cert_authorities_path: Option<PathBuf>,
    /// The domain the certificate's first principal must be in (empty: any).
    pub canonical_domain: Option<String>,
    /// The agent path template (default `/{{ .PluginName}}/{{ .Fingerprint }}`).
    pub agent_path_template: Option<String>,
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
    /// `gcp_iit`, when configured.
    pub gcp_iit: Option<Arc<GcpIitVerifier>>,
    /// `tpm_devid`, when configured.
    pub tpm_devid: Option<Arc<TpmDevidVerifier>>,
    /// `azure_msi`, when configured.
    pub azure_msi: Option<Arc<AzureMsiVerifier>>,
    /// `k8s_psat`, when configured.
    pub k8s_psat: Option<Arc<K8sPsatVerifier>>,
    /// `sshpop`, when configured.
    pub sshpop: Option<Arc<SshpopVerifier>>,
    /// `aws_iid`, when configured.
    pub aws_iid: Option<Arc<AwsIidVerifier>>,
}

impl NodeAttestorsConfig {
    /// Every configured attestor.
    pub fn all(&self) -> Vec<Arc<dyn ward_attest::ServerNodeAttestor>> {
        let mut all: Vec<Arc<dyn ward_attest::ServerNodeAttestor>> = Vec::new();
        if let Some(x) = &self.x509pop {
            all.push(x.clone());
        }
        if let Some(g) = &self.gcp_iit {
            all.push(g.clone());
        }
        if let Some(t) = &self.tpm_devid {
            all.push(t.clone());
        }
        if let Some(a) = &self.azure_msi {
            all.push(a.clone());
        }
        if let Some(v) = &self.k8s_psat {
            all.push(v.clone());
        }
        if let Some(v) = &self.sshpop {
            all.push(v.clone());
        }
        if let Some(a) = &self.aws_iid {
            all.push(a.clone());
        }
        all
    }
}

const X509POP: &str = "node_attestors.x509pop";
const GCP_IIT: &str = "node_attestors.gcp_iit";
const TPM_DEVID: &str = "node_attestors.tpm_devid";
const AZURE_MSI: &str = "node_attestors.azure_msi";
const K8S_PSAT: &str = "node_attestors.k8s_psat";
const AWS_IID: &str = "node_attestors.aws_iid";

fn attestor_error(key: &'static str, e: ward_attest::NodeAttestError) -> ConfigError {
    match e {
        ward_attest::NodeAttestError::Config { reason, .. } => ConfigError::Invalid { key, reason },
        other => ConfigError::Invalid { key, reason: other.to_string() },
    }
}
const SSHPOP: &str = "node_attestors.sshpop";

fn invalid(reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: X509POP, reason: reason.into() }
}

/// The certificates of a PEM bundle (SPIRE's `util.LoadCertPool`).
fn load_bundle(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    std::fs::read(path).map_err(|e| e.to_string()).and_then(|text| certificates_from_pem(&text))
}

impl TpmDevidFile {
    /// Reads both bundles, with SPIRE's sentences for what it refuses.
    fn resolve(self, td: &TrustDomain) -> Result<Arc<TpmDevidVerifier>, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { key: TPM_DEVID, reason };
        let devid = self.devid_ca_path.filter(|p| !p.as_os_str().is_empty());
        let ek = self.endorsement_ca_path.filter(|p| !p.as_os_str().is_empty());
        let devid = devid.ok_or_else(|| invalid("devid_ca_path is required".into()))?;
        let ek = ek.ok_or_else(|| invalid("endorsement_ca_path is required".into()))?;
        let devid_ca_certificates = load_bundle(&devid)
            .map_err(|e| invalid(format!("unable to load DevID trust bundle: {e}")))?;
        let endorsement_ca_certificates = load_bundle(&ek)
            .map_err(|e| invalid(format!("unable to load endorsement trust bundle: {e}")))?;
        TpmDevidVerifier::new(TpmDevidServerConfig {
            trust_domain: td.clone(),
            devid_ca_certificates,
            endorsement_ca_certificates,
        })
        .map(Arc::new)
        .map_err(|e| attestor_error(TPM_DEVID, e))
    }
}

impl K8sPsatFile {
    fn resolve(self, td: &TrustDomain) -> Result<K8sPsatVerifier, ConfigError> {
        let clusters = self
            .clusters
            .into_iter()
            .map(|(name, c)| {
                let credentials = match c.kube_config_file {
                    Some(path) if !path.as_os_str().is_empty() => Credentials::KubeConfig(path),
                    _ => Credentials::InCluster,
                };
                let cluster = K8sPsatClusterConfig {
                    service_account_allow_list: c.service_account_allow_list,
                    audience: c.audience.unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_owned()]),
                    credentials,
                    allowed_node_label_keys: c.allowed_node_label_keys,
                    allowed_pod_label_keys: c.allowed_pod_label_keys,
                };
                (name, cluster)
            })
            .collect();
        K8sPsatVerifier::new(K8sPsatServerConfig { trust_domain: td.clone(), clusters })
            .map_err(|e| attestor_error(K8S_PSAT, e))
    }
}

fn invalid_sshpop(reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: SSHPOP, reason: reason.into() }
}

/// The `sshpop` verifier for `file`, with SPIRE's sentences for what it refuses
/// (`pkg/common/plugin/sshpop/sshpop.go`, `BuildServerConfig`).
fn sshpop(file: SshpopFile, td: &TrustDomain) -> Result<SshpopVerifier, ConfigError> {
    let path = file.cert_authorities_path.filter(|p| !p.as_os_str().is_empty());
    if file.cert_authorities.is_none() && path.is_none() {
        return Err(invalid_sshpop(
            "missing required config value for \"cert_authorities\" or \"cert_authorities_path\"",
        ));
    }
    let mut cert_authorities = file.cert_authorities.unwrap_or_default();
    if let Some(path) = path {
        let more = cert_authorities_from_file(&path).map_err(|e| {
            invalid_sshpop(format!("failed to get cert authorities from file: {e}"))
        })?;
        cert_authorities.extend(more);
    }
    SshpopVerifier::new(SshpopServerConfig {
        trust_domain: td.clone(),
        cert_authorities,
        canonical_domain: file.canonical_domain.unwrap_or_default(),
        agent_path_template: file.agent_path_template.filter(|t| !t.is_empty()),
    })
    .map_err(|e| match e {
        ward_attest::NodeAttestError::Config { reason, .. } => invalid_sshpop(reason),
        other => invalid_sshpop(other.to_string()),
    })
}

impl NodeAttestorsFile {
    /// Reads the CA files and builds each attestor, with SPIRE's sentences for what it
    /// refuses.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the problem.
    pub fn resolve(self, td: &TrustDomain) -> Result<NodeAttestorsConfig, ConfigError> {
        let x509pop = match self.x509pop {
            Some(x) => Some(x.resolve(td)?),
            None => None,
        };
        let gcp_iit = match self.gcp_iit {
            Some(g) => Some(g.resolve(td)?),
            None => None,
        };
        let tpm_devid = match self.tpm_devid {
            Some(t) => Some(t.resolve(td)?),
            None => None,
        };
        let k8s_psat = match self.k8s_psat {
            Some(k) => Some(Arc::new(k.resolve(td)?)),
            None => None,
        };
        let azure_msi = match self.azure_msi {
            Some(a) => Some(a.resolve(td)?),
            None => None,
        };
        let sshpop = match self.sshpop {
            Some(f) => Some(Arc::new(sshpop(f, td)?)),
            None => None,
        };
        let aws_iid = match self.aws_iid {
            Some(a) => Some(a.resolve(td)?),
            None => None,
        };
        Ok(NodeAttestorsConfig {
            x509pop,
            gcp_iit,
            tpm_devid,
            azure_msi,
            k8s_psat,
            sshpop,
            aws_iid,
        })
    }
}

impl AzureMsiFile {
    fn resolve(self, td: &TrustDomain) -> Result<Arc<AzureMsiVerifier>, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { key: AZURE_MSI, reason };
        let mut tenants = BTreeMap::new();
        for (id, t) in self.tenants.unwrap_or_default() {
            let tenant = AzureTenant {
                resource_id: t.resource_id.unwrap_or_default(),
                subscription_id: t.subscription_id.unwrap_or_default(),
                app_id: t.app_id.unwrap_or_default(),
                app_secret: t.app_secret.unwrap_or_default(),
            };
            tenants.insert(id, tenant);
        }
        let extra_keys = match self.extra_jwks_path.filter(|p| !p.as_os_str().is_empty()) {
            None => None,
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read(&path)
                    .map_err(|e| invalid(format!("unable to read {shown:?}: {e}")))?;
                Some(
                    serde_json::from_slice(&text)
                        .map_err(|e| invalid(format!("unable to parse {shown:?}: {e}")))?,
                )
            }
        };
        let oidc_issuer = match self.oidc_issuer_url {
            None => Some(AZURE_OIDC_ISSUER.to_owned()),
            Some(u) if u.is_empty() => None,
            Some(u) => Some(u),
        };
        if oidc_issuer.is_none() && extra_keys.is_none() {
            return Err(invalid(
                "oidc_issuer_url is empty and extra_jwks_path is not set: no key could verify a \
                 token"
                    .to_owned(),
            ));
        }
        let verifier = AzureMsiVerifier::new(AzureMsiServerConfig {
            trust_domain: td.clone(),
            tenants,
            agent_path_template: self.agent_path_template.filter(|t| !t.is_empty()),
            oidc_issuer,
            extra_keys,
            login_url: DEFAULT_LOGIN_URL.to_owned(),
            resource_manager_url: DEFAULT_RESOURCE_MANAGER_URL.to_owned(),
            metadata_url: String::new(),
        })
        .map_err(|e| attestor_error(AZURE_MSI, e))?;
        Ok(Arc::new(verifier))
    }
}

impl AwsIidFile {
    fn resolve(self, td: &TrustDomain) -> Result<Arc<AwsIidVerifier>, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { key: AWS_IID, reason };
        if let Some(p) = self.partition.as_deref().filter(|p| !p.is_empty())
            && !PARTITIONS.contains(&p)
        {
            return Err(invalid(format!(
                "invalid partition {p:?}, must be one of: [{}]",
                PARTITIONS.join(" ")
            )));
        }
        if self.assume_role.as_deref().is_some_and(|r| !r.is_empty()) {
            return Err(invalid(
                "assume_role is not supported: ward calls EC2 and IAM with the configured or \
                 environment credentials and does not assume roles (STS)"
                    .to_owned(),
            ));
        }
        if self.verify_organization.is_some() {
            return Err(invalid(
                "verify_organization is not supported: ward does not call AWS Organizations \
                 (ListAccounts)"
                    .to_owned(),
            ));
        }
        if self.validate_eks_cluster_membership.is_some() {
            return Err(invalid(
                "validate_eks_cluster_membership is not supported: ward does not call EKS and \
                 Auto Scaling"
                    .to_owned(),
            ));
        }
        let api = AwsApiSettings::resolve(
            self.access_key_id.as_deref(),
            self.secret_access_key.as_deref(),
            |name| std::env::var(name).ok(),
        )
        .map_err(invalid)?;
        let mut certificates = Vec::new();
        for (kind, map) in [
            (KeyType::Rsa2048, self.rsa2048_certificates),
            (KeyType::Rsa1024, self.rsa1024_certificates),
        ] {
            for (region, path) in map.unwrap_or_default() {
                let der = std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| certificates_from_pem(&text))
                    .and_then(|certs| {
                        certs.into_iter().next().ok_or_else(|| "no certificate".to_owned())
                    })
                    .map_err(|e| {
                        invalid(format!(
                            "unable to load the certificate of region {region} {:?}: {e}",
                            path.display()
                        ))
                    })?;
                certificates.push((kind, region, der));
            }
        }
        let verifier = AwsIidVerifier::new(AwsIidServerConfig {
            trust_domain: td.clone(),
            agent_path_template: self.agent_path_template.filter(|t| !t.is_empty()),
            certificates,
            api,
            skip_block_device: self.skip_block_device.unwrap_or(false),
            disable_instance_profile_selectors: self
                .disable_instance_profile_selectors
                .unwrap_or(false),
            account_ids_for_local_validation: self
                .account_ids_for_local_validation
                .unwrap_or_default(),
        })
        .map_err(|e| attestor_error(AWS_IID, e))?;
        Ok(Arc::new(verifier))
    }
}

impl GcpIitFile {
    fn resolve(self, td: &TrustDomain) -> Result<Arc<GcpIitVerifier>, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { key: GCP_IIT, reason };
        let instance_metadata =
            self.use_instance_metadata.unwrap_or(false).then(|| InstanceMetadataConfig {
                service_account_file: self
                    .service_account_file
                    .filter(|f| !f.is_empty())
                    .map(PathBuf::from),
                allowed_label_keys: self
                    .allowed_label_keys
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                allowed_metadata_keys: self
                    .allowed_metadata_keys
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                max_metadata_value_size: self.max_metadata_value_size.unwrap_or(0),
            });
        let mut extra_certificates = BTreeMap::new();
        if let Some(path) = self.extra_certificates_path.filter(|p| !p.as_os_str().is_empty()) {
            let shown = path.display().to_string();
            let text = std::fs::read(&path)
                .map_err(|e| invalid(format!("unable to read {shown:?}: {e}")))?;
            let map: BTreeMap<String, String> = serde_json::from_slice(&text)
                .map_err(|e| invalid(format!("unable to parse {shown:?}: {e}")))?;
            for (kid, pem_text) in map {
                let der = certificates_from_pem(pem_text.as_bytes())
                    .ok()
                    .and_then(|c| c.into_iter().next())
                    .ok_or_else(|| {
                        invalid(format!("{shown:?}: key {kid:?} is not a PEM certificate"))
                    })?;
                extra_certificates.insert(kid, der);
            }
        }
        let certs_url = match self.google_certs_url {
            None => Some(GOOGLE_CERTS_URL.to_owned()),
            Some(u) if u.is_empty() => None,
            Some(u) => Some(u),
        };
        if certs_url.is_none() && extra_certificates.is_empty() {
            return Err(ConfigError::Invalid {
                key: GCP_IIT,
                reason: "google_certs_url is empty and extra_certificates_path names no \
                         certificate: no key could verify a token"
                    .to_owned(),
            });
        }
        let verifier = GcpIitVerifier::new(GcpIitServerConfig {
            trust_domain: td.clone(),
            project_id_allow_list: self.projectid_allow_list.unwrap_or_default(),
            agent_path_template: self.agent_path_template.filter(|t| !t.is_empty()),
            certs_url,
            extra_certificates,
            instance_metadata,
        })
        .map_err(|e| attestor_error(GCP_IIT, e))?;
        Ok(Arc::new(verifier))
    }
}

impl X509popFile {
    fn resolve(self, td: &TrustDomain) -> Result<Arc<X509popVerifier>, ConfigError> {
        let x = self;
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
        .map_err(|e| attestor_error(X509POP, e))?;
        Ok(Arc::new(verifier))
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
            Err(ConfigError::Invalid { key: X509POP | GCP_IIT | AZURE_MSI | AWS_IID, reason }) => {
                reason
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn azure_msi_needs_tenants_with_application_credentials() {
        let creds = "subscription_id = \"s\"\napp_id = \"a\"\napp_secret = \"x\"\n";
        let ok = resolve(&format!(
            "[azure_msi.tenants.t1]\n{creds}[azure_msi.tenants.t2]\nresource_id = \"r\"\n{creds}"
        ))
        .unwrap();
        assert!(ok.azure_msi.is_some());
        let no_keys =
            format!("[azure_msi]\noidc_issuer_url = \"\"\n[azure_msi.tenants.t1]\n{creds}");
        assert!(reason(resolve(&no_keys)).contains("no key could verify a token"));
        assert_eq!(reason(resolve("[azure_msi]\n")), "configuration must have at least one tenant");
        assert_eq!(
            reason(resolve("[azure_msi.tenants.t1]\napp_id = \"a\"\napp_secret = \"x\"\n")),
            "misconfigured tenant \"t1\": missing subscription id"
        );
        // No credentials: the server VM's managed identity, whose instance metadata is not
        // reachable here.
        let managed = reason(resolve("[azure_msi.tenants.t1]\n"));
        assert!(
            managed.starts_with(
                "tenant \"t1\" has no subscription_id, app_id and app_secret, so the server VM's \
                 managed identity is used, but its instance metadata could not be read: "
            ),
            "{managed}"
        );
    }

    #[test]
    fn aws_iid_takes_region_certificates_and_refuses_what_spire_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::default().self_signed(&key).unwrap();
        let pem = dir.path().join("aws.pem");
        std::fs::write(&pem, cert.pem()).unwrap();
        let pem = pem.display().to_string();

        let ok = resolve(&format!(
            "[aws_iid]\npartition = \"aws-us-gov\"\n[aws_iid.rsa2048_certificates]\n\
             test-region-1 = {pem:?}\n[aws_iid.rsa1024_certificates]\n\"*\" = {pem:?}\n"
        ))
        .unwrap();
        assert_eq!(ok.all().len(), 1);
        assert!(resolve("[aws_iid]\n").unwrap().aws_iid.is_some());
        assert_eq!(
            reason(resolve("[aws_iid]\npartition = \"mars\"\n")),
            "invalid partition \"mars\", must be one of: [aws aws-cn aws-us-gov]"
        );
        assert!(
            reason(resolve("[aws_iid.rsa2048_certificates]\nx-1 = \"/nonexistent.pem\"\n"))
                .starts_with("unable to load the certificate of region x-1 \"/nonexistent.pem\"")
        );
        assert!(
            reason(resolve("[aws_iid]\nagent_path_template = \"/{{ .Tags.name }}\"\n"))
                .contains("is not supported")
        );
        let ok = resolve(
            "[aws_iid]\naccess_key_id = \"AK\"\nsecret_access_key = \"SK\"\n\
             skip_block_device = true\ndisable_instance_profile_selectors = true\n\
             account_ids_for_local_validation = [\"123456789012\"]\n",
        )
        .unwrap();
        assert!(ok.aws_iid.is_some_and(|a| a.has_credentials()));
        if std::env::var_os("AWS_SECRET_ACCESS_KEY").is_none() {
            assert_eq!(
                reason(resolve("[aws_iid]\naccess_key_id = \"AK\"\n")),
                "configuration missing secret access key, but has access key id"
            );
        }
        assert!(
            reason(resolve("[aws_iid]\nassume_role = \"delegate\"\n"))
                .starts_with("assume_role is not supported")
        );
        assert!(
            reason(resolve("[aws_iid.verify_organization]\nmanagement_account_id = \"1\"\n"))
                .starts_with("verify_organization is not supported")
        );
        assert!(
            reason(resolve(
                "[aws_iid.validate_eks_cluster_membership]\neks_cluster_names = [\"c\"]\n"
            ))
            .starts_with("validate_eks_cluster_membership is not supported")
        );
    }

    #[test]
    fn gcp_iit_needs_projects_and_takes_instance_metadata() {
        let ok = resolve("[gcp_iit]\nprojectid_allow_list = [\"p\"]\n").unwrap();
        assert!(ok.gcp_iit.is_some() && ok.x509pop.is_none());
        assert_eq!(ok.all().len(), 1);
        assert_eq!(reason(resolve("[gcp_iit]\n")), "projectid_allow_list is required");
        // The credentials file is read at each attestation, as SPIRE reads it.
        let api = resolve(
            "[gcp_iit]\nprojectid_allow_list = [\"p\"]\nuse_instance_metadata = true\n\
             service_account_file = \"/nonexistent.json\"\nallowed_label_keys = [\"a\"]\n\
             allowed_metadata_keys = [\"m\"]\nmax_metadata_value_size = 64\n",
        );
        assert!(api.unwrap().gcp_iit.is_some());
        let dir = tempfile::tempdir().unwrap();
        let extra = dir.path().join("certs.json");
        std::fs::write(&extra, serde_json::json!({"k1": test_ca_pem()}).to_string()).unwrap();
        let with_extra = format!(
            "[gcp_iit]\nprojectid_allow_list = [\"p\"]\ngoogle_certs_url = \"\"\n\
             extra_certificates_path = {:?}\n",
            extra.display().to_string()
        );
        assert!(resolve(&with_extra).unwrap().gcp_iit.is_some());
        let no_keys = "[gcp_iit]\nprojectid_allow_list = [\"p\"]\ngoogle_certs_url = \"\"\n";
        assert!(reason(resolve(no_keys)).contains("no key could verify a token"));
        std::fs::write(&extra, "{\"k1\": \"no\"}").unwrap();
        assert!(reason(resolve(&with_extra)).contains("is not a PEM certificate"));
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

    #[test]
    fn tpm_devid_takes_both_bundles_and_refuses_what_spire_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, test_ca_pem()).unwrap();
        let ca = ca.display().to_string();
        let tpm_reason = |toml: &str| match resolve(toml) {
            Err(ConfigError::Invalid { key: TPM_DEVID, reason }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };

        let ok = resolve(&format!(
            "[tpm_devid]\ndevid_ca_path = {ca:?}\nendorsement_ca_path = {ca:?}\n"
        ))
        .unwrap();
        assert!(ok.tpm_devid.is_some() && ok.x509pop.is_none());
        assert_eq!(
            tpm_reason(&format!("[tpm_devid]\nendorsement_ca_path = {ca:?}\n")),
            "devid_ca_path is required"
        );
        assert_eq!(
            tpm_reason(&format!("[tpm_devid]\ndevid_ca_path = {ca:?}\n")),
            "endorsement_ca_path is required"
        );
        assert!(
            tpm_reason(&format!(
                "[tpm_devid]\ndevid_ca_path = \"/nonexistent\"\nendorsement_ca_path = {ca:?}\n"
            ))
            .starts_with("unable to load DevID trust bundle: ")
        );
        assert!(
            tpm_reason(&format!(
                "[tpm_devid]\ndevid_ca_path = {ca:?}\nendorsement_ca_path = \"/nonexistent\"\n"
            ))
            .starts_with("unable to load endorsement trust bundle: ")
        );
    }

    #[test]
    fn k8s_psat_takes_clusters_and_refuses_what_spire_refuses() {
        assert!(resolve("").unwrap().k8s_psat.is_none());
        let ok = resolve(
            "[k8s_psat.clusters.prod]\nservice_account_allow_list = [\"spire:spire-agent\"]\n\
             kube_config_file = \"/etc/kubeconfig\"\naudience = [\"a\", \"b\"]\n\
             allowed_node_label_keys = [\"zone\"]\n[k8s_psat.clusters.\"in.cluster\"]\n\
             service_account_allow_list = [\"x:y\"]\n",
        )
        .unwrap();
        assert!(ok.k8s_psat.is_some());
        assert_eq!(ok.all().len(), 1);
        assert!(resolve("[k8s_psat]\n").unwrap().k8s_psat.is_some());
        match resolve("[k8s_psat.clusters.prod]\naudience = []\n") {
            Err(ConfigError::Invalid { key: K8S_PSAT, reason }) => assert_eq!(
                reason,
                "cluster \"prod\" configuration must have at least one service account allowed"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const CA: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMgbJ2VhDGYTXeOemMd0hq/tbctUB2NMXyzwAV9xS9SV";

    fn sshpop_reason(r: Result<NodeAttestorsConfig, ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid { key: SSHPOP, reason }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn sshpop_takes_ca_keys_and_refuses_what_spire_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cas.pub");
        std::fs::write(&file, format!("{CA}\n\n{CA} again\n")).unwrap();
        let file = file.display().to_string();

        let ok = resolve(&format!("[sshpop]\ncert_authorities = [{CA:?}]\n")).unwrap();
        assert!(ok.sshpop.is_some() && ok.x509pop.is_none());
        assert_eq!(ok.all().len(), 1);
        assert!(resolve(&format!("[sshpop]\ncert_authorities_path = {file:?}\n")).is_ok());
        assert_eq!(
            sshpop_reason(resolve("[sshpop]\n")),
            "missing required config value for \"cert_authorities\" or \"cert_authorities_path\""
        );
        assert_eq!(
            sshpop_reason(resolve("[sshpop]\ncert_authorities = []\n")),
            "failed to create cert checker: must provide at least one cert authority"
        );
        assert_eq!(
            sshpop_reason(resolve("[sshpop]\ncert_authorities = [\"x\"]\n")),
            "failed to create cert checker: failed to parse public key \"x\": ssh: no key found"
        );
        assert_eq!(
            sshpop_reason(resolve("[sshpop]\ncert_authorities_path = \"/nonexistent/cas\"\n")),
            "failed to get cert authorities from file: open /nonexistent/cas: no such file or \
             directory"
        );
        let bad = format!(
            "[sshpop]\ncert_authorities = [{CA:?}]\nagent_path_template = \"/{{{{ .Nope }}}}\"\n"
        );
        assert!(sshpop_reason(resolve(&bad)).contains("is not supported"));
    }
}
