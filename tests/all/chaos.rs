//! The chaos campaign and the soak run (issue #7), and the checker they rely on.
//!
//! `short_campaign_keeps_every_invariant` runs in `make test` (two rounds, every fault kind in
//! each); `make chaos` runs `full_campaign` (ignored here: ≥ 100 faults, 50,000 events) and
//! `make soak` runs `soak_levels_off` (ignored: an hour). `CHAOS_SEED` replays a plan.

use std::collections::HashMap;
use std::time::Duration;

use kasm_tests::broker::{Got, TestBroker};
use kasm_tests::chaos::check::{
    DlqExpect, Exec, LedgerSnapshot, Observation, Sink, Snapshot, SourceRecord, Swap, check,
    check_dead_letter,
};
use kasm_tests::chaos::group::{GroupConfig, GroupFault, run_group};
use kasm_tests::chaos::soak::{Sample, SoakConfig, levelled_off};
use kasm_tests::chaos::{CampaignConfig, FaultKind, Summary};

async fn campaign(cfg: CampaignConfig) -> Summary {
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || kasm_tests::chaos::run(&cfg, &rt))
        .await
        .unwrap()
}

fn assert_clean(s: &Summary, min_faults: usize) {
    let text = s.render();
    assert!(s.violations.is_empty(), "violations:\n{text}");
    assert!(s.faults_total() >= min_faults, "too few faults:\n{text}");
    for k in FaultKind::ALL {
        assert!(
            s.faults.get(&k).copied().unwrap_or(0) > 0,
            "no {} fault:\n{text}",
            k.name()
        );
    }
    assert!(
        s.handled + s.dead_lettered >= s.produced && s.produced > 0,
        "{text}"
    );
    assert!(s.poison > 0 && s.dead_lettered >= s.poison, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_campaign_keeps_every_invariant() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let s = campaign(CampaignConfig {
        rounds: 2,
        events: 1_200,
        faults_per_round: FaultKind::ALL.len(),
        seed,
        max_duration: Duration::from_secs(420),
        partitions: 4,
        summary_file: "short-summary.txt".into(),
    })
    .await;
    assert_clean(&s, 2 * FaultKind::ALL.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the multi-host campaign: `make chaos` (about 15 minutes)"]
async fn group_campaign() {
    // Three hosts in one group on the Kafka ledger: 50,000 events, 3 % of them business
    // duplicates, 24 faults (kills, rolling restarts, 3 → 1 → 3, wiped data folders).
    let cfg = GroupConfig {
        rounds: 4,
        events: 50_000,
        faults_per_round: 6,
        duplicates: 0.03,
        seed: rand::random(),
        max_duration: Duration::from_secs(40 * 60),
        partitions: 4,
        summary_file: "group-summary.txt".into(),
        kinds: GroupFault::ALL.to_vec(),
        leaves: true,
    }
    .from_env();
    let min_faults = cfg.rounds * cfg.faults_per_round.max(GroupFault::ALL.len());
    let (events, kinds) = (cfg.events, cfg.kinds.clone());
    let rt = tokio::runtime::Handle::current();
    let s = tokio::task::spawn_blocking(move || run_group(&cfg, TestBroker::from_env, &rt))
        .await
        .unwrap();
    s.assert_clean(&kinds, events, min_faults);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full campaign: `make chaos` (about 15 minutes)"]
async fn full_campaign() {
    let cfg = CampaignConfig {
        rounds: 10,
        events: 50_000,
        faults_per_round: 11,
        seed: 0,
        max_duration: Duration::from_secs(20 * 60),
        partitions: 4,
        summary_file: "summary.txt".into(),
    }
    .from_env();
    let min_faults = cfg.rounds * cfg.faults_per_round.max(FaultKind::ALL.len());
    let s = campaign(cfg).await;
    assert_clean(&s, min_faults);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an hour-scale run: `make soak` (SOAK_MINUTES to shorten)"]
async fn soak_levels_off() {
    let cfg = SoakConfig::from_env();
    let rt = tokio::runtime::Handle::current();
    let report = tokio::task::spawn_blocking(move || kasm_tests::chaos::soak::run(&cfg, &rt))
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{}", report.text);
}

// The checker, on made-up observations: each invariant it must report, and nothing on a clean
// round.

fn src(p: i32, o: i64, id: &str) -> SourceRecord {
    SourceRecord {
        partition: p,
        offset: o,
        event_id: id.into(),
        poison: false,
    }
}

fn out(id: &str, handler: &str, p: i32, o: i64) -> Exec {
    Exec {
        event_id: id.into(),
        handler: handler.into(),
        sink: Sink::Output,
        partition: p,
        offset: o,
        version: Some("v1".into()),
    }
}

fn snap(
    committed: &[(i32, i64)],
    out_end: &[(i32, i64)],
    ledger: Option<(&str, &[&str])>,
) -> Snapshot {
    Snapshot {
        label: "s".into(),
        committed: Some(committed.iter().copied().collect()),
        out_end: out_end.iter().copied().collect(),
        dlq_end: [(0, 0)].into_iter().collect(),
        ledger: ledger.map(|(h, ids)| LedgerSnapshot {
            handler: h.into(),
            recorded: ids.iter().map(|s| (*s).to_owned()).collect(),
        }),
    }
}

/// Three events on one partition, each output once by host a, all committed and recorded.
fn clean() -> Observation {
    Observation {
        sources: vec![src(0, 0, "e0"), src(0, 1, "e1"), src(0, 2, "e2")],
        execs: vec![
            out("e0", "a", 0, 0),
            out("e1", "a", 0, 1),
            out("e2", "a", 0, 2),
        ],
        snapshots: vec![
            snap(&[(0, 1)], &[(0, 1)], None),
            snap(&[(0, 3)], &[(0, 3)], Some(("a", &["e0", "e1", "e2"]))),
        ],
        swaps: Vec::new(),
        final_committed: [(0, 3)].into_iter().collect(),
        in_flight: 1,
    }
}

#[test]
fn the_checker_passes_a_clean_round_and_counts_it() {
    let v = check(&clean());
    assert!(v.violations.is_empty(), "{:?}", v.violations);
    assert_eq!((v.produced, v.handled, v.repeats), (3, 3, 0));
}

#[test]
fn the_checker_reports_a_lost_event_and_an_unfinished_end() {
    let mut o = clean();
    o.execs.pop();
    o.final_committed.insert(0, 2);
    let v = check(&o);
    let all = v.violations.join("\n");
    assert!(
        all.contains("neither handled nor dead-lettered") && all.contains("e2"),
        "{all}"
    );
    assert!(all.contains("committed at 2, its end is 3"), "{all}");
}

#[test]
fn the_checker_reports_a_commit_ahead_of_finished_work() {
    let mut o = clean();
    // Committed up to 2 while only e0's output existed (output end 1).
    o.snapshots.push(snap(&[(0, 2)], &[(0, 1)], None));
    let v = check(&o);
    let all = v.violations.join("\n");
    assert!(all.contains("1 committed offsets had no output"), "{all}");
    assert!(all.contains("(0, 1)"), "names the offset: {all}");
}

#[test]
fn the_checker_reports_a_run_after_the_ledger_recorded_it_on_that_host_only() {
    let mut o = clean();
    // e1 runs again on host a after a's ledger held it (output end was 3).
    o.execs.push(out("e1", "a", 0, 3));
    // e2 runs again on host b: b's ledger never held it, but it was committed — also reported.
    o.execs.push(out("e2", "b", 0, 4));
    let v = check(&o);
    let all = v.violations.join("\n");
    assert!(
        all.contains("runs on host a of events its ledger had recorded") && all.contains("e1"),
        "{all}"
    );
    assert!(all.contains("runs of events already committed"), "{all}");
    assert_eq!(v.repeats, 2);

    // A repeat of an event neither committed nor recorded (a crash window) is allowed.
    let mut o = clean();
    o.snapshots = vec![
        snap(&[(0, 1)], &[(0, 3)], Some(("a", &["e0", "e1"]))),
        snap(&[(0, 3)], &[(0, 4)], Some(("a", &["e0", "e1", "e2"]))),
    ];
    o.execs.push(out("e2", "a", 0, 3));
    let v = check(&o);
    assert!(v.violations.is_empty(), "{:?}", v.violations);
    assert_eq!(v.repeats, 1);
}

#[test]
fn the_checker_reports_a_poison_event_with_an_output_and_a_stale_swap() {
    let mut o = clean();
    o.sources[0].poison = true;
    o.swaps.push(Swap {
        handler: "a".into(),
        version: "v2".into(),
        out_before: [(0, 0)].into_iter().collect(),
        out_end: [(0, 0)].into_iter().collect(),
    });
    let v = check(&o);
    let all = v.violations.join("\n");
    assert!(all.contains("event e0 must fail"), "{all}");
    // Three v1 outputs after the swap, one may be in flight.
    assert!(all.contains("3 later outputs on another version"), "{all}");
}

#[test]
fn outputs_written_while_a_swap_is_under_way_may_be_either_version() {
    let mut o = clean();
    // Requested when the output ended at 0, answered when it ended at 2: e0 and e1 were
    // written during the swap (v1 is fine), e2 after the answer.
    o.swaps.push(Swap {
        handler: "a".into(),
        version: "v2".into(),
        out_before: [(0, 0)].into_iter().collect(),
        out_end: [(0, 2)].into_iter().collect(),
    });
    o.execs[2].version = Some("v2".into());
    assert!(check(&o).violations.is_empty());
    // A later swap back to v1, requested at 3: e2 (at 2) still belongs to the first swap.
    o.swaps.push(Swap {
        handler: "a".into(),
        version: "v1".into(),
        out_before: [(0, 3)].into_iter().collect(),
        out_end: [(0, 3)].into_iter().collect(),
    });
    assert!(check(&o).violations.is_empty());
    // Two v1 outputs after the first answer: more than the one in flight.
    o.execs[2].version = Some("v1".into());
    o.execs.push(out("e2", "a", 0, 3));
    o.swaps.pop();
    let all = check(&o).violations.join("\n");
    assert!(all.contains("2 later outputs on another version"), "{all}");
}

fn got(p: i32, o: i64, headers: &[(&str, &str)]) -> Got {
    Got {
        partition: p,
        offset: o,
        key: Some(b"k".to_vec()),
        payload: b"{}".to_vec(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        timestamp_ms: None,
    }
}

#[test]
fn the_checker_reports_incomplete_dead_letters() {
    let source = got(1, 7, &[("event-id", "e7"), ("out-topic", "x")]);
    let sources: HashMap<(i32, i64), &Got> = [((1, 7), &source)].into_iter().collect();
    let components = vec!["ab".repeat(32)];
    let expect = DlqExpect {
        topic: "in",
        group: "g",
        handlers: &["a", "b"],
        components: &components,
    };
    let full = [
        ("event-id", "e7"),
        ("out-topic", "x"),
        ("kasm-dlq-source-topic", "in"),
        ("kasm-dlq-source-partition", "1"),
        ("kasm-dlq-source-offset", "7"),
        ("kasm-dlq-source-timestamp", "1700000000000"),
        ("kasm-dlq-handler", "a"),
        ("kasm-dlq-group", "g"),
        ("kasm-dlq-component", components[0].as_str()),
        ("kasm-dlq-event-id", "e7"),
        ("kasm-dlq-attempts", "1"),
        ("kasm-dlq-error-kind", "fatal"),
        ("kasm-dlq-error-message", "publish refused"),
        ("kasm-dlq-first-failure", "1700000000001"),
        ("kasm-dlq-last-failure", "1700000000001"),
    ];
    assert!(check_dead_letter(&got(0, 0, &full), &sources, &expect).is_empty());

    let without =
        |k: &str| -> Vec<(&str, &str)> { full.iter().copied().filter(|(h, _)| *h != k).collect() };
    let bad = check_dead_letter(
        &got(0, 0, &without("kasm-dlq-error-kind")),
        &sources,
        &expect,
    );
    assert!(
        bad.iter()
            .any(|b| b.contains("kasm-dlq-error-kind missing")),
        "{bad:?}"
    );
    let bad = check_dead_letter(&got(0, 0, &without("out-topic")), &sources, &expect);
    assert!(
        bad.iter().any(|b| b.contains("out-topic not kept")),
        "{bad:?}"
    );
    let mut wrong = full.to_vec();
    wrong[4] = ("kasm-dlq-source-offset", "8");
    let bad = check_dead_letter(&got(0, 0, &wrong), &sources, &expect);
    assert!(bad.iter().any(|b| b.contains("does not exist")), "{bad:?}");
}

fn samples(f: impl Fn(f64) -> (u64, u64)) -> Vec<Sample> {
    (0..60)
        .map(|i| {
            let (rss_kib, fds) = f(f64::from(i));
            Sample {
                at_s: f64::from(i) * 10.0,
                rss_kib,
                fds,
                threads: 20,
                produced: 0,
                lag: 0,
            }
        })
        .collect()
}

#[test]
fn soak_growth_that_levels_off_passes_and_steady_growth_fails() {
    // Warm-up then flat (with noise).
    let flat = samples(|i| {
        let warm = (i.min(15.0) * 4096.0) as u64;
        (60_000 + warm + (i as u64 % 3) * 300, 40 + (i as u64 % 2))
    });
    assert!(levelled_off(&flat).is_empty(), "{:?}", levelled_off(&flat));
    // 1 MiB more every sample, and a descriptor more every sample.
    let leak = samples(|i| (60_000 + (i * 1024.0) as u64, 40 + i as u64));
    let failures = levelled_off(&leak);
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        levelled_off(&[])
            .iter()
            .any(|f| f.contains("too few samples"))
    );
}
