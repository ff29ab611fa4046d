//! The invariants a chaos round must keep, checked on what the round observed.
//!
//! Pure functions over plain data, so the checker itself is tested on made-up observations
//! (a checker that cannot fail proves nothing). An *execution* is a trace a handler run left:
//! an output on the output topic (the publisher fixture writes one per event, naming the source
//! event, its version, and carrying the `event-id` the host derived from the source id and the
//! handler's name — which tells which host ran it) or a dead letter (its `kasm-dlq-handler`).
//!
//! The invariants:
//! - **nothing lost**: every produced event id has an output or a dead letter;
//! - **no commit ahead of finished work**: at every snapshot, every source offset below the
//!   committed offset has an output or dead letter written *before* the snapshot;
//! - **no run for an event the ledger had recorded**: after a host stopped, nothing that host's
//!   ledger held at that moment runs again on that host; and nothing whose offset was committed
//!   runs again on any host;
//! - **dead letters complete**: every dead letter names its source record correctly and carries
//!   every `kasm-dlq-*` header with a sensible value;
//! - **swaps take effect**: after a deploy answered 200, only the records already in flight (one
//!   per partition) may still finish on the old version;
//! - **the end**: when the round is over the committed offsets are the end offsets, and every
//!   event id is in some host's ledger.

use std::collections::{HashMap, HashSet};

use crate::broker::Got;

/// Where an execution left its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// The output topic.
    Output,
    /// The dead-letter topic.
    DeadLetter,
}

/// One trace of a handler run.
#[derive(Debug, Clone)]
pub struct Exec {
    /// The source event id.
    pub event_id: String,
    /// The handler (host) that ran it.
    pub handler: String,
    /// Output or dead letter.
    pub sink: Sink,
    /// Partition of the trace in its topic.
    pub partition: i32,
    /// Offset of the trace in its topic.
    pub offset: i64,
    /// The component version that wrote an output (`v1`, `v2`); none for a dead letter.
    pub version: Option<String>,
}

/// One record of the source topic.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Its `event-id` header.
    pub event_id: String,
    /// Made to fail (its output topic is not granted): it must be dead-lettered, never output.
    pub poison: bool,
}

/// What one host's ledger held for the round's event ids, read while that host was stopped.
#[derive(Debug, Clone)]
pub struct LedgerSnapshot {
    /// The host's handler name.
    pub handler: String,
    /// Event ids recorded.
    pub recorded: HashSet<String>,
}

/// Committed offsets, then the ends of the output and dead-letter topics (see `observe`).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken (for messages).
    pub label: String,
    /// Committed offset per source partition, if it could be read.
    pub committed: Option<HashMap<i32, i64>>,
    /// End offset per output partition, read after `committed`.
    pub out_end: HashMap<i32, i64>,
    /// End offset per dead-letter partition, read after `committed`.
    pub dlq_end: HashMap<i32, i64>,
    /// A stopped host's ledger.
    pub ledger: Option<LedgerSnapshot>,
}

impl Snapshot {
    /// Whether `x` was written after this snapshot.
    fn after(&self, x: &Exec) -> bool {
        let ends = match x.sink {
            Sink::Output => &self.out_end,
            Sink::DeadLetter => &self.dlq_end,
        };
        ends.get(&x.partition).is_some_and(|e| x.offset >= *e)
    }
}

/// A deploy that answered 200, with the output ends read just before the request and right
/// after the answer: outputs between the two may come from either version (the swap happened
/// somewhere in between), outputs after the second must come from the new one.
#[derive(Debug, Clone)]
pub struct Swap {
    /// Handler deployed to.
    pub handler: String,
    /// The version it now runs.
    pub version: String,
    /// End offset per output partition before the request.
    pub out_before: HashMap<i32, i64>,
    /// End offset per output partition after the answer.
    pub out_end: HashMap<i32, i64>,
}

/// Everything a round observed.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// The source topic.
    pub sources: Vec<SourceRecord>,
    /// Outputs and dead letters.
    pub execs: Vec<Exec>,
    /// In the order taken.
    pub snapshots: Vec<Snapshot>,
    /// In the order made.
    pub swaps: Vec<Swap>,
    /// Committed offsets after the round drained and every host stopped.
    pub final_committed: HashMap<i32, i64>,
    /// Records one host may have in flight at once (its partition workers, each up to its
    /// `max_batch`: the batch in hand).
    pub in_flight: usize,
}

/// Counts and violations of a round.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Distinct event ids produced.
    pub produced: usize,
    /// Of which made to fail.
    pub poison: usize,
    /// Event ids with an output.
    pub handled: usize,
    /// Event ids with a dead letter.
    pub dead_lettered: usize,
    /// Executions beyond the first per event id (allowed ones: crash windows, rebalances).
    pub repeats: usize,
    /// Each violation, described.
    pub violations: Vec<String>,
}

/// At most this many examples per kind of violation in one snapshot.
const EXAMPLES: usize = 5;

/// Check `o` against every invariant.
pub fn check(o: &Observation) -> Verdict {
    let mut v = Verdict::default();
    let mut offsets_of: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
    let mut by_pos: HashMap<(i32, i64), &SourceRecord> = HashMap::new();
    let mut source_end: HashMap<i32, i64> = HashMap::new();
    let mut poison: HashSet<&str> = HashSet::new();
    for s in &o.sources {
        offsets_of
            .entry(&s.event_id)
            .or_default()
            .push((s.partition, s.offset));
        by_pos.insert((s.partition, s.offset), s);
        let e = source_end.entry(s.partition).or_insert(0);
        *e = (*e).max(s.offset + 1);
        if s.poison {
            poison.insert(&s.event_id);
        }
    }
    let mut execs_of: HashMap<&str, Vec<&Exec>> = HashMap::new();
    for x in &o.execs {
        execs_of.entry(&x.event_id).or_default().push(x);
    }
    v.produced = offsets_of.len();
    v.poison = poison.len();

    // Nothing lost; poison never output; counts.
    let mut lost: Vec<&str> = Vec::new();
    for id in offsets_of.keys().copied() {
        let xs = execs_of.get(id).map_or(&[][..], Vec::as_slice);
        if xs.is_empty() {
            lost.push(id);
            continue;
        }
        v.repeats += xs.len() - 1;
        if xs.iter().any(|x| x.sink == Sink::Output) {
            v.handled += 1;
            if poison.contains(id) {
                v.violations.push(format!(
                    "event {id} must fail (its output topic is not granted) but has an output"
                ));
            }
        }
        if xs.iter().any(|x| x.sink == Sink::DeadLetter) {
            v.dead_lettered += 1;
        }
    }
    if !lost.is_empty() {
        lost.sort_unstable();
        v.violations.push(format!(
            "{} events neither handled nor dead-lettered, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(EXAMPLES)]
        ));
    }
    for x in &o.execs {
        if !offsets_of.contains_key(x.event_id.as_str()) {
            v.violations.push(format!(
                "{:?} at {}/{} names event {:?}, which was never produced",
                x.sink, x.partition, x.offset, x.event_id
            ));
        }
    }

    for s in &o.snapshots {
        // Committed offsets never ahead of finished work.
        if let Some(committed) = &s.committed {
            let mut ahead: Vec<(i32, i64)> = Vec::new();
            for (p, c) in committed {
                let end = source_end.get(p).copied().unwrap_or(0);
                if *c > end {
                    v.violations.push(format!(
                        "[{}] committed offset {c} of partition {p} is past its end {end}",
                        s.label
                    ));
                }
                for off in 0..(*c).min(end) {
                    let Some(rec) = by_pos.get(&(*p, off)) else {
                        continue;
                    };
                    let done_before = execs_of
                        .get(rec.event_id.as_str())
                        .is_some_and(|xs| xs.iter().any(|x| !s.after(x)));
                    if !done_before {
                        ahead.push((*p, off));
                    }
                }
            }
            if !ahead.is_empty() {
                ahead.sort_unstable();
                v.violations.push(format!(
                    "[{}] {} committed offsets had no output or dead letter yet, e.g. {:?}",
                    s.label,
                    ahead.len(),
                    &ahead[..ahead.len().min(EXAMPLES)]
                ));
            }
            // Nothing committed runs again, on any host.
            let again: Vec<&Exec> = o
                .execs
                .iter()
                .filter(|x| s.after(x))
                .filter(|x| {
                    offsets_of.get(x.event_id.as_str()).is_some_and(|offs| {
                        offs.iter()
                            .all(|(p, off)| committed.get(p).is_some_and(|c| off < c))
                    })
                })
                .collect();
            if !again.is_empty() {
                v.violations.push(format!(
                    "[{}] {} runs of events already committed, e.g. {}",
                    s.label,
                    again.len(),
                    describe(&again)
                ));
            }
        }
        // Nothing a stopped host's ledger held runs again on that host.
        if let Some(l) = &s.ledger {
            let again: Vec<&Exec> = o
                .execs
                .iter()
                .filter(|x| {
                    x.handler == l.handler && s.after(x) && l.recorded.contains(&x.event_id)
                })
                .collect();
            if !again.is_empty() {
                v.violations.push(format!(
                    "[{}] {} runs on host {} of events its ledger had recorded, e.g. {}",
                    s.label,
                    again.len(),
                    l.handler,
                    describe(&again)
                ));
            }
        }
    }

    // Swaps: the new version from the next record on (records in flight excepted). An output
    // belongs to the last swap of its host requested before it was written; written while that
    // swap was under way, it may come from either version.
    let mut stale: Vec<Vec<&Exec>> = vec![Vec::new(); o.swaps.len()];
    for x in o.execs.iter().filter(|x| x.sink == Sink::Output) {
        let current = o.swaps.iter().enumerate().rev().find(|(_, s)| {
            s.handler == x.handler
                && s.out_before
                    .get(&x.partition)
                    .is_some_and(|e| x.offset >= *e)
        });
        if let Some((i, s)) = current
            && s.out_end.get(&x.partition).is_some_and(|e| x.offset >= *e)
            && x.version.as_deref() != Some(s.version.as_str())
        {
            stale[i].push(x);
        }
    }
    for (i, xs) in stale.iter().enumerate() {
        if xs.len() > o.in_flight {
            v.violations.push(format!(
                "swap {} of host {} to {}: {} later outputs on another version (at most {} in \
                 flight), e.g. {}",
                i + 1,
                o.swaps[i].handler,
                o.swaps[i].version,
                xs.len(),
                o.in_flight,
                describe(xs)
            ));
        }
    }

    // The end: everything committed, everything in some ledger.
    for (p, end) in &source_end {
        let c = o.final_committed.get(p).copied().unwrap_or(0);
        if c != *end {
            v.violations.push(format!(
                "at the end partition {p} is committed at {c}, its end is {end}"
            ));
        }
    }
    let mut last_ledger: HashMap<&str, &LedgerSnapshot> = HashMap::new();
    for s in &o.snapshots {
        if let Some(l) = &s.ledger {
            last_ledger.insert(l.handler.as_str(), l);
        }
    }
    if !last_ledger.is_empty() {
        let mut unrecorded: Vec<&str> = offsets_of
            .keys()
            .copied()
            .filter(|id| !last_ledger.values().any(|l| l.recorded.contains(*id)))
            .collect();
        if !unrecorded.is_empty() {
            unrecorded.sort_unstable();
            v.violations.push(format!(
                "{} events finished but in no host's ledger at the end, e.g. {:?}",
                unrecorded.len(),
                &unrecorded[..unrecorded.len().min(EXAMPLES)]
            ));
        }
    }
    v
}

fn describe(xs: &[&Exec]) -> String {
    xs.iter()
        .take(EXAMPLES)
        .map(|x| {
            format!(
                "{} ({:?} {}/{} by {})",
                x.event_id, x.sink, x.partition, x.offset, x.handler
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a dead letter must say.
#[derive(Debug, Clone, Copy)]
pub struct DlqExpect<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Consumer group.
    pub group: &'a str,
    /// Handlers that may have written it.
    pub handlers: &'a [&'a str],
    /// sha256 of the component versions deployed.
    pub components: &'a [String],
}

/// The error kinds a dead letter may name.
pub const ERROR_KINDS: [&str; 6] = [
    "retries-exhausted",
    "fatal",
    "trap",
    "timeout",
    "out-of-memory",
    "undecodable",
];

/// What is wrong with dead letter `d` (empty if nothing): every `kasm-dlq-*` header present and
/// sensible, naming a source record whose key, payload, headers and event id it carries.
pub fn check_dead_letter(
    d: &Got,
    sources: &HashMap<(i32, i64), &Got>,
    e: &DlqExpect<'_>,
) -> Vec<String> {
    let mut bad = Vec::new();
    let at = format!("dead letter {}/{}", d.partition, d.offset);
    let h = |k: &str| d.headers.get(&format!("kasm-dlq-{k}")).map(String::as_str);
    let number = |k: &str| h(k).and_then(|v| v.parse::<i64>().ok());
    for k in [
        "source-topic",
        "source-partition",
        "source-offset",
        "source-timestamp",
        "handler",
        "group",
        "component",
        "event-id",
        "attempts",
        "error-kind",
        "error-message",
        "first-failure",
        "last-failure",
    ] {
        if h(k).is_none_or(str::is_empty) {
            bad.push(format!("{at}: header kasm-dlq-{k} missing or empty"));
        }
    }
    if h("source-topic").is_some_and(|t| t != e.topic) {
        bad.push(format!(
            "{at}: source topic {:?}, not {}",
            h("source-topic"),
            e.topic
        ));
    }
    if h("group").is_some_and(|g| g != e.group) {
        bad.push(format!("{at}: group {:?}, not {}", h("group"), e.group));
    }
    if h("handler").is_some_and(|x| !e.handlers.contains(&x)) {
        bad.push(format!("{at}: unknown handler {:?}", h("handler")));
    }
    if h("component").is_some_and(|c| !e.components.iter().any(|k| k == c)) {
        bad.push(format!(
            "{at}: component {:?} was never deployed",
            h("component")
        ));
    }
    if h("error-kind").is_some_and(|k| !ERROR_KINDS.contains(&k)) {
        bad.push(format!("{at}: unknown error kind {:?}", h("error-kind")));
    }
    match (number("first-failure"), number("last-failure")) {
        (Some(f), Some(l)) if f > 0 && f <= l => {}
        (f, l) => bad.push(format!("{at}: failure times {f:?} .. {l:?}")),
    }
    let least = i64::from(h("error-kind") != Some("undecodable"));
    if number("attempts").is_none_or(|a| a < least) {
        bad.push(format!(
            "{at}: attempts {:?} (at least {least} for kind {:?})",
            h("attempts"),
            h("error-kind")
        ));
    }
    if let (Some(p), Some(o)) = (number("source-partition"), number("source-offset")) {
        match i32::try_from(p).ok().and_then(|p| sources.get(&(p, o))) {
            None => bad.push(format!("{at}: names source {p}/{o}, which does not exist")),
            Some(src) => {
                let id = src.headers.get("event-id").map(String::as_str);
                if id != h("event-id") {
                    bad.push(format!(
                        "{at}: event id {:?}, the source record's is {id:?}",
                        h("event-id")
                    ));
                }
                if src.key != d.key || src.payload != d.payload {
                    bad.push(format!(
                        "{at}: key or payload differs from the source record"
                    ));
                }
                for (k, val) in &src.headers {
                    if d.headers.get(k) != Some(val) {
                        bad.push(format!("{at}: source header {k} not kept"));
                    }
                }
            }
        }
    }
    bad
}
