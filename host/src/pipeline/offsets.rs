//! Which offset of a partition may be committed.
//!
//! Kafka commits a position, not a set: committing offset `n` says "everything before `n` is
//! done". So the committable position is one past the highest *contiguous* done offset: if
//! offsets 10, 11 and 13 are done but 12 is still running, only 12 may be committed, and a
//! crash then redelivers 12 and 13 (13's redelivery is skipped by the ledger).
//!
//! Offsets are registered as they are dispatched — increasing, possibly with gaps (compacted
//! topics and transaction markers leave holes) — and marked done in any order. librdkafka can
//! also deliver a partition's records again from an earlier offset (a fetch restarted after an
//! error, records fetched before a rebalance): such a record is registered in its place (or
//! not at all if the position is already past it), never by dropping what was registered
//! after it, so the position can only pass offsets that were done.

use std::collections::VecDeque;

/// Tracks dispatched and done offsets of one partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// Dispatched offsets not yet committable, in increasing order, with their done flag.
    pending: VecDeque<(i64, bool)>,
    /// One past the highest contiguous done offset.
    position: Option<i64>,
    /// The last position sent in a commit (the broker may still refuse it).
    sent: Option<i64>,
    /// The last position the broker accepted.
    accepted: Option<i64>,
}

impl OffsetTracker {
    /// A record at `offset` was handed to the worker.
    pub fn dispatched(&mut self, offset: i64) {
        if self.pending.back().is_none_or(|(o, _)| *o < offset) {
            if self.position.is_none_or(|p| offset >= p) {
                self.pending.push_back((offset, false));
            }
            return;
        }
        // Delivered again from an earlier offset: one entry per offset, in order.
        if self.position.is_some_and(|p| offset < p) {
            return;
        }
        if let Err(i) = self.pending.binary_search_by_key(&offset, |(o, _)| *o) {
            self.pending.insert(i, (offset, false));
        }
    }

    /// The record at `offset` is done (handled, skipped or dead-lettered).
    pub fn done(&mut self, offset: i64) {
        if let Ok(i) = self.pending.binary_search_by_key(&offset, |(o, _)| *o) {
            self.pending[i].1 = true;
        }
        while let Some((o, true)) = self.pending.front().copied() {
            self.pending.pop_front();
            self.position = Some(o + 1);
        }
    }

    /// The position to commit, if it moved since the last commit sent.
    pub fn committable(&self) -> Option<i64> {
        match (self.position, self.sent) {
            (Some(p), Some(c)) if p <= c => None,
            (p, _) => p,
        }
    }

    /// One past the highest contiguous done offset, committed or not.
    pub fn position(&self) -> Option<i64> {
        self.position
    }

    /// The last position the broker accepted, if any.
    pub fn last_committed(&self) -> Option<i64> {
        self.accepted
    }

    /// A commit of `position` was sent.
    pub fn sent(&mut self, position: i64) {
        self.sent = Some(self.sent.map_or(position, |c| c.max(position)));
    }

    /// The broker accepted a commit of `position`.
    pub fn accepted(&mut self, position: i64) {
        self.accepted = Some(self.accepted.map_or(position, |c| c.max(position)));
        self.sent(position);
    }

    /// A commit of `position` failed (an asynchronous commit is reported after it was sent):
    /// unless a later commit was sent since, go back to the last accepted position, so that
    /// the next commit sends this one again.
    pub fn commit_failed(&mut self, position: i64) {
        if self.sent == Some(position) {
            self.sent = self.accepted;
        }
    }

    /// Records dispatched and not yet done.
    pub fn in_flight(&self) -> usize {
        self.pending.iter().filter(|(_, done)| !done).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_delivered_again_from_an_earlier_offset_never_let_the_position_pass_undone_work() {
        let mut t = OffsetTracker::default();
        for o in 10..=20 {
            t.dispatched(o);
        }
        for o in 10..=14 {
            t.done(o);
        }
        assert_eq!(t.position(), Some(15));
        // librdkafka starts the partition again at 12: 12..14 are done already, 15.. come again.
        for o in 12..=17 {
            t.dispatched(o);
        }
        t.done(16);
        t.done(17);
        assert_eq!(t.position(), Some(15), "15 is not done");
        t.done(15);
        assert_eq!(t.position(), Some(18), "18..20 are not done");
        for o in 18..=20 {
            t.done(o);
        }
        assert_eq!(t.position(), Some(21));
        // A record out of order in the middle is waited for too.
        t.dispatched(25);
        t.dispatched(23);
        t.done(25);
        assert_eq!(t.position(), Some(21));
        t.done(23);
        assert_eq!(t.position(), Some(26));
    }

    #[test]
    fn only_the_contiguous_prefix_is_committable() {
        let mut t = OffsetTracker::default();
        for o in [10, 11, 12, 13] {
            t.dispatched(o);
        }
        assert_eq!(t.committable(), None);
        t.done(11);
        assert_eq!(t.committable(), None, "10 is not done yet");
        t.done(10);
        assert_eq!(t.committable(), Some(12));
        t.done(13);
        assert_eq!(t.committable(), Some(12), "12 still runs");
        t.sent(12);
        assert_eq!(t.committable(), None);
        t.done(12);
        assert_eq!(t.committable(), Some(14));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_do_not_block() {
        let mut t = OffsetTracker::default();
        t.dispatched(5);
        t.dispatched(9);
        t.done(9);
        t.done(5);
        assert_eq!(t.committable(), Some(10));
    }

    #[test]
    fn a_failed_commit_is_sent_again() {
        let mut t = OffsetTracker::default();
        t.dispatched(0);
        t.done(0);
        t.sent(1);
        assert_eq!(t.committable(), None);
        assert_eq!(t.last_committed(), None, "sent, not yet accepted");
        t.commit_failed(1);
        assert_eq!(
            t.committable(),
            Some(1),
            "the failed position goes out again"
        );
        t.accepted(1);
        assert_eq!(t.last_committed(), Some(1));
        t.dispatched(1);
        t.done(1);
        t.sent(2);
        t.commit_failed(1);
        assert_eq!(t.committable(), None, "a later commit stands");
        t.commit_failed(2);
        assert_eq!(t.committable(), Some(2), "back to the accepted position");
        assert_eq!(
            t.last_committed(),
            Some(1),
            "a failed commit leaves what the broker holds"
        );
    }
}
