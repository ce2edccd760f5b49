//! `[node_attestor.<name>]`: the one node attestor an agent attests with when no join token is
//! given (SPIRE's agent `NodeAttestor` plugin), read from the file into
//! [`NodeAttestorSettings`]. Each block's keys and defaults are those of SPIRE v1.13.3's agent
//! plugin of the same name (`doc/plugin_agent_nodeattestor_<name>.md`).

use std::path::PathBuf;

use serde::Deserialize;
use ward_attest::node_attestor::aws_iid::AwsIidAgentConfig;
use ward_attest::node_attestor::azure_msi::{self, AzureMsiAgentConfig};
use ward_attest::node_attestor::gcp_iit::GcpIitAgentConfig;
use ward_attest::node_attestor::k8s_psat::{self, K8sPsatAgentConfig};
use ward_attest::node_attestor::sshpop::SshpopAgentConfig;
use ward_attest::node_attestor::tpm_devid::TpmDevidAgentConfig;
use ward_attest::node_attestor::x509pop::X509popAgentConfig;

use super::{ConfigError, err, non_empty, non_empty_path};

/// `[node_attestor]`: the one node attestor of the agent (SPIRE's `NodeAttestor` plugin), used
/// when no join token is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAttestorFileConfig {
    /// `x509pop`: a certificate and its key prove the node's identity.
    pub x509pop: Option<X509popFileConfig>,
    /// `gcp_iit`: a Compute Engine instance identity token proves the node's identity.
    pub gcp_iit: Option<GcpIitFileConfig>,
    /// `tpm_devid`: a TPM-resident DevID key and its certificate prove the node's identity.
    pub tpm_devid: Option<TpmDevidFileConfig>,
    /// `azure_msi`: an Azure managed identity access token proves the node's identity.
    pub azure_msi: Option<AzureMsiFileConfig>,
    /// `k8s_psat`: the pod's projected service-account token proves the node's identity.
    pub k8s_psat: Option<K8sPsatFileConfig>,
    /// `sshpop`: an SSH host certificate and the host key prove the node's identity.
    pub sshpop: Option<SshpopFileConfig>,
    /// `aws_iid`: the EC2 instance identity document proves the node's identity.
    pub aws_iid: Option<AwsIidFileConfig>,
}

/// `[node_attestor.k8s_psat]`: SPIRE's agent `k8s_psat` plugin data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sPsatFileConfig {
    /// The cluster name, as the server's configuration names it (required).
    pub cluster: Option<String>,
    /// The projected token's file (default `/var/run/secrets/tokens/spire-agent`).
    pub token_path: Option<PathBuf>,
}

/// `[node_attestor.tpm_devid]`: SPIRE's agent `tpm_devid` plugin data.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmDevidFileConfig {
    /// PEM DevID certificate, then its intermediates (required).
    pub devid_cert_path: Option<PathBuf>,
    /// The DevID key's private blob, `TPM2B_PRIVATE` contents (required).
    pub devid_priv_path: Option<PathBuf>,
    /// The DevID key's public blob, `TPMT_PUBLIC` (required).
    pub devid_pub_path: Option<PathBuf>,
    /// The DevID key's authorisation value (default empty).
    pub devid_password: Option<String>,
    /// The owner hierarchy's authorisation value (default empty).
    pub owner_hierarchy_password: Option<String>,
    /// The endorsement hierarchy's authorisation value (default empty).
    pub endorsement_hierarchy_password: Option<String>,
    /// The TPM device or emulator socket (default: the one `/dev/tpmrm<N>`, else `/dev/tpm<N>`).
    pub tpm_device_path: Option<PathBuf>,
}

impl std::fmt::Debug for TpmDevidFileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The passwords are credentials: never print them.
        f.debug_struct("TpmDevidFileConfig")
            .field("devid_cert_path", &self.devid_cert_path)
            .field("devid_priv_path", &self.devid_priv_path)
            .field("devid_pub_path", &self.devid_pub_path)
            .field("tpm_device_path", &self.tpm_device_path)
            .finish_non_exhaustive()
    }
}

/// `[node_attestor.azure_msi]`: SPIRE's agent `azure_msi` plugin data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureMsiFileConfig {
    /// The resource the token is asked for (default `https://management.azure.com/`).
    pub resource_id: Option<String>,
}

/// `[node_attestor.aws_iid]`: SPIRE's agent `aws_iid` plugin data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsIidFileConfig {
    /// The instance metadata service's base URL (default `http://169.254.169.254`); only its
    /// scheme, host and port are used.
    pub ec2_metadata_endpoint: Option<String>,
}

/// `[node_attestor.gcp_iit]`: SPIRE's agent `gcp_iit` plugin data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpIitFileConfig {
    /// The metadata server's host (default `metadata.google.internal`).
    pub identity_token_host: Option<String>,
    /// The service account whose token is asked for (default `default`).
    pub service_account: Option<String>,
}

/// `[node_attestor.sshpop]`: SPIRE's agent `sshpop` plugin data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshpopFileConfig {
    /// The host's private key, OpenSSH format (default `/etc/ssh/ssh_host_rsa_key`).
    pub host_key_path: Option<PathBuf>,
    /// The host certificate, OpenSSH format (default `/etc/ssh/ssh_host_rsa_key-cert.pub`).
    pub host_cert_path: Option<PathBuf>,
}

/// `[node_attestor.x509pop]`: SPIRE's agent `x509pop` plugin data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509popFileConfig {
    /// PEM private key of the certificate (required).
    pub private_key_path: Option<PathBuf>,
    /// PEM certificate, leaf first (required).
    pub certificate_path: Option<PathBuf>,
    /// PEM intermediate certificates sent after the certificate.
    pub intermediates_path: Option<PathBuf>,
}

/// The node attestor an agent attests with, checked: at most one `[node_attestor.<name>]`
/// block, its required keys present, SPIRE's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAttestorSettings {
    /// `x509pop`.
    X509pop(X509popAgentConfig),
    /// `gcp_iit`.
    GcpIit(GcpIitAgentConfig),
    /// `tpm_devid`.
    TpmDevid(TpmDevidAgentConfig),
    /// `azure_msi`.
    AzureMsi(AzureMsiAgentConfig),
    /// `k8s_psat`.
    K8sPsat(K8sPsatAgentConfig),
    /// `sshpop`.
    Sshpop(SshpopAgentConfig),
    /// `aws_iid`.
    AwsIid(AwsIidAgentConfig),
}

impl NodeAttestorSettings {
    /// The settings of `[node_attestor]`: `None` when no block is given.
    ///
    /// # Errors
    /// A sentence when more than one block is given or a required key is missing.
    pub fn from_file(file: Option<NodeAttestorFileConfig>) -> Result<Option<Self>, ConfigError> {
        let NodeAttestorFileConfig {
            x509pop,
            gcp_iit,
            tpm_devid,
            azure_msi,
            k8s_psat,
            sshpop,
            aws_iid,
        } = file.unwrap_or_default();
        let configured = [
            x509pop.is_some(),
            gcp_iit.is_some(),
            tpm_devid.is_some(),
            azure_msi.is_some(),
            k8s_psat.is_some(),
            sshpop.is_some(),
            aws_iid.is_some(),
        ];
        if configured.iter().filter(|c| **c).count() > 1 {
            return Err(err("only one of [node_attestor.x509pop], [node_attestor.gcp_iit], \
                            [node_attestor.tpm_devid], [node_attestor.azure_msi], \
                            [node_attestor.k8s_psat], [node_attestor.sshpop] and \
                            [node_attestor.aws_iid] can be configured: an agent attests with \
                            one node attestor"));
        }
        if let Some(a) = azure_msi {
            return Ok(Some(Self::AzureMsi(AzureMsiAgentConfig {
                resource_id: non_empty(a.resource_id)
                    .unwrap_or_else(|| azure_msi::DEFAULT_RESOURCE_ID.to_owned()),
                ..Default::default()
            })));
        }
        if let Some(a) = aws_iid {
            return Ok(Some(Self::AwsIid(AwsIidAgentConfig {
                ec2_metadata_endpoint: non_empty(a.ec2_metadata_endpoint),
            })));
        }
        if let Some(g) = gcp_iit {
            let defaults = GcpIitAgentConfig::default();
            return Ok(Some(Self::GcpIit(GcpIitAgentConfig {
                identity_token_host: non_empty(g.identity_token_host)
                    .unwrap_or(defaults.identity_token_host),
                service_account: non_empty(g.service_account).unwrap_or(defaults.service_account),
            })));
        }
        if let Some(t) = tpm_devid {
            return Ok(Some(Self::TpmDevid(TpmDevidAgentConfig {
                devid_cert_path: non_empty_path(t.devid_cert_path)
                    .ok_or_else(|| err("devid_cert_path is required"))?,
                devid_priv_path: non_empty_path(t.devid_priv_path)
                    .ok_or_else(|| err("devid_priv_path is required"))?,
                devid_pub_path: non_empty_path(t.devid_pub_path)
                    .ok_or_else(|| err("devid_pub_path is required"))?,
                devid_password: t.devid_password.unwrap_or_default(),
                owner_hierarchy_password: t.owner_hierarchy_password.unwrap_or_default(),
                endorsement_hierarchy_password: t
                    .endorsement_hierarchy_password
                    .unwrap_or_default(),
                tpm_device_path: non_empty_path(t.tpm_device_path),
            })));
        }
        if let Some(k) = k8s_psat {
            return Ok(Some(Self::K8sPsat(K8sPsatAgentConfig {
                cluster: non_empty(k.cluster)
                    .ok_or_else(|| err("k8s_psat: missing required cluster block"))?,
                token_path: non_empty_path(k.token_path)
                    .unwrap_or_else(|| PathBuf::from(k8s_psat::DEFAULT_TOKEN_PATH)),
            })));
        }
        if let Some(x) = sshpop {
            let defaults = SshpopAgentConfig::default();
            return Ok(Some(Self::Sshpop(SshpopAgentConfig {
                host_key_path: non_empty_path(x.host_key_path).unwrap_or(defaults.host_key_path),
                host_cert_path: non_empty_path(x.host_cert_path).unwrap_or(defaults.host_cert_path),
            })));
        }
        if let Some(x) = x509pop {
            return Ok(Some(Self::X509pop(X509popAgentConfig {
                private_key_path: non_empty_path(x.private_key_path)
                    .ok_or_else(|| err("private_key_path is required"))?,
                certificate_path: non_empty_path(x.certificate_path)
                    .ok_or_else(|| err("certificate_path is required"))?,
                intermediates_path: non_empty_path(x.intermediates_path),
            })));
        }
        Ok(None)
    }
}
