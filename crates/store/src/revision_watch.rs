//! [`RevisionWatch`]: wakes a reader when this store's revision moves, so a server can tell
//! its agents about a change as soon as the local apply made it readable.
//!
//! Every replica applies the same log, so every replica's watch moves through the same
//! revisions; a reader never needs the leader. The watch holds only the latest revision:
//! a reader that wakes late sees where the store is now, never a queue of past revisions.

use tokio::sync::watch;

/// The sending side, held by the store.
#[derive(Debug)]
pub(crate) struct RevisionSender(watch::Sender<u64>);

impl RevisionSender {
    pub(crate) fn new(revision: u64) -> Self {
        Self(watch::Sender::new(revision))
    }

    /// Publishes `revision` if it differs from the last one published.
    pub(crate) fn publish(&self, revision: u64) {
        self.0.send_if_modified(|current| {
            let moved = *current != revision;
            *current = revision;
            moved
        });
    }

    pub(crate) fn subscribe(&self) -> RevisionWatch {
        RevisionWatch(self.0.subscribe())
    }
}

/// Follows the store's revision (see [`crate::Store::watch_revision`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct RevisionWatch(watch::Receiver<u64>);

impl RevisionWatch {
    /// The latest revision published (reading it marks it seen).
    pub fn current(&mut self) -> u64 {
        *self.0.borrow_and_update()
    }

    /// Waits until a revision not yet seen through this watch is published and returns it;
    /// `None` once the store is gone.
    pub async fn changed(&mut self) -> Option<u64> {
        self.0.changed().await.ok()?;
        Some(*self.0.borrow_and_update())
    }
}
