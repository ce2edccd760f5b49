//! Key layout and versioned record encoding (see the crate docs for the full layout).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use ward_core::{AgentId, EntryId, JoinTokenHash, TrustDomain};

use crate::error::StoreError;

/// Key prefix of a registration entry stored alone: `e` + entry id. Layout format 2 kept
/// every entry so; format 3 keeps only entries without a creation number so (see
/// [`crate::entry_runs`]).
pub(crate) const ENTRY: u8 = b'e';
/// Key prefix of the registration entries in runs of consecutive creation numbers: `n` +
/// run number (u64 big-endian), one record per run of [`crate::entry_runs::ENTRY_RUN`]
/// numbers.
pub(crate) const ENTRY_RUN: u8 = b'n';
/// Key prefix of attested nodes: `a` + agent SPIFFE ID.
pub(crate) const AGENT: u8 = b'a';
/// Key prefix of join tokens: `t` + hex SHA-256 of the token value.
pub(crate) const TOKEN: u8 = b't';
/// Key prefix of bundles: `b` + trust domain name.
pub(crate) const BUNDLE: u8 = b'b';
/// Key prefix of federation relationships: `f` + trust domain name.
pub(crate) const FEDERATION: u8 = b'f';
/// Key prefix of the change feed in layout format 1: `c` + revision (u64 big-endian), one
/// record per revision. Only read to migrate a format-1 tree (see `crate::feed`).
pub(crate) const CHANGE: u8 = b'c';
/// Key prefix of the request-id table in layout format 1: `r` + log index (u64 big-endian) →
/// request id (u128 big-endian). Only read to migrate a format-1 tree.
pub(crate) const REQUEST: u8 = b'r';
/// Key prefix of the change feed: `h` + run number (u64 big-endian), one record per run of
/// [`crate::feed::FEED_RUN`] revisions.
pub(crate) const FEED_RUN: u8 = b'h';
/// Key prefix of the request-id table: `q` + run number (u64 big-endian), one record per run
/// of [`crate::request_ids::REQUEST_RUN`] log indexes.
pub(crate) const REQUEST_RUN: u8 = b'q';
/// Key of the last applied log index (u64 big-endian).
pub(crate) const META_APPLIED: &[u8] = b"m/applied";
/// Key of the Raft term of the last applied log entry (u64 big-endian).
pub(crate) const META_APPLIED_TERM: &[u8] = b"m/applied_term";
/// Key of the cluster membership after the last applied membership change (opaque bytes:
/// the consensus layer's encoding).
pub(crate) const META_CONF_STATE: &[u8] = b"m/conf_state";
/// Key of the trust domain the store belongs to (its name), recorded when it is created.
pub(crate) const META_TRUST_DOMAIN: &[u8] = b"m/trust_domain";
/// Key of the global revision (u64 big-endian).
pub(crate) const META_REVISION: &[u8] = b"m/revision";
/// Key of the number of entries (u64 BE), so open can size its indexes.
pub(crate) const META_ENTRIES: &[u8] = b"m/entries";
/// Key of the highest creation number given to an entry (u64 BE).
pub(crate) const META_ENTRY_NUMBER: &[u8] = b"m/entry-number";
/// Key of the layout format version.
pub(crate) const META_FORMAT: &[u8] = b"m/format";
/// Key present while a move of format-2 entry records into runs is under way (the tree
/// already says format 3, so a release that reads only format 2 refuses it).
pub(crate) const META_MIGRATING_ENTRIES: &[u8] = b"m/migrating-entries";
/// The layout format this code writes: 3 keeps numbered entries in runs (`n`); format 2 kept
/// one record per entry (`e`), and format 1 also one record per revision (`c`) and per
/// index (`r`) where format 2 keeps runs (`h`, `q`). Opening an older tree migrates it (see
/// `crate::load`).
pub(crate) const FORMAT: u64 = 3;

/// A record with its format version, so later layouts can still read older values.
#[derive(Serialize, Deserialize)]
pub(crate) enum Versioned<T> {
    /// Format 1: postcard of the ward-core type.
    V1(T),
}

pub(crate) fn key(prefix: u8, rest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(rest.len().saturating_add(1));
    k.push(prefix);
    k.extend_from_slice(rest.as_bytes());
    k
}

pub(crate) fn entry_key(id: &EntryId) -> Vec<u8> {
    key(ENTRY, id.as_str())
}

pub(crate) fn agent_key(id: &AgentId) -> Vec<u8> {
    key(AGENT, id.0.as_str())
}

pub(crate) fn token_key(hash: &JoinTokenHash) -> Vec<u8> {
    key(TOKEN, &hash.to_hex())
}

pub(crate) fn bundle_key(td: &TrustDomain) -> Vec<u8> {
    key(BUNDLE, td.as_str())
}

pub(crate) fn federation_key(td: &TrustDomain) -> Vec<u8> {
    key(FEDERATION, td.as_str())
}

/// The key of the format-1 change-feed record of `revision` (tests write format-1 trees).
#[cfg(test)]
pub(crate) fn change_key(revision: u64) -> Vec<u8> {
    numbered_key(CHANGE, revision)
}

/// The key of the format-1 request-id record of log index `index` (tests write format-1
/// trees).
#[cfg(test)]
pub(crate) fn request_key(index: u64) -> Vec<u8> {
    numbered_key(REQUEST, index)
}

/// The key of change-feed run `run`.
pub(crate) fn feed_key(run: u64) -> Vec<u8> {
    numbered_key(FEED_RUN, run)
}

/// The key of entry run `run`.
pub(crate) fn entry_run_key(run: u64) -> Vec<u8> {
    numbered_key(ENTRY_RUN, run)
}

/// The key of request-id run `run`.
pub(crate) fn request_run_key(run: u64) -> Vec<u8> {
    numbered_key(REQUEST_RUN, run)
}

/// `prefix` + `n` (u64 big-endian), so keys sort by number.
fn numbered_key(prefix: u8, n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(prefix);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The number in a key made by [`numbered_key`] with `prefix`.
pub(crate) fn key_number(prefix: u8, key: &[u8]) -> Option<u64> {
    let rest: [u8; 8] = key.strip_prefix(&[prefix])?.try_into().ok()?;
    Some(u64::from_be_bytes(rest))
}

/// A [`StoreError::Corrupt`] for the record under `key`.
pub(crate) fn corrupt(key: &[u8], reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: reason.into() }
}

/// The log index of a request-id key and the id in its value.
pub(crate) fn read_request(key: &[u8], value: &[u8]) -> Result<(u64, u128), StoreError> {
    let index: Option<[u8; 8]> = key.strip_prefix(&[REQUEST]).and_then(|k| k.try_into().ok());
    let id: Option<[u8; 16]> = value.try_into().ok();
    match (index, id) {
        (Some(index), Some(id)) => Ok((u64::from_be_bytes(index), u128::from_be_bytes(id))),
        _ => Err(StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "not a request-id record".into(),
        }),
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(&Versioned::V1(value)).map_err(|e| StoreError::Encode(e.to_string()))
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    match postcard::from_bytes::<Versioned<T>>(bytes) {
        Ok(Versioned::V1(v)) => Ok(v),
        Err(e) => Err(StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        }),
    }
}

/// A record listed in creation order (entries, bundles, federation relationships). Variant 0 has the
/// bytes of [`Versioned::V1`], so records written before creation numbers were kept still
/// read (with number 0).
#[derive(Serialize, Deserialize)]
enum NumberedRecord<T> {
    /// Format 1: the value alone.
    V1(T),
    /// The value and its creation number.
    V2 {
        /// The ward-core value.
        value: T,
        /// Its creation number.
        number: u64,
    },
}

pub(crate) fn encode_numbered<T: Serialize>(value: &T, number: u64) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(&NumberedRecord::V2 { value, number })
        .map_err(|e| StoreError::Encode(e.to_string()))
}

pub(crate) fn decode_numbered<T: DeserializeOwned>(
    key: &[u8],
    bytes: &[u8],
) -> Result<(T, u64), StoreError> {
    match postcard::from_bytes::<NumberedRecord<T>>(bytes) {
        Ok(NumberedRecord::V1(v)) => Ok((v, 0)),
        Ok(NumberedRecord::V2 { value, number }) => Ok((value, number)),
        Err(e) => Err(StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        }),
    }
}

pub(crate) fn u64_value(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

pub(crate) fn read_u64(key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// One change-feed record: what a command changed.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Change {
    /// The global revision this change produced.
    pub revision: u64,
    /// Entries created, updated or deleted.
    pub entries: Vec<EntryId>,
    /// Agents whose record changed (attested, renewed, banned, deleted).
    pub agents: Vec<AgentId>,
    /// Trust domains whose bundle changed.
    pub bundles: Vec<TrustDomain>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_without_a_number_read_as_number_zero() {
        let old = encode(&"value".to_owned()).unwrap();
        assert_eq!(decode_numbered::<String>(b"k", &old).unwrap(), ("value".to_owned(), 0));
        let new = encode_numbered(&"value".to_owned(), 7).unwrap();
        assert_eq!(decode_numbered::<String>(b"k", &new).unwrap(), ("value".to_owned(), 7));
    }
}
