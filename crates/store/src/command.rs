//! The commands that change replicated state, and what applying them reports.
//!
//! A [`Command`] carries everything `apply` needs: ids, timestamps and expiry come from the
//! proposer, never from the replica that applies it. Batch commands give one result per item,
//! in request order; an item that fails changes nothing and says why in an [`ItemError`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use ward_core::{
    AgentId, AttestedNode, Bundle, EntryId, EntryPatch, FederationRelationship, JoinTokenHash,
    JwtAuthority, RegistrationEntry, SelectorSet, StoredJoinToken, TrustDomain, X509Authority,
};

/// One item of [`Command::UpdateEntries`]: the entry to change and the fields to replace.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EntryUpdate {
    /// The entry.
    pub id: EntryId,
    /// The new values of the fields to replace.
    pub patch: EntryPatch,
}

/// What node attestation established about an agent (AttestAgent).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AgentAttestation {
    /// The agent's SPIFFE ID.
    pub id: AgentId,
    /// The node attestor's type string.
    pub attestation_type: String,
    /// Serial of the issued agent X509-SVID (decimal).
    pub serial: String,
    /// NotAfter of that SVID, Unix seconds.
    pub expires_at: i64,
    /// Node selectors; they replace the previous ones.
    pub selectors: SelectorSet,
    /// Whether the agent re-attests instead of renewing.
    pub can_reattest: bool,
}

/// How deleting a federated bundle treats entries that federate with it (SPIRE's
/// `BatchDeleteFederatedBundleRequest.Mode`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum BundleDeleteMode {
    /// Refuse while any entry federates with the trust domain.
    #[default]
    Restrict,
    /// Delete those entries too.
    Delete,
    /// Remove the trust domain from those entries' `federates_with`.
    Dissociate,
}

/// Which fields of a federation relationship an update replaces.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FederationMask {
    /// Replace `bundle_endpoint_url`.
    pub bundle_endpoint_url: bool,
    /// Replace `profile`.
    pub profile: bool,
    /// Replace the trust domain's bundle with `trust_domain_bundle` (when it is set).
    pub trust_domain_bundle: bool,
}

impl FederationMask {
    /// Every field.
    pub const ALL: Self =
        Self { bundle_endpoint_url: true, profile: true, trust_domain_bundle: true };
}

impl Default for FederationMask {
    fn default() -> Self {
        Self::ALL
    }
}

/// One item of [`Command::UpdateFederationRelationships`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FederationUpdate {
    /// The new values; `trust_domain` names the relationship.
    pub relationship: FederationRelationship,
    /// The fields to replace.
    pub mask: FederationMask,
}

/// Which fields of a bundle an update replaces (SPIRE's `BundleMask`). A missing mask on the
/// wire means [`BundleMask::ALL`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[allow(clippy::struct_excessive_bools)]
pub struct BundleMask {
    /// Replace the X.509 authorities.
    pub x509_authorities: bool,
    /// Replace the JWT authorities.
    pub jwt_authorities: bool,
    /// Replace `refresh_hint`.
    pub refresh_hint: bool,
    /// Replace `sequence_number`.
    pub sequence_number: bool,
}

impl BundleMask {
    /// Every field.
    pub const ALL: Self = Self {
        x509_authorities: true,
        jwt_authorities: true,
        refresh_hint: true,
        sequence_number: true,
    };

    /// `old` with the fields this mask selects taken from `new`; the trust domain stays.
    pub fn merge(&self, old: &Bundle, new: &Bundle) -> Bundle {
        let mut out = old.clone();
        if self.x509_authorities {
            out.x509_authorities.clone_from(&new.x509_authorities);
        }
        if self.jwt_authorities {
            out.jwt_authorities.clone_from(&new.jwt_authorities);
        }
        if self.refresh_hint {
            out.refresh_hint = new.refresh_hint;
        }
        if self.sequence_number {
            out.sequence_number = new.sequence_number;
        }
        out
    }
}

impl Default for BundleMask {
    fn default() -> Self {
        Self::ALL
    }
}

/// One item of [`Command::UpdateBundles`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BundleUpdate {
    /// The new values; `trust_domain` names the bundle.
    pub bundle: Bundle,
    /// The fields to replace.
    pub mask: BundleMask,
}

/// Every write the server makes. See the variant docs for the exact semantics.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Create entries (BatchCreateEntry). Ids and `created_at` come from the proposer; the
    /// stored `revision_number` starts at 0. Per item, in SPIRE's order:
    /// [`ItemError::InvalidEntry`], [`ItemError::EntryExists`] (SPIRE's uniqueness rule: same
    /// SPIFFE ID, parent ID and selectors), [`ItemError::EntryIdTaken`],
    /// [`ItemError::FederatedBundleMissing`].
    CreateEntries(Vec<RegistrationEntry>),
    /// Update entries (BatchUpdateEntry): the patch is applied to the stored entry, and
    /// `revision_number` bumped. Per item, in SPIRE's order: [`ItemError::InvalidEntry`] (the
    /// patched fields), [`ItemError::EntryNotFound`], [`ItemError::InvalidEntry`] (selector
    /// types under `store_svid`), [`ItemError::FederatedBundleMissing`] (when the patch sets
    /// `federates_with`). As in SPIRE, an update may make an entry similar to another.
    UpdateEntries(Vec<EntryUpdate>),
    /// Delete entries (BatchDeleteEntry). Per item: [`ItemError::EntryNotFound`].
    DeleteEntries(Vec<EntryId>),
    /// Create a join token, and with it the entry SPIRE creates when `agent_id` is given.
    /// Only the token's hash is proposed and kept; the value never enters the log.
    CreateJoinToken {
        /// The token's hash and its expiry.
        token: StoredJoinToken,
        /// The entry that maps the join-token agent to the requested agent ID, if any.
        entry: Option<RegistrationEntry>,
    },
    /// Consume a join token: it is deleted even when it has expired, and the result reports
    /// whether it had expired at `now`.
    ConsumeJoinToken {
        /// The hash of the token value the agent presented.
        hash: JoinTokenHash,
        /// The proposer's clock, Unix seconds.
        now: i64,
    },
    /// Record a (re-)attestation: creates or replaces the agent's record, clears any pending
    /// serial and replaces the node selectors. A banned agent is refused
    /// ([`ItemError::AgentBanned`]).
    AttestAgent(AgentAttestation),
    /// Record an SVID issued by RenewAgent as pending for the agent.
    RenewAgent {
        /// The agent.
        id: AgentId,
        /// Serial of the new SVID (decimal).
        new_serial: String,
        /// NotAfter of the new SVID, Unix seconds.
        new_expires_at: i64,
    },
    /// The agent presented its pending SVID: the pending serial becomes current.
    ActivateAgentSerial {
        /// The agent.
        id: AgentId,
        /// The serial presented; must equal the pending one.
        serial: String,
    },
    /// Ban an agent: clear both serials, keep the record.
    BanAgent(AgentId),
    /// Delete an agent's record (also lifts a ban).
    DeleteAgent(AgentId),
    /// Store whole bundles as given, creating or replacing them (BatchSetFederatedBundle),
    /// one result each. As SPIRE's datastore, the sequence number is the input's: setting
    /// unchanged content keeps it.
    SetBundles(Vec<Bundle>),
    /// Add authorities to a bundle, as SPIRE's datastore appends. A missing bundle is
    /// created with exactly the given authorities and sequence number 0. Otherwise each
    /// given authority not already in the bundle is added (X.509 authorities compared by
    /// DER, JWT authorities by public key, key ID and expiry; the taint flag is not compared,
    /// so appending never adds an untainted copy of a tainted authority), and the sequence
    /// number goes up by one (saturating) when something was added.
    AppendBundle {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// X.509 authorities to add (compared by DER).
        x509_authorities: Vec<X509Authority>,
        /// JWT authorities to add (compared by key ID).
        jwt_authorities: Vec<JwtAuthority>,
    },
    /// Delete federated bundles (BatchDeleteFederatedBundle), one result each.
    DeleteBundles {
        /// The trust domains.
        trust_domains: Vec<TrustDomain>,
        /// What happens to entries that federate with them.
        mode: BundleDeleteMode,
    },
    /// Mark an X.509 authority of a bundle tainted (LocalAuthority taint): every copy with
    /// this DER, bumping the sequence number. [`ItemError::BundleNotFound`],
    /// [`ItemError::AuthorityNotFound`], or [`ItemError::Invalid`] when a copy is tainted
    /// already.
    TaintX509Authority {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// DER of the authority.
        der: Vec<u8>,
    },
    /// Remove a tainted X.509 authority from a bundle (LocalAuthority revoke): every copy
    /// with this DER, so none stays trusted, bumping the sequence number.
    /// [`ItemError::BundleNotFound`], [`ItemError::AuthorityNotFound`], or
    /// [`ItemError::AuthorityNotTainted`] when a copy is not tainted.
    RevokeX509Authority {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// DER of the authority.
        der: Vec<u8>,
    },
    /// Mark a JWT authority tainted: as [`Command::TaintX509Authority`], by key ID.
    TaintJwtAuthority {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// The key ID.
        key_id: String,
    },
    /// Remove a tainted JWT authority: as [`Command::RevokeX509Authority`], by key ID.
    RevokeJwtAuthority {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// The key ID.
        key_id: String,
    },
    /// Remove the listed authorities from a bundle (pruning of expired authorities). The
    /// proposer decides which ones have expired, so applying needs no clock and no
    /// certificate parsing. Every copy of a listed authority leaves; listed authorities that
    /// are not in the bundle are skipped. As in SPIRE, pruning halts (nothing is removed)
    /// when it would take away the last X.509 authority or the last JWT authority, so a
    /// proposer whose clock runs far ahead cannot empty the bundle. The sequence number is
    /// bumped only when something was removed. The outcome is [`Outcome::Bundles`] with the
    /// bundle after the command, or [`ItemError::BundleNotFound`].
    PruneBundleAuthorities {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// DER of the X.509 authorities to remove.
        x509_ders: Vec<Vec<u8>>,
        /// Key IDs of the JWT authorities to remove.
        jwt_key_ids: Vec<String>,
    },
    /// Create federation relationships (and store their bundles as given when present, as
    /// [`Command::SetBundles`] does). The stored relationship has no `trust_domain_bundle`;
    /// the result carries the given one, as SPIRE's datastore returns the relationship it was
    /// given. Per item: [`ItemError::FederationExists`], or
    /// [`ItemError::Invalid`] for an empty URL, the own trust domain, or a bundle of another
    /// trust domain.
    CreateFederationRelationships(Vec<FederationRelationship>),
    /// Update federation relationships; a masked-in `trust_domain_bundle` replaces the bundle
    /// as on create. The result carries the trust domain's bundle as stored after the
    /// update (none when it has none). Per item: [`ItemError::FederationNotFound`], or [`ItemError::Invalid`]
    /// as on create.
    UpdateFederationRelationships(Vec<FederationUpdate>),
    /// Delete federation relationships; the trust domain's bundle stays. Per item:
    /// [`ItemError::FederationNotFound`].
    DeleteFederationRelationships(Vec<TrustDomain>),
    /// Delete entries whose `expires_at` is non-zero and before `expires_before`.
    PruneEntries {
        /// Unix seconds.
        expires_before: i64,
    },
    /// Delete join tokens that expired before `expires_before`.
    PruneJoinTokens {
        /// Unix seconds.
        expires_before: i64,
    },
    /// Delete agents whose SVID expired before `expires_before`; non-reattestable agents
    /// only when `include_non_reattestable`.
    PruneAgents {
        /// Unix seconds.
        expires_before: i64,
        /// Also prune agents that cannot re-attest.
        include_non_reattestable: bool,
    },
    /// Create bundles as given (BatchCreateFederatedBundle), one result each:
    /// [`ItemError::BundleExists`] when the trust domain has a bundle.
    CreateBundles(Vec<Bundle>),
    /// Update bundles (BatchUpdateFederatedBundle): the masked fields come from the input,
    /// the others stay (a masked-in sequence number is taken as given). Per item:
    /// [`ItemError::BundleNotFound`].
    UpdateBundles(Vec<BundleUpdate>),
    /// Record the first attestation of an agent by a trust-on-first-use node attestor
    /// (`aws_iid`, `gcp_iit`, `azure_msi`; SPIRE's attestors that cannot re-attest): as
    /// [`Command::AttestAgent`], but refused with [`ItemError::AgentAttestedBefore`] when a
    /// record for the agent ID exists (banned or not), so the same evidence attests one agent
    /// until that agent is evicted. Added after log format 1: it travels in format 2
    /// (see [`crate::LogEntry`]).
    AttestAgentFirstUse(AgentAttestation),
}

/// Why one item of a command was refused. Nothing was changed for that item.
///
/// The texts describe the refusal for logs and tests; the server maps each variant to the
/// gRPC code and message SPIRE gives for it.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum ItemError {
    /// An entry with the same SPIFFE ID, parent ID and selectors exists.
    #[error("an entry with the same SPIFFE ID, parent ID and selectors exists")]
    EntryExists(Arc<RegistrationEntry>),
    /// An entry with this id exists.
    #[error("entry id {0} is already in use")]
    EntryIdTaken(EntryId),
    /// No entry with this id.
    #[error("entry {0} not found")]
    EntryNotFound(EntryId),
    /// The entry breaks a validation rule.
    #[error("invalid entry: {0}")]
    InvalidEntry(ward_core::entry::EntryError),
    /// The entry federates with a trust domain that has no bundle.
    #[error("no bundle for federated trust domain {0}")]
    FederatedBundleMissing(TrustDomain),
    /// The join token exists already.
    #[error("join token already exists")]
    TokenExists,
    /// No such join token.
    #[error("join token not found")]
    TokenNotFound,
    /// No such agent.
    #[error("agent {0} not found")]
    AgentNotFound(AgentId),
    /// The agent is banned.
    #[error("agent {0} is banned")]
    AgentBanned(AgentId),
    /// A trust-on-first-use attestation named an agent that has a record already.
    #[error("agent {0} was attested before")]
    AgentAttestedBefore(AgentId),
    /// The presented serial is not the pending one.
    #[error("serial is not the agent's pending serial")]
    SerialMismatch,
    /// No bundle for this trust domain.
    #[error("bundle for {0} not found")]
    BundleNotFound(TrustDomain),
    /// The trust domain has a bundle already.
    #[error("bundle for {0} already exists")]
    BundleExists(TrustDomain),
    /// Entries still federate with the trust domain (delete mode RESTRICT).
    #[error("cannot delete bundle; federated with {0} registration entries")]
    BundleInUse(TrustDomain, usize),
    /// No authority with that DER or key ID.
    #[error("no such authority in the bundle of {0}")]
    AuthorityNotFound(TrustDomain),
    /// Only tainted authorities can be revoked.
    #[error("authority must be tainted before it is revoked")]
    AuthorityNotTainted,
    /// A relationship for this trust domain exists.
    #[error("federation relationship with {0} already exists")]
    FederationExists(TrustDomain),
    /// No relationship for this trust domain.
    #[error("federation relationship with {0} not found")]
    FederationNotFound(TrustDomain),
    /// Some other field is unacceptable.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// The result of consuming a join token.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConsumedToken {
    /// The token's expiry, Unix seconds.
    pub expires_at: i64,
    /// Whether it had expired at the command's `now` (it is deleted either way).
    pub expired: bool,
}

/// What a command did. The variant follows the command.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Create or update entries: the stored entry or why not, per item in order.
    Entries(Vec<Result<Arc<RegistrationEntry>, ItemError>>),
    /// Delete entries: per item in order.
    DeletedEntries(Vec<Result<EntryId, ItemError>>),
    /// CreateJoinToken: the entry created with it, if one was asked for.
    JoinTokenCreated(Result<Option<Arc<RegistrationEntry>>, ItemError>),
    /// ConsumeJoinToken.
    JoinTokenConsumed(Result<ConsumedToken, ItemError>),
    /// Agent commands: the agent's record after the command (the deleted record for
    /// DeleteAgent).
    Agent(Result<Arc<AttestedNode>, ItemError>),
    /// Bundle commands: the bundle(s) after the command, per item in order (the deleted
    /// bundle for deletes).
    Bundles(Vec<Result<Arc<Bundle>, ItemError>>),
    /// Federation relationship commands: per item in order (the deleted one for deletes).
    Federations(Vec<Result<Arc<FederationRelationship>, ItemError>>),
    /// Prune commands: how many records were deleted.
    Pruned(usize),
}

/// What [`crate::Store::apply`] reports for one command.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Applied {
    /// The log index the command was applied at.
    pub index: u64,
    /// The global revision after the command (unchanged if nothing changed).
    pub revision: u64,
    /// The command's results.
    pub outcome: Outcome,
}
