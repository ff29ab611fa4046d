//! The multi-host campaign: three `kasm` processes in one consumer group, each on a data folder
//! of its own, the default ledger (`ledger_store = "kafka"`), and the faults a Deployment's pods
//! meet — SIGKILL, a rolling restart by SIGTERM, scaling 3 → 1 → 3 onto new pods, and a host
//! whose data folder is deleted before it comes back.
//!
//! # What counts an execution
//!
//! The handler is `fixture-sql-http`, and every event asks it for two steps: POST the event's id
//! to a receiver in this process, then `INSERT INTO audit (event_id) VALUES ($1)` into a
//! PostgreSQL schema the three hosts share — with no `ON CONFLICT`, and no key on the table. The
//! POST is the fixture's record of each run; nothing can roll it back. The rows are the
//! handler's effects: a second row for an event is an effect applied twice.
//!
//! # When a run is a violation
//!
//! A *snapshot* reads the handler's ledger topic up to its end, then notes how many POSTs the
//! receiver has had. Every entry read was acknowledged before that count was taken, so a POST
//! for the entry's event that arrives after it is a run of an event whose ledger write had been
//! acknowledged: a violation, with no allowance. Snapshots are taken before and after every
//! fault and every half second while the round waits.
//!
//! Runs that the guarantees allow (a host killed after it ran a batch and before the batch's
//! ledger entries were acknowledged) are counted as repeats, not failed; their SQL rows must
//! still be there once, because the inbox is in the same transaction.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use rand::{Rng as _, SeedableRng as _};

use super::observe::{Committed, TopicLog};
use super::{BurstProducer, split};
use crate::broker::{Rec, TestBroker};
use crate::hostproc::{HostProcess, http_get};
use crate::receiver::Receiver;

/// The handler's name on every host (replicas of one Deployment).
pub const HANDLER: &str = "audit";

/// Hosts in the group when no fault holds one down.
pub const HOSTS: usize = 3;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupFault {
    /// SIGKILL one host, start it again on the same data folder.
    Sigkill,
    /// SIGTERM each host in turn; each must exit 0; start it again and wait until it is ready
    /// before the next one.
    RollingRestart,
    /// SIGTERM two hosts (3 → 1), then start two new hosts on empty data folders (1 → 3).
    ScaleDownUp,
    /// Stop one host (SIGKILL or SIGTERM), delete its data folder, start it again.
    WipedRestart,
}

impl GroupFault {
    /// Every kind.
    pub const ALL: [GroupFault; 4] = [
        GroupFault::Sigkill,
        GroupFault::RollingRestart,
        GroupFault::ScaleDownUp,
        GroupFault::WipedRestart,
    ];

    /// The name in summaries.
    pub fn name(self) -> &'static str {
        match self {
            GroupFault::Sigkill => "sigkill",
            GroupFault::RollingRestart => "rolling-restart",
            GroupFault::ScaleDownUp => "scale-3-1-3",
            GroupFault::WipedRestart => "wiped-data-folder",
        }
    }
}

/// How big a campaign is.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Rounds.
    pub rounds: usize,
    /// Distinct events over all rounds (the duplicates come on top).
    pub events: usize,
    /// Faults per round (at least one of each kind).
    pub faults_per_round: usize,
    /// The share of events produced a second time, same id and key, at a later offset.
    pub duplicates: f64,
    /// Seed of the plan.
    pub seed: u64,
    /// No round starts after this much time.
    pub max_duration: Duration,
    /// Partitions of the source topic (and so of the ledger topic).
    pub partitions: i32,
    /// File name (under `target/chaos/`) of the summary.
    pub summary_file: String,
    /// The fault kinds a round draws from (each at least once).
    pub kinds: Vec<GroupFault>,
    /// Whether a stop may be a SIGTERM (the host leaves the group); without, every stop is a
    /// SIGKILL (the group forgets the host when its session expires).
    pub leaves: bool,
}

impl GroupConfig {
    /// `self` with `CHAOS_ROUNDS`, `CHAOS_EVENTS`, `CHAOS_FAULTS` (per round), `CHAOS_SEED` and
    /// `CHAOS_SECONDS` from the environment where set; without `CHAOS_SEED` a random seed.
    pub fn from_env(mut self) -> Self {
        let knobs = super::Knobs::from_env();
        knobs.resize(
            &mut self.rounds,
            &mut self.events,
            &mut self.faults_per_round,
            &mut self.max_duration,
        );
        self.seed = knobs.seed.unwrap_or(self.seed);
        self
    }
}

/// What a round saw, for [`check_group`].
#[derive(Debug, Default, Clone)]
pub struct GroupObservation {
    /// The event id of every record produced, duplicates included.
    pub produced: Vec<String>,
    /// The event id of every POST, in the order the receiver got them: one per run.
    pub runs: Vec<String>,
    /// For each event whose ledger entry a snapshot read: how many POSTs the receiver had had
    /// right after the first such read.
    pub recorded_at: HashMap<String, usize>,
    /// Rows of the audit table per event id.
    pub rows: HashMap<String, usize>,
    /// The group's committed offsets at the end, per partition. Offsets are dense from 0 (no
    /// transactions) and a committed offset never passes its partition's end, so they add up
    /// to the records produced exactly when every partition is committed to its end.
    pub committed: HashMap<i32, i64>,
    /// What went wrong with a host's stop or life (an exit that was not clean, a host that
    /// exited on its own).
    pub host_failures: Vec<String>,
}

/// What [`check_group`] found.
#[derive(Debug, Default, Clone)]
pub struct GroupVerdict {
    /// Records produced (duplicates included).
    pub produced: usize,
    /// Distinct event ids produced.
    pub distinct: usize,
    /// Runs (POSTs).
    pub runs: usize,
    /// Runs beyond the first of their event that the guarantees allow.
    pub repeats: usize,
    /// Everything that broke an invariant.
    pub violations: Vec<String>,
}

/// The invariants of a round:
/// - every produced event id ran and has its row (nothing lost), and the committed offsets
///   reached the source's ends (they add up to the records produced);
/// - no run of an event after a snapshot had read its acknowledged ledger entry;
/// - every event that ran has its entry in the ledger topic at the end;
/// - exactly one audit row per distinct event id, and none for an event never produced;
/// - every host stop was clean, and no host exited on its own.
pub fn check_group(o: &GroupObservation) -> GroupVerdict {
    let mut v = GroupVerdict {
        produced: o.produced.len(),
        runs: o.runs.len(),
        ..GroupVerdict::default()
    };
    let distinct: HashSet<&str> = o.produced.iter().map(String::as_str).collect();
    v.distinct = distinct.len();
    let mut ran: HashMap<&str, usize> = HashMap::new();
    let (mut late, mut examples) = (0usize, Vec::new());
    for (i, id) in o.runs.iter().enumerate() {
        *ran.entry(id.as_str()).or_insert(0) += 1;
        if let Some(&mark) = o.recorded_at.get(id)
            && i >= mark
        {
            late += 1;
            if examples.len() < 5 {
                examples.push(format!(
                    "{id} (run #{}; its entry read before run #{})",
                    i + 1,
                    mark + 1
                ));
            }
        }
        if !distinct.contains(id.as_str()) {
            v.violations
                .push(format!("a run of event {id}, which was never produced"));
        }
    }
    if late > 0 {
        v.violations.push(format!(
            "{late} runs of events whose ledger entry had been acknowledged, e.g. {}",
            examples.join(", ")
        ));
    }
    v.repeats = ran.values().map(|n| n - 1).sum();
    // Distinct events for which `missing` holds, reported as one violation `what` names.
    let mut report = |what: &str, missing: &dyn Fn(&str) -> bool| {
        let mut ids: Vec<&str> = distinct.iter().copied().filter(|id| missing(id)).collect();
        ids.sort_unstable();
        if !ids.is_empty() {
            v.violations.push(format!(
                "{} events {what}, e.g. {:?}",
                ids.len(),
                &ids[..ids.len().min(5)]
            ));
        }
    };
    report("never ran", &|id| !ran.contains_key(id));
    // The last snapshot reads the ledger topic after every host stopped: each event that ran
    // has its entry there, or the topic (or the way it is read) lost it.
    report("ran but have no entry in the ledger topic", &|id| {
        ran.contains_key(id) && !o.recorded_at.contains_key(id)
    });
    report("have no audit row", &|id| !o.rows.contains_key(id));
    let mut twice: Vec<(&String, &usize)> = o.rows.iter().filter(|(_, n)| **n > 1).collect();
    twice.sort();
    if !twice.is_empty() {
        v.violations.push(format!(
            "{} events have more than one audit row (their SQL effects applied twice), e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(5)]
        ));
    }
    for id in o.rows.keys() {
        if !distinct.contains(id.as_str()) {
            v.violations.push(format!(
                "an audit row for event {id}, which was never produced"
            ));
        }
    }
    let committed: i64 = o.committed.values().sum();
    if committed != o.produced.len() as i64 {
        let mut per: Vec<_> = o.committed.iter().collect();
        per.sort_unstable();
        v.violations.push(format!(
            "the committed offsets {per:?} add up to {committed}, not to the {} records produced",
            o.produced.len()
        ));
    }
    v.violations.extend(o.host_failures.iter().cloned());
    v
}

/// What a campaign found.
#[derive(Debug, Default)]
pub struct GroupSummary {
    /// How to run it again.
    pub command: String,
    /// Rounds run.
    pub rounds: usize,
    /// Faults by kind.
    pub faults: BTreeMap<GroupFault, usize>,
    /// Records produced (duplicates included).
    pub produced: usize,
    /// Distinct events.
    pub distinct: usize,
    /// Runs.
    pub runs: usize,
    /// Allowed repeats.
    pub repeats: usize,
    /// Audit rows.
    pub rows: usize,
    /// Partition restores the hosts logged.
    pub restores: usize,
    /// Snapshots taken.
    pub snapshots: usize,
    /// Every violation, by round.
    pub violations: Vec<String>,
    /// A line per round.
    pub per_round: Vec<String>,
    /// Wall time.
    pub wall: Duration,
}

impl GroupSummary {
    /// Faults over all kinds.
    pub fn faults_total(&self) -> usize {
        self.faults.values().sum()
    }

    /// Panic, with the summary, unless the campaign ran `events` distinct events through at
    /// least `min_faults` faults, every one of `kinds` among them, and found no violation.
    pub fn assert_clean(&self, kinds: &[GroupFault], events: usize, min_faults: usize) {
        let text = self.render();
        assert!(self.violations.is_empty(), "violations:\n{text}");
        assert!(self.faults_total() >= min_faults, "too few faults:\n{text}");
        for &k in kinds {
            assert!(
                self.faults.get(&k).copied().unwrap_or(0) > 0,
                "no {} fault:\n{text}",
                k.name()
            );
        }
        assert_eq!(self.distinct, events, "{text}");
        assert_eq!(self.rows, events, "{text}");
        assert!(
            self.produced > self.distinct,
            "no business duplicate:\n{text}"
        );
    }

    /// The text printed and written to `target/chaos/`.
    pub fn render(&self) -> String {
        let secs = self.wall.as_secs();
        let kinds: Vec<String> = GroupFault::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), self.faults.get(k).copied().unwrap_or(0)))
            .collect();
        let mut s = format!(
            "kasm multi-host chaos campaign ({HOSTS} hosts, one group, the Kafka ledger)\n  \
             command     {}\n  rounds      {}   wall time {}m{:02}s\n  faults      {} \
             injected: {}\n  events      produced {} ({} distinct, {} business duplicates), \
             runs {}, allowed repeats {}\n  effects     {} audit rows; {} partition restores \
             logged\n  checked     {} snapshots\n  violations  {}\n",
            self.command,
            self.rounds,
            secs / 60,
            secs % 60,
            self.faults_total(),
            kinds.join(" "),
            self.produced,
            self.distinct,
            self.produced - self.distinct,
            self.runs,
            self.repeats,
            self.rows,
            self.restores,
            self.snapshots,
            self.violations.len()
        );
        for v in &self.violations {
            s.push_str(&format!("    - {v}\n"));
        }
        s.push_str("  rounds:\n");
        for r in &self.per_round {
            s.push_str(&format!("    {r}\n"));
        }
        s
    }
}

/// Run the campaign on `broker()` (a broker per round) and write its summary.
pub fn run_group(
    cfg: &GroupConfig,
    broker: fn() -> TestBroker,
    rt: &tokio::runtime::Handle,
) -> GroupSummary {
    let started = Instant::now();
    let out_dir = crate::root().join("target").join("chaos");
    let _ = std::fs::create_dir_all(&out_dir);
    let faults = cfg.faults_per_round.max(cfg.kinds.len());
    let mut summary = GroupSummary {
        command: format!(
            "CHAOS_SEED={} CHAOS_ROUNDS={} CHAOS_EVENTS={} CHAOS_FAULTS={}",
            cfg.seed, cfg.rounds, cfg.events, faults
        ),
        ..GroupSummary::default()
    };
    eprintln!("group chaos: {}", summary.command);
    for r in 0..cfg.rounds {
        if started.elapsed() > cfg.max_duration {
            summary.violations.push(format!(
                "time bound {:?} reached: ran {r} of {} rounds",
                cfg.max_duration, cfg.rounds
            ));
            break;
        }
        let (events, seed) = super::round_plan(cfg.events, cfg.rounds, r, cfg.seed);
        let t0 = Instant::now();
        let round = GroupRound::new(r, seed, cfg, broker(), rt.clone());
        let result = round.run(events, faults, cfg, &out_dir);
        let line = format!(
            "round {:>2}: {:>5} records ({} distinct), {:>2} faults [{}], runs {}, repeats {}, \
             rows {}, restores {}, violations {}, {:.0}s",
            r + 1,
            result.verdict.produced,
            result.verdict.distinct,
            result.faults.values().sum::<usize>(),
            result
                .faults
                .iter()
                .map(|(k, n)| format!("{} {n}", k.name()))
                .collect::<Vec<_>>()
                .join(", "),
            result.verdict.runs,
            result.verdict.repeats,
            result.rows,
            result.restores,
            result.verdict.violations.len(),
            t0.elapsed().as_secs_f64()
        );
        eprintln!("group chaos: {line}");
        summary.per_round.push(line);
        summary.rounds += 1;
        for (k, n) in &result.faults {
            *summary.faults.entry(*k).or_insert(0) += n;
        }
        summary.produced += result.verdict.produced;
        summary.distinct += result.verdict.distinct;
        summary.runs += result.verdict.runs;
        summary.repeats += result.verdict.repeats;
        summary.rows += result.rows;
        summary.restores += result.restores;
        summary.snapshots += result.snapshots;
        summary.violations.extend(
            result
                .verdict
                .violations
                .into_iter()
                .map(|v| format!("round {}: {v}", r + 1)),
        );
    }
    summary.wall = started.elapsed();
    let text = summary.render();
    eprintln!("{text}");
    let _ = std::fs::write(out_dir.join(&cfg.summary_file), &text);
    summary
}

/// What one round found.
#[derive(Debug, Default)]
struct GroupRoundResult {
    verdict: GroupVerdict,
    faults: BTreeMap<GroupFault, usize>,
    rows: usize,
    restores: usize,
    snapshots: usize,
}

/// One host of the group: a folder of its own (config and data folder) and, while it runs,
/// its process.
struct Pod {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    process: Option<HostProcess>,
    /// What earlier processes of this pod printed (for the restore count and a failure).
    printed: Vec<String>,
}

struct GroupRound {
    index: usize,
    rng: StdRng,
    broker: TestBroker,
    dir: tempfile::TempDir,
    topic: String,
    group: String,
    ledger_topic: String,
    partitions: i32,
    rt: tokio::runtime::Handle,
    receiver: Receiver,
    db_url: String,
    migrations: PathBuf,
    pods: Vec<Pod>,
    /// Pods scaled away.
    retired: Vec<Pod>,
    next_pod: usize,
    ledger: Option<TopicLog>,
    ledger_read: usize,
    obs: GroupObservation,
    snapshots: usize,
    /// Whether a stop may be a SIGTERM.
    leaves: bool,
}

/// librdkafka settings of the hosts: short sessions, so that a killed host's partitions move
/// within seconds, and short fetch waits.
const GROUP_KAFKA_PROPS: &str = crate::KAFKA_TEST_PROPS;

impl GroupRound {
    fn new(
        index: usize,
        seed: u64,
        cfg: &GroupConfig,
        broker: TestBroker,
        rt: tokio::runtime::Handle,
    ) -> Self {
        let topic = crate::unique("group-in");
        let group = crate::unique("group");
        rt.block_on(async {
            broker.create_topic(&topic, cfg.partitions).await;
            broker.create_topic(&format!("{topic}.dlq"), 1).await;
        });
        let db_url = rt.block_on(crate::pg_schema());
        let dir = tempfile::tempdir().expect("tempdir");
        let migrations = dir.path().join("migrations");
        std::fs::create_dir_all(&migrations).expect("migrations folder");
        // No key and no ON CONFLICT: a second application of an event's effects is a second row.
        std::fs::write(
            migrations.join("001_audit.sql"),
            "CREATE TABLE audit (event_id TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now());",
        )
        .expect("migration");
        Self {
            index,
            rng: StdRng::seed_from_u64(seed),
            ledger_topic: format!("{group}.ledger"),
            broker,
            dir,
            topic,
            group,
            partitions: cfg.partitions,
            rt,
            receiver: Receiver::start(&[200]),
            db_url,
            migrations,
            pods: Vec::new(),
            retired: Vec::new(),
            next_pod: 0,
            ledger: None,
            ledger_read: 0,
            obs: GroupObservation::default(),
            snapshots: 0,
            leaves: true,
        }
    }

    fn run(
        mut self,
        events: usize,
        faults: usize,
        cfg: &GroupConfig,
        out: &Path,
    ) -> GroupRoundResult {
        let duplicates = cfg.duplicates;
        self.leaves = cfg.leaves;
        let mut plan: Vec<GroupFault> = cfg.kinds.clone();
        while plan.len() < faults {
            plan.push(*cfg.kinds.choose(&mut self.rng).expect("kinds"));
        }
        plan.shuffle(&mut self.rng);
        let bursts = self.bursts(events, plan.len() + 1, duplicates);
        let mut result = GroupRoundResult::default();
        for _ in 0..HOSTS {
            self.add_pod();
        }
        self.open_ledger();
        let mut producer =
            BurstProducer::start(self.rt.clone(), &self.broker.bootstrap(), &self.topic);
        for (i, burst) in bursts.into_iter().enumerate() {
            self.obs.produced.extend(burst.iter().map(event_id));
            producer.send(burst);
            let pause = self.rng.random_range(0..1500);
            self.wait(Duration::from_millis(pause));
            if let Some(&fault) = plan.get(i) {
                self.snapshot();
                self.fault(fault);
                *result.faults.entry(fault).or_insert(0) += 1;
                self.snapshot();
            }
        }
        if let Err(e) = producer.finish() {
            self.obs
                .host_failures
                .push(format!("producing the events: {e}"));
        }
        let committed = Committed::new(
            &self.broker.bootstrap(),
            &self.group,
            &self.topic,
            self.partitions,
        )
        .expect("committed-offsets client");
        // Done when the committed offsets add up to every record produced (see
        // `GroupObservation::committed`); no end offset is asked: Tansu answers a "latest
        // offset" query with the start of the newest batch + 1.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let got = committed.get(Duration::from_secs(10)).unwrap_or_default();
            let done = got.values().sum::<i64>() >= self.obs.produced.len() as i64;
            self.obs.committed = got;
            if done || Instant::now() > deadline {
                break;
            }
            self.wait(Duration::from_millis(500));
        }
        self.snapshot();
        for i in 0..self.pods.len() {
            self.stop(i, true);
        }
        // Every entry the hosts wrote, and every POST they made, before they stopped.
        self.snapshot();
        self.obs.runs = self
            .receiver
            .requests()
            .into_iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
        self.obs.rows = self.rt.block_on(audit_rows(&self.db_url));
        result.rows = self.obs.rows.values().sum();
        result.restores = self
            .pods
            .iter()
            .chain(&self.retired)
            .map(|p| {
                p.printed
                    .iter()
                    .filter(|l| l.contains("ledger restored"))
                    .count()
            })
            .sum();
        result.snapshots = self.snapshots;
        result.verdict = check_group(&self.obs);
        if !result.verdict.violations.is_empty() {
            let logs: Vec<String> = self
                .pods
                .iter()
                .chain(&self.retired)
                .map(|p| format!("== {}\n{}", p.name, p.printed.join("\n")))
                .collect();
            let _ = std::fs::write(
                out.join(format!("group-round-{}-hosts.log", self.index + 1)),
                logs.join("\n"),
            );
        }
        result
    }

    /// `events` distinct events in `n` bursts, and `duplicates` of them again, each copy in the
    /// burst of its original or a later one, after the original.
    fn bursts(&mut self, events: usize, n: usize, duplicates: f64) -> Vec<Vec<Rec>> {
        let sizes = split(events, n, &mut self.rng);
        let mut bursts: Vec<Vec<Rec>> = Vec::with_capacity(n);
        let mut next = 0;
        for size in sizes {
            bursts.push((next..next + size).map(|i| self.event(i)).collect());
            next += size;
        }
        let copies = (events as f64 * duplicates).round() as usize;
        let mut which: Vec<usize> = (0..events).collect();
        which.shuffle(&mut self.rng);
        let mut starts = Vec::with_capacity(n);
        let mut at = 0;
        for b in &bursts {
            starts.push(at);
            at += b.len();
        }
        for &i in which.iter().take(copies) {
            let home = starts.iter().rposition(|s| *s <= i).unwrap_or(0);
            let burst = self.rng.random_range(home..n);
            let record = self.event(i);
            bursts[burst].push(record);
        }
        bursts
    }

    /// Event `i` of this round: its id in the `event-id` header, key `k<i>` (so a duplicate
    /// lands on its original's partition), and the fixture's two steps.
    fn event(&self, i: usize) -> Rec {
        let id = format!("r{}-e{i}", self.index + 1);
        Rec {
            key: Some(format!("k{i}").into_bytes()),
            payload: serde_json::json!({
                "steps": [
                    {"post": format!("http://{}/run", self.receiver.addr)},
                    {"execute": "INSERT INTO audit (event_id) VALUES ($1)", "params": [id]},
                ],
            })
            .to_string()
            .into_bytes(),
            headers: vec![("event-id".into(), id.into_bytes())],
            partition: None,
        }
    }

    /// A new pod on an empty data folder, started.
    fn add_pod(&mut self) {
        let name = format!("h{}", self.next_pod);
        self.next_pod += 1;
        let dir = self.dir.path().join(&name);
        std::fs::create_dir_all(&dir).expect("pod folder");
        let body = format!(
            "[kafka]\n{GROUP_KAFKA_PROPS}\n[handlers.{HANDLER}]\ncomponent = \"{c}\"\n\
             topics = [\"{t}\"]\ngroup_id = \"{g}\"\npayload = \"json\"\n\
             grants = {{ sql = {{ url_env = \"AUDIT_DATABASE_URL\", migrations = \"{m}\" }}, \
             http = [\"{w}\"] }}\n",
            c = crate::component(crate::components::FIXTURE_SQL_HTTP).display(),
            t = self.topic,
            g = self.group,
            m = self.migrations.display(),
            w = self.receiver.addr,
        );
        let config = crate::write_config(&dir, &body);
        let mut pod = Pod {
            name,
            dir,
            config,
            process: None,
            printed: Vec::new(),
        };
        self.start(&mut pod);
        self.pods.push(pod);
        // On an external broker (Tansu in CI) a new host waits for the one before it to be
        // ready, as a StatefulSet starts its pods: Tansu 0.6's coordinator is slow to settle
        // members that join at once.
        if self.broker.is_external() {
            self.wait_ready(self.pods.len() - 1, Duration::from_secs(60));
        }
    }

    fn start(&self, pod: &mut Pod) {
        pod.process = Some(HostProcess::start_with_env(
            &pod.config,
            &self.broker.bootstrap(),
            "warn,kasm_host=info",
            &[("AUDIT_DATABASE_URL", &self.db_url)],
        ));
    }

    /// Stop pod `i`: SIGTERM (it must exit 0 within 30 s) or SIGKILL.
    fn stop(&mut self, i: usize, term: bool) {
        let pod = &mut self.pods[i];
        let Some(mut p) = pod.process.take() else {
            return;
        };
        if !term {
            pod.printed.extend(std::mem::take(&mut p.output));
            p.kill();
            return;
        }
        p.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = p.try_status() {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        match status {
            Some(s) if s.success() => {}
            Some(s) => self
                .obs
                .host_failures
                .push(format!("host {} exited {s} after SIGTERM", pod.name)),
            None => self.obs.host_failures.push(format!(
                "host {} did not exit within 30 s of SIGTERM",
                pod.name
            )),
        }
        pod.printed.extend(std::mem::take(&mut p.output));
    }

    fn fault(&mut self, fault: GroupFault) {
        match fault {
            GroupFault::Sigkill => {
                let i = self.rng.random_range(0..self.pods.len());
                self.stop(i, false);
                let pause = self.rng.random_range(200..2000);
                self.wait(Duration::from_millis(pause));
                let mut pod = self.pods.remove(i);
                self.start(&mut pod);
                self.pods.insert(i, pod);
            }
            GroupFault::RollingRestart => {
                for i in 0..self.pods.len() {
                    self.stop(i, true);
                    self.snapshot();
                    let mut pod = self.pods.remove(i);
                    self.start(&mut pod);
                    self.pods.insert(i, pod);
                    self.wait_ready(i, Duration::from_secs(60));
                }
            }
            GroupFault::ScaleDownUp => {
                let mut order: Vec<usize> = (0..self.pods.len()).collect();
                order.shuffle(&mut self.rng);
                let (keep, gone) = (order[0], &order[1..]);
                for &i in gone {
                    self.stop(i, true);
                }
                let pause = self.rng.random_range(1000..3000);
                self.wait(Duration::from_millis(pause));
                // The pods that went are gone for good, their folders with them; two new ones
                // take their place.
                for (i, pod) in std::mem::take(&mut self.pods).into_iter().enumerate() {
                    if i == keep {
                        self.pods.push(pod);
                    } else {
                        let _ = std::fs::remove_dir_all(&pod.dir);
                        self.retired.push(pod);
                    }
                }
                while self.pods.len() < HOSTS {
                    self.add_pod();
                }
            }
            GroupFault::WipedRestart => {
                let i = self.rng.random_range(0..self.pods.len());
                let term = self.leaves && self.rng.random_bool(0.5);
                self.stop(i, term);
                let data = self.pods[i].dir.join("data");
                if let Err(e) = std::fs::remove_dir_all(&data)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    self.obs
                        .host_failures
                        .push(format!("deleting {}: {e}", data.display()));
                }
                let mut pod = self.pods.remove(i);
                self.start(&mut pod);
                self.pods.insert(i, pod);
            }
        }
    }

    /// Wait (bounded) until pod `i` answers `/readyz` 200, as a rolling restart waits for
    /// readiness before it stops the next pod. Snapshots meanwhile.
    fn wait_ready(&mut self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let ready = self.pods[i]
                .process
                .as_ref()
                .is_some_and(|p| http_get(&p.admin, "/readyz").0 == 200);
            if ready {
                return;
            }
            self.wait(Duration::from_millis(250));
        }
    }

    /// Sleep `d`, taking a snapshot every half second and watching for a host that exited.
    fn wait(&mut self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            self.watch_hosts();
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(500)));
            self.snapshot();
        }
    }

    /// A host that exited without being told to is a failure.
    fn watch_hosts(&mut self) {
        for pod in &mut self.pods {
            if let Some(p) = pod.process.as_mut()
                && let Some(s) = p.try_status()
            {
                self.obs
                    .host_failures
                    .push(format!("host {} exited on its own ({s})", pod.name));
                let p = pod.process.take().expect("checked above");
                pod.printed.extend(p.output.clone());
            }
        }
    }

    /// The ledger topic's reader, once the first host has created the topic.
    fn open_ledger(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(log) = TopicLog::new(
                &self.broker.bootstrap(),
                &[(self.ledger_topic.as_str(), self.partitions)],
            ) && log.ends(&self.ledger_topic, Duration::from_secs(5)).is_ok()
            {
                self.ledger = Some(log);
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.obs.host_failures.push(format!(
            "the ledger topic {} did not appear within 90 s",
            self.ledger_topic
        ));
    }

    /// Read the ledger topic to its end, then note the receiver's count: every entry read was
    /// acknowledged before any POST counted from there on.
    fn snapshot(&mut self) {
        let Some(log) = self.ledger.as_mut() else {
            return;
        };
        if !log.catch_up(Duration::from_secs(20)) {
            return;
        }
        let mark = self.receiver.received.lock().expect("receiver lock").len();
        let records = log.records(&self.ledger_topic);
        for r in &records[self.ledger_read..] {
            let decoded = kasm_host::ledger::decode_ledger_record(r.key.as_deref(), &r.payload)
                .expect("a ledger record this kasm reads");
            for (id, _) in decoded.map(|d| d.entries()).unwrap_or_default() {
                self.obs.recorded_at.entry(id).or_insert(mark);
            }
        }
        self.ledger_read = records.len();
        self.snapshots += 1;
    }
}

fn event_id(r: &Rec) -> String {
    r.headers
        .iter()
        .find(|(k, _)| k == "event-id")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// Rows of the audit table per event id.
async fn audit_rows(url: &str) -> HashMap<String, usize> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT event_id, count(*) FROM audit GROUP BY event_id",
            &[],
        )
        .await
        .expect("reading the audit table");
    rows.iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as usize))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn clean() -> GroupObservation {
        GroupObservation {
            produced: ids(&["a", "b", "c", "b"]),
            runs: ids(&["a", "b", "c"]),
            recorded_at: [
                ("a".to_owned(), 3),
                ("b".to_owned(), 3),
                ("c".to_owned(), 4),
            ]
            .into(),
            rows: [
                ("a".to_owned(), 1),
                ("b".to_owned(), 1),
                ("c".to_owned(), 1),
            ]
            .into(),
            committed: [(0, 4)].into(),
            host_failures: vec![],
        }
    }

    #[test]
    fn a_clean_round_passes_and_counts_its_duplicate() {
        let v = check_group(&clean());
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!((v.produced, v.distinct, v.runs, v.repeats), (4, 3, 3, 0));
    }

    #[test]
    fn a_repeat_before_the_ledger_entry_was_read_is_allowed_and_counted() {
        let mut o = clean();
        o.runs = ids(&["a", "b", "a", "c"]);
        o.recorded_at.insert("a".into(), 3);
        let v = check_group(&o);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.repeats, 1);
    }

    #[test]
    fn a_run_after_the_ledger_entry_was_read_is_a_violation() {
        let mut o = clean();
        o.runs = ids(&["a", "b", "c", "b"]);
        let v = check_group(&o);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(
            v.violations[0].contains(
                "1 runs of events whose ledger entry had been acknowledged, e.g. b (run #4"
            ),
            "{:?}",
            v.violations
        );
    }

    #[test]
    fn an_event_that_ran_without_a_ledger_entry_at_the_end_is_a_violation() {
        let mut o = clean();
        o.recorded_at.remove("c");
        let v = check_group(&o);
        assert_eq!(
            v.violations,
            ["1 events ran but have no entry in the ledger topic, e.g. [\"c\"]"]
        );
    }

    #[test]
    fn a_lost_event_a_missing_row_a_second_row_and_a_lagging_commit_are_violations() {
        let mut o = clean();
        o.runs = ids(&["a", "b"]);
        o.rows = [("a".to_owned(), 2), ("b".to_owned(), 1)].into();
        o.committed = [(0, 3)].into();
        o.host_failures.push("host h1 exited on its own".into());
        let v = check_group(&o);
        let text = v.violations.join("\n");
        assert!(text.contains("1 events never ran"), "{text}");
        assert!(text.contains("1 events have no audit row"), "{text}");
        assert!(text.contains("more than one audit row"), "{text}");
        assert!(text.contains("add up to 3, not to the 4 records"), "{text}");
        assert!(text.contains("exited on its own"), "{text}");
    }

    #[test]
    fn runs_and_rows_of_events_never_produced_are_violations() {
        let mut o = clean();
        o.runs.push("z".into());
        o.rows.insert("z".into(), 1);
        let v = check_group(&o);
        assert_eq!(v.violations.len(), 2, "{:?}", v.violations);
    }
}
