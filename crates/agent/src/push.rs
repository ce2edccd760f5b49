//! Push sync, beyond SPIRE: against a ward server the agent holds the server's
//! `ward.agent.v1.AgentWatch/Watch` stream, and the server says on it when what the agent
//! receives (its authorized entries, its bundles) changed, as the change commits. The SVID
//! manager then syncs at once, so a change reaches workloads in milliseconds, and while the
//! stream is healthy its periodic poll slows to [`PushConfig::poll_interval`] (a safety net).
//!
//! [`PushWatcher::run`] owns the stream and publishes a [`PushState`]:
//! - `healthy` once the stream's first event arrived; false again as soon as the stream
//!   breaks, ends, or misses heartbeats for [`PushConfig::heartbeat`] × 3;
//! - `sync_requests`, bumped for the first event of every stream (changes may have committed
//!   before it was in place) and for every event saying entries or bundles changed. The
//!   watch channel holds only the latest state, so a burst of events costs one sync.
//!
//! A server without the service (spire-server answers `Unimplemented`) is not asked again on
//! that channel: the agent polls every `sync_interval`, as spire-agent does. A new channel
//! (the agent SVID rotated) is asked once more. A broken stream is opened again after an
//! exponential backoff with jitter ([`crate::manager::backoff`]); a stream the server ended
//! cleanly (it ages streams out so agents spread over replicas) is opened again at once.

use std::time::Duration;

use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;
use ward_proto::ward::agent::v1::agent_watch_client::AgentWatchClient;
use ward_proto::ward::agent::v1::{WatchEvent, WatchRequest};

use crate::manager::backoff;

/// Push sync's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushConfig {
    /// The periodic sync's interval while the stream is healthy (never shorter than
    /// `sync_interval`). Default 30 s (`push_sync_poll_interval`).
    pub poll_interval: Duration,
    /// The heartbeat interval asked of the server; three missed heartbeats mark the stream
    /// dead. Default 15 s.
    pub heartbeat: Duration,
    /// The first wait before opening a broken stream again; it doubles per failure up to
    /// `max_backoff`. Default 1 s.
    pub min_backoff: Duration,
    /// The longest wait before opening a broken stream again. Default 60 s.
    pub max_backoff: Duration,
}

/// The default `push_sync_poll_interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            poll_interval: DEFAULT_POLL_INTERVAL,
            heartbeat: Duration::from_secs(15),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// What the watcher tells the SVID manager.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushState {
    /// A stream is open and alive: the manager may poll at the slow interval.
    pub healthy: bool,
    /// Bumped whenever the server asked for a sync; the manager syncs when it moved.
    pub sync_requests: u64,
    /// The server answered `Unimplemented` on the current channel (a spire-server).
    pub unsupported: bool,
}

/// Holds the watch stream; see the module docs.
#[derive(Debug)]
pub struct PushWatcher {
    config: PushConfig,
    channels: watch::Receiver<Channel>,
    state: watch::Sender<PushState>,
}

/// How one stream ended.
enum Ended {
    /// The server ended it cleanly: open another at once.
    Clean,
    /// The channel changed: open another on the new one at once.
    NewChannel,
    /// It broke: open another after a backoff.
    Broken,
}

impl PushWatcher {
    /// A watcher over the channel `channels` holds (it follows changes) and the receiver of
    /// its state.
    pub fn new(
        config: PushConfig,
        channels: watch::Receiver<Channel>,
    ) -> (Self, watch::Receiver<PushState>) {
        let (state, rx) = watch::channel(PushState::default());
        (Self { config, channels, state }, rx)
    }

    /// Runs until every receiver of its state is gone (or the task is aborted).
    pub async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            if self.state.is_closed() {
                return;
            }
            let channel = self.channels.borrow_and_update().clone();
            let ended = match self.open(channel).await {
                Ok(stream) => {
                    let ended = self.follow(stream, &mut failures).await;
                    self.state.send_if_modified(|s| std::mem::replace(&mut s.healthy, false));
                    ended
                }
                Err(status) if status.code() == Code::Unimplemented => {
                    tracing::info!(
                        "the server has no push stream (not a ward server); polling every sync_interval"
                    );
                    self.state.send_modify(|s| s.unsupported = true);
                    // Not asked again on this channel; a new one (SVID rotation) is.
                    if self.channels.changed().await.is_err() {
                        return;
                    }
                    self.state.send_modify(|s| s.unsupported = false);
                    continue;
                }
                Err(status) => {
                    tracing::debug!(code = ?status.code(), error = %status.message(), "could not open the push stream");
                    Ended::Broken
                }
            };
            match ended {
                Ended::Clean | Ended::NewChannel => {}
                Ended::Broken => {
                    failures = failures.saturating_add(1);
                    let wait = backoff(self.config.min_backoff, self.config.max_backoff, failures);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        changed = self.channels.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }

    async fn open(&self, channel: Channel) -> Result<tonic::Streaming<WatchEvent>, tonic::Status> {
        let heartbeat_seconds =
            u32::try_from(self.config.heartbeat.as_secs().max(1)).unwrap_or(u32::MAX);
        let req = WatchRequest { heartbeat_seconds };
        Ok(AgentWatchClient::new(channel).watch(req).await?.into_inner())
    }

    /// Follows one stream until it ends; resets `failures` once it delivered an event.
    async fn follow(
        &mut self,
        mut stream: tonic::Streaming<WatchEvent>,
        failures: &mut u32,
    ) -> Ended {
        let silence = self.config.heartbeat.saturating_mul(3);
        let mut delivered = false;
        loop {
            let message = tokio::select! {
                m = tokio::time::timeout(silence, stream.message()) => m,
                changed = self.channels.changed() => {
                    return if changed.is_ok() { Ended::NewChannel } else { Ended::Clean };
                }
            };
            match message {
                Ok(Ok(Some(event))) => {
                    *failures = 0;
                    delivered = true;
                    let sync = event.initial || event.entries_changed || event.bundles_changed;
                    if event.initial {
                        tracing::info!(revision = event.revision, "push stream open");
                    } else if sync {
                        tracing::debug!(
                            revision = event.revision,
                            entries = event.entries_changed,
                            bundles = event.bundles_changed,
                            "server pushed a change"
                        );
                    }
                    self.state.send_if_modified(|s| {
                        let was = *s;
                        s.healthy = true;
                        if sync {
                            s.sync_requests = s.sync_requests.wrapping_add(1);
                        }
                        *s != was
                    });
                }
                // A stream that ends before its first event is treated as broken, so a
                // server that keeps doing so is not asked in a tight loop.
                Ok(Ok(None)) => return if delivered { Ended::Clean } else { Ended::Broken },
                Ok(Err(status)) => {
                    tracing::debug!(code = ?status.code(), error = %status.message(), "push stream broke");
                    return Ended::Broken;
                }
                Err(_) => {
                    tracing::warn!(?silence, "push stream silent past its heartbeats; reopening");
                    return Ended::Broken;
                }
            }
        }
    }
}
