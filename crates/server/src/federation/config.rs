//! The `[federation]` table of ward's configuration (SPIRE's `server.federation` block).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use ward_core::{BundleEndpointProfile, SpiffeId, TrustDomain};

use super::{DEFAULT_ENDPOINT_REFRESH_HINT, EndpointConfig};
use crate::config::{ConfigError, parse_duration};

/// `[federation]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationFile {
    bundle_endpoint: Option<BundleEndpointFile>,
    #[serde(default)]
    federates_with: BTreeMap<String, FederatesWithFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleEndpointFile {
    address: Option<IpAddr>,
    port: Option<u16>,
    refresh_hint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FederatesWithFile {
    bundle_endpoint_url: String,
    bundle_endpoint_profile: String,
    endpoint_spiffe_id: Option<String>,
}

/// The bundle endpoint this server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpointConfig {
    /// Listen address (default `0.0.0.0`).
    pub address: IpAddr,
    /// Listen port (default 443; 0 picks a free port).
    pub port: u16,
    /// The refresh hint written into the served bundle (default 5 minutes).
    pub refresh_hint: Duration,
}

/// Federation settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FederationConfig {
    /// The bundle endpoint, when one is served.
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// Relationships set in the file; they win over stored ones for the same trust domain
    /// and are not stored (SPIRE's static relationships).
    pub federates_with: BTreeMap<TrustDomain, EndpointConfig>,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

impl FederationFile {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn resolve(self) -> Result<FederationConfig, ConfigError> {
        let bundle_endpoint = match self.bundle_endpoint {
            None => None,
            Some(e) => {
                let refresh_hint = match e.refresh_hint.as_deref() {
                    None | Some("") => DEFAULT_ENDPOINT_REFRESH_HINT,
                    Some(s) => parse_duration(s)
                        .map_err(|why| invalid("federation.bundle_endpoint.refresh_hint", why))?,
                };
                Some(BundleEndpointConfig {
                    address: e.address.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                    port: e.port.unwrap_or(443),
                    refresh_hint,
                })
            }
        };
        let mut federates_with = BTreeMap::new();
        for (name, f) in self.federates_with {
            let key = "federation.federates_with";
            let td = TrustDomain::new(&name).map_err(|e| invalid(key, format!("{name:?}: {e}")))?;
            let url = url::Url::parse(&f.bundle_endpoint_url)
                .map_err(|e| invalid(key, format!("{name:?}: bundle_endpoint_url: {e}")))?;
            if url.scheme() != "https" {
                return Err(invalid(key, format!("{name:?}: bundle_endpoint_url must use https")));
            }
            let profile = match (f.bundle_endpoint_profile.as_str(), f.endpoint_spiffe_id) {
                ("https_web", None) => BundleEndpointProfile::HttpsWeb,
                ("https_spiffe", Some(id)) => BundleEndpointProfile::HttpsSpiffe {
                    endpoint_spiffe_id: SpiffeId::parse(&id).map_err(|e| {
                        invalid(key, format!("{name:?}: could not get endpoint SPIFFE ID: {e}"))
                    })?,
                },
                ("https_spiffe", None) => {
                    return Err(invalid(
                        key,
                        format!("{name:?}: https_spiffe needs endpoint_spiffe_id"),
                    ));
                }
                ("https_web", Some(_)) => {
                    return Err(invalid(
                        key,
                        format!("{name:?}: https_web takes no endpoint_spiffe_id"),
                    ));
                }
                (other, _) => {
                    return Err(invalid(
                        key,
                        format!(
                            "{name:?}: unknown bundle endpoint profile {other:?}; supported \
                             profiles are \"https_spiffe\" and \"https_web\""
                        ),
                    ));
                }
            };
            federates_with.insert(td, EndpointConfig { url: f.bundle_endpoint_url, profile });
        }
        Ok(FederationConfig { bundle_endpoint, federates_with })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, Overrides};

    #[test]
    fn federation_table_is_read_and_checked() {
        let text = r#"
            [federation.bundle_endpoint]
            address = "127.0.0.1"
            port = 8443
            refresh_hint = "10m"
            [federation.federates_with."domain1.test"]
            bundle_endpoint_url = "https://1.2.3.4:8443"
            bundle_endpoint_profile = "https_web"
            [federation.federates_with."domain2.test"]
            bundle_endpoint_url = "https://5.6.7.8:8443"
            bundle_endpoint_profile = "https_spiffe"
            endpoint_spiffe_id = "spiffe://domain2.test/beserver"
        "#;
        let c = Config::from_toml(text, &Overrides::default()).unwrap();
        let e = c.federation.bundle_endpoint.unwrap();
        assert_eq!(
            (e.address.to_string().as_str(), e.port, e.refresh_hint.as_secs()),
            ("127.0.0.1", 8443, 600)
        );
        let names: Vec<_> =
            c.federation.federates_with.keys().map(|t| t.as_str().to_owned()).collect();
        assert_eq!(names, ["domain1.test", "domain2.test"]);

        let c = Config::from_toml("[federation.bundle_endpoint]\n", &Overrides::default()).unwrap();
        let e = c.federation.bundle_endpoint.unwrap();
        assert_eq!(
            (e.address.to_string().as_str(), e.port, e.refresh_hint.as_secs()),
            ("0.0.0.0", 443, 300)
        );
        assert!(
            Config::from_toml("", &Overrides::default())
                .unwrap()
                .federation
                .bundle_endpoint
                .is_none()
        );

        for bad in [
            "[federation.federates_with.\"d.test\"]\nbundle_endpoint_url = \"http://x\"\nbundle_endpoint_profile = \"https_web\"",
            "[federation.federates_with.\"d.test\"]\nbundle_endpoint_url = \"https://x\"\nbundle_endpoint_profile = \"https_spiffe\"",
            "[federation.federates_with.\"d.test\"]\nbundle_endpoint_url = \"https://x\"\nbundle_endpoint_profile = \"ftp\"",
            "[federation.bundle_endpoint]\nrefresh_hint = \"soon\"",
        ] {
            let err = Config::from_toml(bad, &Overrides::default()).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { .. }), "{bad}: {err:?}");
        }
    }
}
