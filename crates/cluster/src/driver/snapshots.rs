//! Snapshots on the driver's thread: installing one raft hands us (pulling its state from
//! another replica) and compacting the log once the store has made it durable.

use std::time::{Duration, Instant};

use raft::eraftpb::{Snapshot, SnapshotMetadata};
use ward_store::StoreError;

use super::{Driver, Fatal};
use crate::log_store::LogStore;
use crate::transport::{NodeId, SnapshotDescriptor};

impl<L: LogStore> Driver<L> {
    pub(super) fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), Fatal> {
        let meta = snap.get_metadata().clone();
        let descriptor =
            SnapshotDescriptor::decode(&snap.data).map_err(|e| Fatal::Snapshot(e.to_string()))?;
        tracing::info!(
            node_id = self.config.node_id,
            index = meta.index,
            term = meta.term,
            "installing a snapshot"
        );
        if self.store.last_applied() < meta.index {
            self.pull_snapshot(&descriptor, &meta)?;
        }
        self.raw.mut_store().log.install_snapshot(&meta)?;
        self.raw.mut_store().log.flush()?;
        self.raw.mut_store().applied = (meta.index, meta.term);
        self.raw.mut_store().applied_conf = meta.get_conf_state().clone();
        Ok(())
    }

    fn pull_snapshot(
        &mut self,
        descriptor: &SnapshotDescriptor,
        meta: &SnapshotMetadata,
    ) -> Result<(), Fatal> {
        let Some(source) = self.snapshots.clone() else {
            return Err(Fatal::Snapshot("no snapshot source configured".into()));
        };
        // Any replica that has applied that far can serve it: the sender first, then
        // the other members.
        let mut candidates: Vec<NodeId> = self.snapshot_from.into_iter().collect();
        let cs = meta.get_conf_state();
        for id in cs.voters.iter().chain(cs.learners.iter()) {
            if *id != self.config.node_id && !candidates.contains(id) {
                candidates.push(*id);
            }
        }
        let deadline = Instant::now() + self.config.snapshot_pull_timeout;
        let mut last_error = String::from("no replica to pull from");
        let mut attempt = 0u32;
        while Instant::now() < deadline {
            for from in &candidates {
                let fut = source.fetch(*from, *descriptor);
                let runtime = self.runtime.clone();
                let result = runtime.block_on(fut);
                let mut stream = match result {
                    Ok(s) => s,
                    Err(e) => {
                        last_error = e.to_string();
                        continue;
                    }
                };
                let chunks = std::iter::from_fn(|| {
                    runtime
                        .block_on(futures::StreamExt::next(&mut stream))
                        .map(|r| r.map_err(|e| StoreError::BadSnapshot(e.to_string())))
                });
                match self.store.import_snapshot_stream(chunks) {
                    Ok(info) => {
                        tracing::info!(
                            node_id = self.config.node_id,
                            from,
                            index = info.applied,
                            "snapshot imported"
                        );
                        return Ok(());
                    }
                    Err(e) => last_error = e.to_string(),
                }
            }
            attempt += 1;
            tracing::warn!(node_id = self.config.node_id, error = %last_error, attempt, "snapshot pull failed; retrying");
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(Fatal::Snapshot(last_error))
    }

    /// Compacts the log once it holds more than the configured bytes, up to what the store
    /// has made durable (a restart replays the rest from the log). The store's flush that
    /// makes more of it durable runs on a thread of its own: on this one it held every
    /// proposal and apply up for as long as the database took to sync.
    pub(super) fn maybe_compact(&mut self) -> Result<(), Fatal> {
        // A flush that failed stops the replica as soon as it is known, whatever the log's
        // size is by then (an install may have emptied it).
        if self.compaction_flush.as_ref().is_some_and(std::thread::JoinHandle::is_finished) {
            self.join_compaction_flush()?;
        }
        let (_, bytes) = self.raw.store().log.size();
        if bytes <= self.config.compact_log_bytes {
            return Ok(());
        }
        // Everything at or below the durable index is on disk; the log must keep the rest.
        let upto = self
            .store
            .durable_applied()
            .min(self.raw.store().applied.0)
            .min(self.raw.raft.raft_log.committed);
        if upto >= self.raw.store().log.first_index() {
            let term = self.raw.store().log.term(upto)?;
            // The membership recorded is the applied one, which may be past `upto`'s; only
            // the index and term are read back (raft's own membership is the log's
            // membership record).
            let mut meta = SnapshotMetadata { index: upto, term, ..Default::default() };
            meta.set_conf_state(self.raw.store().applied_conf.clone());
            let log = &mut self.raw.mut_store().log;
            log.set_snapshot_meta(&meta)?;
            log.compact(upto)?;
            tracing::info!(node_id = self.config.node_id, index = upto, "raft log compacted");
            if self.raw.store().log.size().1 <= self.config.compact_log_bytes {
                return Ok(());
            }
        }
        if self.compaction_flush.is_none() {
            let store = self.store.clone();
            let flush =
                std::thread::Builder::new().name("ward-compact-flush".into()).spawn(move || {
                    let started = std::time::Instant::now();
                    let flushed = store.flush();
                    tracing::debug!(
                        took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "store flushed for a log compaction"
                    );
                    flushed
                });
            match flush {
                Ok(h) => self.compaction_flush = Some(h),
                // No thread to be had: flushed here, as before.
                Err(_) => self.store.flush()?,
            }
        }
        Ok(())
    }

    /// Waits for the flush [`Driver::maybe_compact`] started, if any; its failure is the
    /// replica's (as a flush on this thread was).
    pub(super) fn join_compaction_flush(&mut self) -> Result<(), Fatal> {
        match self.compaction_flush.take().map(std::thread::JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e.into()),
            Some(Err(_)) => {
                Err(StoreError::Engine("the flush before a log compaction panicked".into()).into())
            }
        }
    }
}
