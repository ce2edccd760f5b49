//! Persistence off the driver's thread: the log's sync thread, the messages each ready
//! holds back until the sync that covers it is reported, and the flushes made on the
//! driver's thread instead (see the driver's module documentation, step 4).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use raft::StateRole;
use raft::eraftpb::{Message, MessageType};

use super::{Driver, Fatal, add_elapsed};
use crate::config::StartError;
use crate::handle::Shared;
use crate::log_store::{LogStore, LogStoreError, PendingSync};
use crate::transport::NodeId;

/// A sync the log's sync thread finished: the number of the last ready it covers, and how
/// it went.
pub(super) type Synced = (u64, Result<(), LogStoreError>);

/// The thread that makes the log durable while the driver goes on (see the module
/// documentation, step 4).
pub(super) struct SyncThread {
    jobs: Option<Sender<(u64, PendingSync)>>,
    pub(super) done: Receiver<Synced>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SyncThread {
    pub(super) fn start(id: NodeId, shared: Arc<Shared>) -> Result<Self, StartError> {
        let (jobs, jobs_rx) = crossbeam_channel::unbounded::<(u64, PendingSync)>();
        let (done_tx, done) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name(format!("raft-sync-{id}"))
            .spawn(move || {
                while let Ok(mut job) = jobs_rx.recv() {
                    // A later sync covers everything an earlier one does.
                    while let Ok(later) = jobs_rx.try_recv() {
                        job = later;
                    }
                    let (number, sync) = job;
                    let start = Instant::now();
                    let result = sync();
                    add_elapsed(&shared.persist_ns, start);
                    shared.flushes.fetch_add(1, Ordering::Relaxed);
                    if done_tx.send((number, result)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| StartError::Thread(e.to_string()))?;
        Ok(Self { jobs: Some(jobs), done, thread: Some(thread) })
    }

    pub(super) fn submit(&self, number: u64, sync: PendingSync) -> Result<(), Fatal> {
        let sent = self.jobs.as_ref().is_some_and(|j| j.send((number, sync)).is_ok());
        if sent { Ok(()) } else { Err(Fatal::Sync) }
    }

    /// Lets the thread finish the sync it runs, if any, and end.
    pub(super) fn stop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A ready's messages that wait for its entries (or an earlier ready's) to be durable.
pub(super) struct Held {
    pub(super) number: u64,
    /// Whether this ready wrote something a sync must cover (else it waits only for the
    /// readies before it).
    pub(super) needs_sync: bool,
    pub(super) messages: Vec<Message>,
}

impl<L: LogStore> Driver<L> {
    /// Sends at once those of a ready's held-back messages that promise nothing about this
    /// replica's log (a proposal or read forwarded to the leader, an answer to a
    /// heartbeat, a pre-vote request) and returns the rest, which must wait for the sync:
    /// answers to appends and to votes (raft-rs holds back every message of a replica that
    /// does not lead; etcd's raft holds back only these three kinds, `msgsAfterAppend`).
    pub(super) fn send_all_but_promises(&mut self, messages: Vec<Message>) -> Vec<Message> {
        let (later, now): (Vec<Message>, Vec<Message>) = messages.into_iter().partition(|m| {
            matches!(
                m.get_msg_type(),
                MessageType::MsgAppendResponse
                    | MessageType::MsgRequestVoteResponse
                    | MessageType::MsgRequestPreVoteResponse
            )
        });
        self.send(now);
        later
    }

    /// Makes everything written durable before a replica that does not lead, and is the
    /// only voter, is ticked or stepped: raft-rs then goes from follower to leader inside
    /// one call, with no ready in between, and requires its whole log to be durable when it
    /// becomes leader (`become_leader` asserts it). Elsewhere a candidate's term change is
    /// a ready of its own, synced on the driver thread.
    pub(super) fn persist_before_leading(&mut self) -> Result<(), Fatal> {
        // Promotable: a voter; with one voter in all, the only one.
        if self.held.is_empty()
            || self.raw.raft.state == StateRole::Leader
            || !self.raw.raft.prs().is_singleton()
            || !self.raw.raft.promotable()
        {
            return Ok(());
        }
        let last = self.held.back().map(|h| h.number);
        self.sync_here()?;
        if let Some(n) = last {
            self.raw.on_persist_ready(n);
        }
        Ok(())
    }

    /// Advances a ready whose persistence the sync thread reports later
    /// ([`Driver::on_synced`]).
    pub(super) fn advance_async(&mut self, mut rd: raft::Ready) {
        for rs in rd.take_read_states() {
            self.on_read_state(&rs.request_ctx, rs.index);
        }
        self.raw.advance_append_async(rd);
        self.raw.advance_apply();
    }

    /// Flushes the log on this thread: everything written so far is durable, so the
    /// messages earlier readies held back leave (raft learns those readies are durable
    /// from the `advance` of the ready being handled, which counts every ready before it).
    pub(super) fn sync_here(&mut self) -> Result<(), Fatal> {
        let start = Instant::now();
        self.raw.mut_store().log.flush()?;
        add_elapsed(&self.shared.persist_ns, start);
        self.shared.flushes.fetch_add(1, Ordering::Relaxed);
        for h in std::mem::take(&mut self.held) {
            self.send(h.messages);
        }
        Ok(())
    }

    /// The sync thread made readies up to `number` durable: their held messages leave, in
    /// order, and raft counts them persisted (a leader may then commit). A report behind
    /// a flush made here since finds nothing left to release.
    pub(super) fn on_synced(&mut self, (number, result): Synced) -> Result<(), Fatal> {
        result?;
        let mut upto = None;
        while let Some(h) = self.held.front() {
            if h.needs_sync && h.number > number {
                break;
            }
            if let Some(h) = self.held.pop_front() {
                upto = Some(h.number);
                self.send(h.messages);
            }
        }
        if let Some(n) = upto {
            self.raw.on_persist_ready(n);
        }
        Ok(())
    }
}
