//! Minting X509-SVIDs: one fresh key per entry, CSRs sent to `SVID/BatchNewX509SVID` in
//! batches, and when each SVID should be rotated.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::transport::Channel;
use ward_ca::{KeyType, PrivateKey, build_csr};
use ward_proto::spire::api::server::svid::v1 as svidpb;
use zeroize::Zeroizing;

use crate::error::SyncError;

/// SPIRE's largest BatchNewX509SVID request (CSRs per call).
pub const MAX_BATCH_SIZE: usize = 500;

/// An X509-SVID the agent minted for an entry, with its key.
#[derive(Clone)]
pub struct MintedSvid {
    /// Certificate chain, DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER.
    pub private_key: Arc<Zeroizing<Vec<u8>>>,
    /// When the agent asked for it.
    pub issued_at: SystemTime,
    /// The leaf's NotAfter (from the server's `expires_at`).
    pub expires_at: SystemTime,
    /// When to replace it: at half its lifetime, moved by a random amount of up to a tenth
    /// of that half either way, so SVIDs minted together do not all come due together.
    pub rotate_at: SystemTime,
}

impl std::fmt::Debug for MintedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedSvid")
            .field("expires_at", &self.expires_at)
            .field("rotate_at", &self.rotate_at)
            .finish_non_exhaustive()
    }
}

/// When an SVID valid from `issued_at` to `expires_at` is due for rotation: at half its
/// lifetime, plus `jitter` (a number in `[-1, 1]`) times a tenth of that half.
pub fn rotation_time(issued_at: SystemTime, expires_at: SystemTime, jitter: f64) -> SystemTime {
    let life = expires_at.duration_since(issued_at).unwrap_or(Duration::ZERO);
    let half = life / 2;
    let spread = half.mul_f64(0.1 * jitter.clamp(-1.0, 1.0).abs());
    let at = issued_at + half;
    if jitter < 0.0 { at - spread } else { at + spread }
}

/// The outcome of one item of a batch.
#[derive(Debug)]
pub enum MintResult {
    /// The SVID.
    Minted(MintedSvid),
    /// The server refused this entry (per-item status), e.g. NotFound when it is no longer
    /// authorized.
    Refused {
        /// The gRPC code.
        code: i32,
        /// The server's message.
        message: String,
    },
}

/// Mints SVIDs for `entry_ids` in one BatchNewX509SVID call (the caller keeps batches at most
/// [`MAX_BATCH_SIZE`] long); results are in the order of `entry_ids`.
///
/// # Errors
/// [`SyncError`] when a key cannot be made, the call fails, or the server answers with
/// another number of results than it was asked for.
pub async fn mint_batch(
    channel: &Channel,
    entry_ids: &[String],
    key_type: KeyType,
    now: SystemTime,
) -> Result<Vec<(String, MintResult)>, SyncError> {
    const RPC: &str = "BatchNewX509SVID";
    let mut keys = Vec::with_capacity(entry_ids.len());
    let mut params = Vec::with_capacity(entry_ids.len());
    for id in entry_ids {
        let key = PrivateKey::generate(key_type)?;
        let csr = build_csr(&key)?;
        params.push(svidpb::NewX509svidParams { entry_id: id.clone(), csr });
        keys.push(key);
    }
    let mut client = svidpb::svid_client::SvidClient::new(channel.clone());
    let resp = client
        .batch_new_x509svid(svidpb::BatchNewX509svidRequest { params })
        .await
        .map_err(|status| SyncError::rpc(RPC, status))?
        .into_inner();
    if resp.results.len() != entry_ids.len() {
        return Err(SyncError::protocol(
            RPC,
            format!("{} results for {} requests", resp.results.len(), entry_ids.len()),
        ));
    }
    let mut out = Vec::with_capacity(entry_ids.len());
    for ((id, key), result) in entry_ids.iter().zip(keys).zip(resp.results) {
        let status = result.status.unwrap_or_default();
        let svid = match (status.code, result.svid) {
            (0, Some(svid)) if !svid.cert_chain.is_empty() => svid,
            (0, _) => {
                out.push((
                    id.clone(),
                    MintResult::Refused { code: 13, message: "no SVID in the result".into() },
                ));
                continue;
            }
            (code, _) => {
                out.push((id.clone(), MintResult::Refused { code, message: status.message }));
                continue;
            }
        };
        let expires_at =
            UNIX_EPOCH + Duration::from_secs(u64::try_from(svid.expires_at).unwrap_or(0));
        let rotate_at = rotation_time(now, expires_at, fastrand::f64() * 2.0 - 1.0);
        out.push((
            id.clone(),
            MintResult::Minted(MintedSvid {
                chain: svid.cert_chain,
                private_key: Arc::new(Zeroizing::new(key.pkcs8_der().to_vec())),
                issued_at: now,
                expires_at,
                rotate_at,
            }),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_at_half_life_moved_by_at_most_a_tenth_of_it() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(3600);
        let at = |j| rotation_time(start, end, j).duration_since(start).unwrap().as_secs();
        assert_eq!(at(0.0), 1800);
        assert_eq!(at(1.0), 1980);
        assert_eq!(at(-1.0), 1620);
        assert_eq!(at(7.0), 1980);
        // An SVID that expires before it was issued is due at once.
        assert_eq!(rotation_time(end, start, 0.5), end);
    }
}
