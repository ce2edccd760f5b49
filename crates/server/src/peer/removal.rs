//! [`RemovalWatch`]: how a running replica finds out it was removed from its cluster.
//!
//! A removed replica learns of its removal by applying the membership change that removes it
//! (the leader sends the commit to every member of the old membership). A replica joining
//! with an old node id may replay an earlier removal of that id from the log before it
//! reaches the entry that added it again, so the removal counts only once this replica has
//! been a member, has applied everything it knows to be committed, and stays out of the
//! membership for [`REMOVAL_GRACE`].

use std::time::{Duration, Instant};

use ward_cluster::ClusterStatus;

/// How long a replica must stay outside the membership it applied before it stops.
pub const REMOVAL_GRACE: Duration = Duration::from_secs(3);

/// Follows a replica's status to tell when it was removed.
#[derive(Debug, Default)]
pub struct RemovalWatch {
    was_member: bool,
    out_since: Option<Instant>,
}

impl RemovalWatch {
    /// Takes one status seen at `now`; the sentence to stop with once the replica was removed.
    pub fn observe(&mut self, s: &ClusterStatus, now: Instant) -> Option<String> {
        let member = s.voters.contains(&s.node_id) || s.learners.contains(&s.node_id);
        if member {
            self.was_member = true;
            self.out_since = None;
            return None;
        }
        if !self.was_member || s.applied < s.commit {
            self.out_since = None;
            return None;
        }
        let since = *self.out_since.get_or_insert(now);
        (now.duration_since(since) >= REMOVAL_GRACE).then(|| removed_sentence(s.node_id))
    }
}

/// What a removed replica stops (or refuses to start) with.
pub fn removed_sentence(node: u64) -> String {
    format!(
        "replica {node} was removed from the cluster; it stops serving. To bring it back, \
         empty its data directory and join it with a new credential (docs/cluster.md)"
    )
}

/// Resolves with [`removed_sentence`] once the replica behind `handle` was removed; never
/// otherwise.
pub async fn removed(handle: &ward_cluster::ClusterHandle) -> String {
    let mut watch = RemovalWatch::default();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(s) = handle.status().await
            && let Some(sentence) = watch.observe(&s, Instant::now())
        {
            return sentence;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_cluster::Role;

    fn status(voters: &[u64], applied: u64, commit: u64) -> ClusterStatus {
        ClusterStatus {
            node_id: 3,
            role: Role::Follower,
            term: 2,
            leader_id: Some(1),
            commit,
            applied,
            first_index: 1,
            last_index: commit,
            last_term: 2,
            voters: voters.to_vec(),
            learners: Vec::new(),
            progress: Vec::new(),
            snapshot_index: 0,
            slow_cycles: Default::default(),
            slow_syncs: Default::default(),
            election_timeout: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn a_member_left_out_past_the_grace_is_removed() {
        let t = Instant::now();
        let mut w = RemovalWatch::default();
        assert_eq!(w.observe(&status(&[1, 2, 3], 10, 10), t), None);
        assert_eq!(w.observe(&status(&[1, 2], 11, 11), t), None);
        let later = t + REMOVAL_GRACE;
        assert_eq!(w.observe(&status(&[1, 2], 11, 11), later), Some(removed_sentence(3)));
    }

    #[test]
    fn a_replica_never_seen_as_a_member_or_still_applying_is_not_removed() {
        let t = Instant::now();
        let mut fresh = RemovalWatch::default();
        assert_eq!(fresh.observe(&status(&[1, 2], 5, 5), t), None);
        assert_eq!(fresh.observe(&status(&[1, 2], 5, 5), t + REMOVAL_GRACE * 2), None);
        let mut replaying = RemovalWatch::default();
        replaying.observe(&status(&[1, 3], 4, 9), t);
        assert_eq!(replaying.observe(&status(&[1], 6, 9), t + REMOVAL_GRACE * 2), None);
        // Added again before the grace ends: not removed.
        assert_eq!(replaying.observe(&status(&[1], 9, 9), t + REMOVAL_GRACE * 2), None);
        assert_eq!(replaying.observe(&status(&[1, 3], 12, 12), t + REMOVAL_GRACE * 3), None);
        assert_eq!(replaying.observe(&status(&[1, 3], 12, 12), t + REMOVAL_GRACE * 9), None);
    }
}
