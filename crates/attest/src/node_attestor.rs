//! The agent side of node attestation: what a node attestor sends to the server in the
//! `AttestAgent` stream.
//!
//! The agent opens the stream with the attestor's type name and payload, and answers each
//! challenge the server sends with [`NodeAttestor::answer`] until the server returns the
//! agent's SVID. The exchange mirrors SPIRE v1.13.3's agent node attestors
//! (`pkg/agent/plugin/nodeattestor`), so a ward agent attests to spire-server and a SPIRE
//! agent's evidence is what ward's server verifies.
//!
//! One module per attestor holds its agent side: [`join_token`] now; `x509pop`, `k8s_psat`
//! and the cloud attestors plug in through the same trait.

/// Why a node attestor could not produce evidence or answer a challenge.
#[derive(Debug, thiserror::Error)]
pub enum NodeAttestError {
    /// The attestor takes no challenge, and the server sent one (SPIRE's text).
    #[error("server issued unexpected challenge")]
    UnexpectedChallenge,
    /// The attestor's configuration cannot produce evidence.
    #[error("{attestor}: {reason}")]
    Config {
        /// The attestor's type name.
        attestor: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Reading the evidence failed.
    #[error("{attestor}: reading evidence from {path}", path = path.display())]
    Evidence {
        /// The attestor's type name.
        attestor: &'static str,
        /// The file that could not be read.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The agent side of one node attestation method.
///
/// Calls may block (reading a token file, asking a metadata service): the agent runs them on
/// a blocking thread.
pub trait NodeAttestor: Send + Sync + std::fmt::Debug {
    /// The attestation type sent as `AttestationData.type` (`join_token`, `x509pop`, ...).
    fn name(&self) -> &'static str;

    /// The payload sent as `AttestationData.payload` when the stream opens.
    ///
    /// # Errors
    /// [`NodeAttestError`] when no evidence can be gathered.
    fn payload(&self) -> Result<Vec<u8>, NodeAttestError>;

    /// The response to one server challenge.
    ///
    /// # Errors
    /// [`NodeAttestError::UnexpectedChallenge`] for attestors that take none, or why the
    /// challenge could not be answered.
    fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError>;
}

/// The `join_token` attestor: the payload is the token's bytes, and no challenge follows.
pub mod join_token {
    use zeroize::Zeroizing;

    use super::{NodeAttestError, NodeAttestor};

    /// The attestation type name.
    pub const NAME: &str = "join_token";

    /// A join token to present once.
    pub struct JoinTokenAttestor {
        token: Zeroizing<String>,
    }

    impl std::fmt::Debug for JoinTokenAttestor {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // The token is a credential: never print it.
            f.debug_struct("JoinTokenAttestor").finish_non_exhaustive()
        }
    }

    impl JoinTokenAttestor {
        /// An attestor presenting `token`.
        ///
        /// # Errors
        /// [`NodeAttestError::Config`] for an empty token.
        pub fn new(token: &str) -> Result<Self, NodeAttestError> {
            if token.is_empty() {
                return Err(NodeAttestError::Config {
                    attestor: NAME,
                    reason: "the join token is empty".into(),
                });
            }
            Ok(Self { token: Zeroizing::new(token.to_owned()) })
        }
    }

    impl NodeAttestor for JoinTokenAttestor {
        fn name(&self) -> &'static str {
            NAME
        }

        fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
            Ok(self.token.as_bytes().to_vec())
        }

        fn answer(&self, _challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
            Err(NodeAttestError::UnexpectedChallenge)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn payload_is_the_token_and_challenges_are_refused() {
            let a = JoinTokenAttestor::new("abc-123").unwrap();
            assert_eq!(a.name(), "join_token");
            assert_eq!(a.payload().unwrap(), b"abc-123");
            assert!(matches!(a.answer(b"x"), Err(NodeAttestError::UnexpectedChallenge)));
            assert!(!format!("{a:?}").contains("abc-123"));
        }

        #[test]
        fn refuses_an_empty_token() {
            assert!(matches!(
                JoinTokenAttestor::new(""),
                Err(NodeAttestError::Config { attestor: "join_token", .. })
            ));
        }
    }
}
