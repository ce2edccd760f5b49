//! JWT-SVIDs on demand: `SVID/NewJWTSVID` when a workload asks, cached per (SPIFFE ID,
//! audience set) until half of the token's lifetime has passed (spire-compat §2.6).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tonic::transport::Channel;
use ward_core::{Clock, SpiffeId};
use ward_proto::spire::api::server::svid::v1 as svidpb;

use crate::cache::{JwtSvidError, JwtSvidFuture, JwtSvidSource, JwtSvidToken, X509Identity};

/// SPIRE's default `jwt_svid_cache_max_size`.
pub const DEFAULT_JWT_SVID_CACHE_MAX_SIZE: usize = 1000;

type Key = (SpiffeId, BTreeSet<String>);

#[derive(Clone)]
struct Cached {
    token: JwtSvidToken,
    issued_at: i64,
}

/// A [`JwtSvidSource`] that mints through the server and caches the tokens.
pub struct JwtSvids {
    channel: watch::Receiver<Channel>,
    clock: Arc<dyn Clock>,
    max_size: usize,
    cache: Mutex<HashMap<Key, Cached>>,
    minted: AtomicU64,
}

impl std::fmt::Debug for JwtSvids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvids").field("minted", &self.minted).finish_non_exhaustive()
    }
}

impl JwtSvids {
    /// A source that calls the server over the channel in `channel` and keeps at most
    /// `max_size` tokens (expired ones are dropped first, then the oldest).
    pub fn new(channel: watch::Receiver<Channel>, clock: Arc<dyn Clock>, max_size: usize) -> Self {
        Self { channel, clock, max_size, cache: Mutex::default(), minted: AtomicU64::new(0) }
    }

    /// How many JWT-SVIDs were minted (cache misses) so far.
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    fn cached(&self, key: &Key, now: i64) -> Option<JwtSvidToken> {
        let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = cache.get(key)?;
        // Fresh until half its lifetime has passed.
        let half = (c.token.expires_at - c.issued_at) / 2;
        (now < c.issued_at + half).then(|| c.token.clone())
    }

    fn store(&self, key: Key, value: Cached, now: i64) {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= self.max_size && !cache.contains_key(&key) {
            cache.retain(|_, c| c.token.expires_at > now);
            while cache.len() >= self.max_size.max(1) {
                let oldest = cache.iter().min_by_key(|(_, c)| c.issued_at).map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => cache.remove(&k),
                    None => break,
                };
            }
        }
        cache.insert(key, value);
    }

    async fn fetch(
        &self,
        identity: &X509Identity,
        audience: &[String],
    ) -> Result<JwtSvidToken, JwtSvidError> {
        let key: Key = (identity.spiffe_id.clone(), audience.iter().cloned().collect());
        let now = self.clock.unix_seconds();
        if let Some(token) = self.cached(&key, now) {
            return Ok(token);
        }
        let channel = self.channel.borrow().clone();
        let mut client = svidpb::svid_client::SvidClient::new(channel);
        let req = svidpb::NewJwtsvidRequest {
            entry_id: identity.entry_id.clone(),
            audience: audience.to_vec(),
        };
        let resp = client
            .new_jwtsvid(req)
            .await
            .map_err(|s| {
                JwtSvidError::Unavailable(format!("failed to fetch JWT SVID: {}", s.message()))
            })?
            .into_inner();
        let svid = resp
            .svid
            .ok_or_else(|| JwtSvidError::Unavailable("JWTSVID response missing SVID".into()))?;
        let problem = match () {
            () if svid.issued_at == 0 => Some("JWTSVID missing issued at"),
            () if svid.expires_at == 0 => Some("JWTSVID missing expires at"),
            () if svid.issued_at > svid.expires_at => Some("JWTSVID issued after it has expired"),
            () => None,
        };
        if let Some(p) = problem {
            return Err(JwtSvidError::Unavailable(p.into()));
        }
        self.minted.fetch_add(1, Ordering::Relaxed);
        let token = JwtSvidToken {
            spiffe_id: identity.spiffe_id.clone(),
            token: svid.token,
            hint: identity.hint.clone(),
            expires_at: svid.expires_at,
        };
        self.store(key, Cached { token: token.clone(), issued_at: svid.issued_at }, now);
        Ok(token)
    }
}

impl JwtSvidSource for JwtSvids {
    fn fetch_jwt_svid<'a>(
        &'a self,
        identity: &'a X509Identity,
        audience: &'a [String],
    ) -> JwtSvidFuture<'a> {
        Box::pin(self.fetch(identity, audience))
    }
}
