//! Node attestation: the evidence an agent sends in the `AttestAgent` stream, and the
//! server's verification of it.
//!
//! The agent opens the stream with the attestor's type name and payload, and answers each
//! challenge the server sends with [`NodeAttestor::answer`] until the server returns the
//! agent's SVID. The server hands the payload to the [`ServerNodeAttestor`] of that type, which
//! either attests the agent at once or returns a challenge and a [`PendingChallenge`] that
//! checks the agent's answer. The exchange mirrors SPIRE v1.13.3's node attestors
//! (`pkg/agent/plugin/nodeattestor`, `pkg/server/plugin/nodeattestor`), so a ward agent
//! attests to spire-server and a SPIRE agent's evidence is what ward's server verifies.
//!
//! One module per attestor holds its payload type, its agent side and its server side:
//! [`join_token`] (agent side only: the server checks tokens against its store) and
//! [`x509pop`], [`sshpop`], [`gcp_iit`], [`tpm_devid`], [`aws_iid`], [`azure_msi`] and
//! [`k8s_psat`]; the other attestors follow the same shape.

pub mod aws_iid;
pub mod azure_msi;
pub mod field_template;
pub mod gcp_iit;
pub mod http_get;
pub mod jws;
pub mod k8s_psat;
pub mod sshpop;
#[cfg(test)]
mod test_http;
pub mod tpm_devid;
pub mod x509pop;

use ward_core::SpiffeId;

/// The gRPC code a refused attestation is answered with (the server maps it to its status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// The evidence is malformed.
    InvalidArgument,
    /// The evidence does not prove the node's identity.
    PermissionDenied,
    /// The attestor failed on evidence that was well formed.
    Internal,
}

/// Why the server refuses an attestation: SPIRE's code and message (without the
/// `nodeattestor(<name>): ` prefix, which the server adds as SPIRE's plugin layer does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The status code.
    pub code: RefusalCode,
    /// The message.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// What the server learns about an agent whose evidence it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedAgent {
    /// The agent's SPIFFE ID (`spiffe://<td>/spire/agent/<attestor>/...`).
    pub agent_id: SpiffeId,
    /// Selector values; their type is the attestor's name.
    pub selector_values: Vec<String>,
    /// Whether the agent attests again instead of renewing its SVID.
    pub can_reattest: bool,
}

/// One step of the server's side of node attestation.
pub enum Verification {
    /// The evidence is accepted.
    Attested(AttestedAgent),
    /// The agent must answer `challenge`; `pending` checks the answer.
    Challenge {
        /// Sent to the agent as `AttestAgentResponse.challenge`.
        challenge: Vec<u8>,
        /// Checks the agent's `challenge_response`.
        pending: Box<dyn PendingChallenge>,
    },
}

impl std::fmt::Debug for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Attested(a) => f.debug_tuple("Attested").field(a).finish(),
            Self::Challenge { .. } => f.debug_struct("Challenge").finish_non_exhaustive(),
        }
    }
}

/// A challenge the server sent and the state needed to check its answer.
pub trait PendingChallenge: Send {
    /// Checks the agent's answer.
    ///
    /// # Errors
    /// [`Refusal`] with SPIRE's code and message.
    fn respond(self: Box<Self>, response: &[u8]) -> Result<Verification, Refusal>;
}

/// The server side of one node attestation method.
pub trait ServerNodeAttestor: Send + Sync + std::fmt::Debug {
    /// The attestation type it verifies (`x509pop`, ...).
    fn name(&self) -> &'static str;

    /// Verifies the payload the agent opened the stream with, at Unix time `now`. It may
    /// block (asking an API server): the server calls it on a blocking thread.
    ///
    /// # Errors
    /// [`Refusal`] with SPIRE's code and message.
    fn begin(&self, payload: &[u8], now: i64) -> Result<Verification, Refusal>;

    /// Completes an accepted attestation once the server has checked that its agent ID may
    /// attest (an attestor that trusts on first use refuses an agent attested before): SPIRE's
    /// cloud attestors read selectors from their provider's API only then, at Unix time
    /// `now`. It may block; the server calls it on a blocking thread. The default adds
    /// nothing.
    ///
    /// # Errors
    /// [`Refusal`] with SPIRE's code and message.
    fn complete(&self, attested: AttestedAgent, now: i64) -> Result<AttestedAgent, Refusal> {
        let _ = now;
        Ok(attested)
    }
}

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
