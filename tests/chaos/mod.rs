//! The chaos campaign (`make chaos`; a short version runs in `make test`).
//!
//! Rounds of: the `kasm` host as a separate process consuming an embedded (mock) cluster on
//! loopback, the publisher fixture as its handler, events produced in bursts, and faults at
//! random moments — SIGKILL, SIGTERM, brokers down, injected request errors, slow round trips,
//! partition leader moves, an unwritable dead-letter topic, a second host joining the group
//! (rebalances), and hot swaps between two component versions. After each round the
//! invariants of [`check`] are checked on everything the round observed, and a summary counts
//! rounds, faults by kind, events and violations.
//!
//! # How a round is laid out
//!
//! Three brokers: the source and output partitions are led by brokers 1 and 2, the
//! dead-letter topic by broker 3 alone, so taking broker 3 down makes exactly the dead-letter
//! topic unwritable. The group's coordinator is broker 1 or 2. The host's producer gives up on a
//! write after 5 s (`message.timeout.ms`), so a dead-letter write during that fault fails and
//! the host must hold the partition and retry it. About 1 % of the events name an output topic
//! the handler is not granted: they fail `fatal` and must be dead-lettered.
//!
//! The hosts keep their ledger in a file (`ledger_store = "file"`): the checker reads it
//! after each stop. The second host runs the same group and topics under another handler name
//! (`b`, the first is `a`) with its own data folder and ledger: the name goes into the
//! `event-id` the host
//! derives for each output, so every output tells which host ran it — that is what lets the
//! checker hold each host to its own ledger.
//!
//! Every stop (SIGKILL, SIGTERM, the second host leaving) is followed by a snapshot: the
//! group's committed offsets, the stopped host's ledger (read from its file while no process
//! holds it), then the ends of the output and dead-letter topics. More snapshots (without a
//! ledger) follow every fault.
//!
//! # Replaying
//!
//! The seed fixes each round's plan: which faults in which order, their targets and lengths,
//! burst sizes, the pauses between them. The host's own timing still varies from run to run,
//! so a replay is the same storm, not the same interleaving.

pub mod check;
pub mod group;
pub mod observe;
pub mod soak;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kasm_host::capabilities::producer::derive_event_id;
use kasm_host::kafka::mock::EmbeddedCluster;
use kasm_host::ledger::{FileLedger, Ledger as _};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use rand::{Rng as _, SeedableRng as _};
use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::broker::{Got, Rec, TestBroker};
use crate::hostproc::{HostProcess, http_get, http_request};
use check::{DlqExpect, Exec, LedgerSnapshot, Observation, Sink, Snapshot, SourceRecord, Swap};
use observe::{Committed, TopicLog};

/// The admin token the hosts run with (swaps need it).
pub const TOKEN: &str = "chaos-token-3b9e";

/// Handler names of the first and the second host.
pub const HANDLERS: [&str; 2] = ["a", "b"];

/// The broker that leads the dead-letter topic and nothing else.
const DLQ_BROKER: i32 = 3;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL the host, restart it on the same data folder.
    Sigkill,
    /// SIGTERM the host (it must drain and exit 0), restart it.
    Sigterm,
    /// One or more brokers down for a few seconds.
    BrokersDown,
    /// Errors injected into Kafka requests (produce, fetch, commit, group protocol).
    RequestErrors,
    /// Added round-trip time on brokers.
    SlowRoundTrips,
    /// Partition leaders moved to another broker.
    LeaderMove,
    /// The dead-letter topic's broker down while failing events arrive.
    DlqUnwritable,
    /// A second host joins the group, takes partitions, leaves (SIGTERM or SIGKILL).
    SecondHost,
    /// A hot swap to the other component version through the admin API.
    Swap,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 9] = [
        FaultKind::Sigkill,
        FaultKind::Sigterm,
        FaultKind::BrokersDown,
        FaultKind::RequestErrors,
        FaultKind::SlowRoundTrips,
        FaultKind::LeaderMove,
        FaultKind::DlqUnwritable,
        FaultKind::SecondHost,
        FaultKind::Swap,
    ];

    /// Its name in summaries.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Sigkill => "sigkill",
            FaultKind::Sigterm => "sigterm",
            FaultKind::BrokersDown => "brokers-down",
            FaultKind::RequestErrors => "request-errors",
            FaultKind::SlowRoundTrips => "slow-round-trips",
            FaultKind::LeaderMove => "leader-move",
            FaultKind::DlqUnwritable => "dlq-unwritable",
            FaultKind::SecondHost => "second-host",
            FaultKind::Swap => "swap",
        }
    }
}

/// How big a campaign is.
#[derive(Debug, Clone)]
pub struct CampaignConfig {
    /// Rounds.
    pub rounds: usize,
    /// Events over all rounds.
    pub events: usize,
    /// Faults per round (at least one of each kind).
    pub faults_per_round: usize,
    /// Seed of the plan.
    pub seed: u64,
    /// No round starts after this much time; rounds not run are reported.
    pub max_duration: Duration,
    /// Partitions of the source and output topics.
    pub partitions: i32,
    /// File name (under `target/chaos/`) of the summary.
    pub summary_file: String,
}

impl CampaignConfig {
    /// `self` with `CHAOS_ROUNDS`, `CHAOS_EVENTS`, `CHAOS_FAULTS` (per round), `CHAOS_SEED`
    /// and `CHAOS_SECONDS` from the environment where set. Without `CHAOS_SEED` the seed is
    /// random (and printed).
    pub fn from_env(mut self) -> Self {
        let knobs = Knobs::from_env();
        knobs.resize(
            &mut self.rounds,
            &mut self.events,
            &mut self.faults_per_round,
            &mut self.max_duration,
        );
        self.seed = knobs.seed.unwrap_or_else(rand::random);
        self
    }
}

/// The `CHAOS_*` variables that resize a campaign, where set.
#[derive(Debug, Default)]
pub struct Knobs {
    rounds: Option<u64>,
    events: Option<u64>,
    faults: Option<u64>,
    seconds: Option<u64>,
    /// `CHAOS_SEED`.
    pub seed: Option<u64>,
}

impl Knobs {
    /// `CHAOS_ROUNDS`, `CHAOS_EVENTS`, `CHAOS_FAULTS` (per round), `CHAOS_SECONDS` and
    /// `CHAOS_SEED`.
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Self {
            rounds: var("CHAOS_ROUNDS"),
            events: var("CHAOS_EVENTS"),
            faults: var("CHAOS_FAULTS"),
            seconds: var("CHAOS_SECONDS"),
            seed: var("CHAOS_SEED"),
        }
    }

    /// Set what the environment set.
    pub fn resize(
        &self,
        rounds: &mut usize,
        events: &mut usize,
        faults_per_round: &mut usize,
        max_duration: &mut Duration,
    ) {
        if let Some(v) = self.rounds {
            *rounds = v.max(1) as usize;
        }
        if let Some(v) = self.events {
            *events = v as usize;
        }
        if let Some(v) = self.faults {
            *faults_per_round = v as usize;
        }
        if let Some(v) = self.seconds {
            *max_duration = Duration::from_secs(v);
        }
    }
}

/// Round `r`'s share of `events` over `rounds` (the last round takes the remainder), and its
/// seed from the campaign's.
pub fn round_plan(events: usize, rounds: usize, r: usize, seed: u64) -> (usize, u64) {
    let share = events / rounds + if r + 1 == rounds { events % rounds } else { 0 };
    (
        share,
        seed.wrapping_add((r as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    )
}

/// What a campaign found.
#[derive(Debug, Default)]
pub struct Summary {
    /// Seed.
    pub seed: u64,
    /// How to run it again.
    pub command: String,
    /// Rounds run (and planned).
    pub rounds: usize,
    /// Rounds planned.
    pub rounds_planned: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, usize>,
    /// Distinct event ids produced.
    pub produced: usize,
    /// Of which made to fail.
    pub poison: usize,
    /// Event ids with an output.
    pub handled: usize,
    /// Event ids with a dead letter.
    pub dead_lettered: usize,
    /// Dead letters by error kind.
    pub dlq_kinds: BTreeMap<String, usize>,
    /// Runs beyond the first per event id (crash windows, rebalances: allowed).
    pub repeats: usize,
    /// Dead-letter faults during which the host reported the partition held (`/readyz`).
    pub dlq_held_seen: usize,
    /// Second hosts that got partitions (rebalances).
    pub rebalances: usize,
    /// Snapshots checked, of which with a stopped host's ledger.
    pub snapshots: usize,
    /// Ledger snapshots.
    pub ledger_snapshots: usize,
    /// Swaps checked.
    pub swaps: usize,
    /// Each violation, with its round.
    pub violations: Vec<String>,
    /// One line per round.
    pub per_round: Vec<String>,
    /// Wall time.
    pub wall: Duration,
}

impl Summary {
    /// Faults over all kinds.
    pub fn faults_total(&self) -> usize {
        self.faults.values().sum()
    }

    /// The text printed and written to `target/chaos/`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let secs = self.wall.as_secs();
        s.push_str("kasm chaos campaign\n");
        s.push_str(&format!("  command     {}\n", self.command));
        s.push_str(&format!(
            "  seed        {}   rounds {} of {}   wall time {}m{:02}s\n",
            self.seed,
            self.rounds,
            self.rounds_planned,
            secs / 60,
            secs % 60
        ));
        s.push_str(&format!("  faults      {} injected:", self.faults_total()));
        for k in FaultKind::ALL {
            s.push_str(&format!(
                " {} {}",
                k.name(),
                self.faults.get(&k).copied().unwrap_or(0)
            ));
        }
        s.push('\n');
        s.push_str(&format!(
            "  events      produced {} (made to fail {}), handled {}, dead-lettered {}, repeated runs {}\n",
            self.produced, self.poison, self.handled, self.dead_lettered, self.repeats
        ));
        let kinds: Vec<String> = self
            .dlq_kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        s.push_str(&format!(
            "  dead letters by kind: {}\n",
            if kinds.is_empty() {
                "none".to_owned()
            } else {
                kinds.join(", ")
            }
        ));
        s.push_str(&format!(
            "  observed    partition held on a failing dead-letter write in {} of {} dlq faults; \
             second host got partitions {} of {} times\n",
            self.dlq_held_seen,
            self.faults
                .get(&FaultKind::DlqUnwritable)
                .copied()
                .unwrap_or(0),
            self.rebalances,
            self.faults
                .get(&FaultKind::SecondHost)
                .copied()
                .unwrap_or(0)
        ));
        s.push_str(&format!(
            "  checked     {} snapshots ({} with a stopped host's ledger), {} swaps\n",
            self.snapshots, self.ledger_snapshots, self.swaps
        ));
        s.push_str(&format!("  violations  {}\n", self.violations.len()));
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

/// The two component versions the swaps alternate between.
#[derive(Debug)]
struct Versions {
    names: [&'static str; 2],
    bytes: [Vec<u8>; 2],
    sha: [String; 2],
}

impl Versions {
    fn load() -> Self {
        let bytes = [
            crate::component_bytes(crate::components::FIXTURE_PUBLISHER),
            crate::component_bytes(crate::components::FIXTURE_PUBLISHER_V2),
        ];
        let sha = [
            kasm_host::runtime::sha256_hex(&bytes[0]),
            kasm_host::runtime::sha256_hex(&bytes[1]),
        ];
        Versions {
            names: ["v1", "v2"],
            bytes,
            sha,
        }
    }
}

/// Run a campaign; `rt` runs the async parts (this function blocks: call it from
/// `spawn_blocking`).
pub fn run(cfg: &CampaignConfig, rt: &tokio::runtime::Handle) -> Summary {
    let started = Instant::now();
    let broker = TestBroker::embedded();
    let cluster = broker.cluster();
    let versions = Versions::load();
    let out_dir = crate::root().join("target").join("chaos");
    let _ = std::fs::create_dir_all(&out_dir);
    let faults = cfg.faults_per_round.max(FaultKind::ALL.len());
    let mut summary = Summary {
        seed: cfg.seed,
        command: format!(
            "make chaos CHAOS_SEED={} CHAOS_ROUNDS={} CHAOS_EVENTS={} CHAOS_FAULTS={}",
            cfg.seed, cfg.rounds, cfg.events, faults
        ),
        rounds_planned: cfg.rounds,
        ..Summary::default()
    };
    eprintln!(
        "chaos: seed {} — {} rounds, {} events, {} faults per round",
        cfg.seed, cfg.rounds, cfg.events, faults
    );
    for r in 0..cfg.rounds {
        if started.elapsed() > cfg.max_duration {
            summary.violations.push(format!(
                "time bound {:?} reached: ran {r} of {} rounds",
                cfg.max_duration, cfg.rounds
            ));
            break;
        }
        let (events, seed) = round_plan(cfg.events, cfg.rounds, r, cfg.seed);
        let t0 = Instant::now();
        let round = Round::new(r, seed, cfg.partitions, cluster, rt.clone(), &versions);
        let result = round.run(events, faults, &out_dir);
        let line = format!(
            "round {:>2}: {:>5} events, {:>2} faults [{}], handled {}, dead-lettered {}, repeats {}, \
             violations {}, {:.0}s",
            r + 1,
            result.verdict.produced,
            result.faults.values().sum::<usize>(),
            result
                .faults
                .iter()
                .map(|(k, n)| format!("{} {n}", k.name()))
                .collect::<Vec<_>>()
                .join(", "),
            result.verdict.handled,
            result.verdict.dead_lettered,
            result.verdict.repeats,
            result.violations.len(),
            t0.elapsed().as_secs_f64()
        );
        eprintln!("chaos: {line}");
        summary.per_round.push(line);
        summary.rounds += 1;
        for (k, n) in &result.faults {
            *summary.faults.entry(*k).or_insert(0) += n;
        }
        summary.produced += result.verdict.produced;
        summary.poison += result.verdict.poison;
        summary.handled += result.verdict.handled;
        summary.dead_lettered += result.verdict.dead_lettered;
        summary.repeats += result.verdict.repeats;
        for (k, n) in result.dlq_kinds {
            *summary.dlq_kinds.entry(k).or_insert(0) += n;
        }
        summary.dlq_held_seen += result.dlq_held_seen;
        summary.rebalances += result.rebalances;
        summary.snapshots += result.snapshots;
        summary.ledger_snapshots += result.ledger_snapshots;
        summary.swaps += result.swaps;
        summary.violations.extend(
            result
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
struct RoundResult {
    verdict: check::Verdict,
    faults: BTreeMap<FaultKind, usize>,
    dlq_kinds: BTreeMap<String, usize>,
    dlq_held_seen: usize,
    rebalances: usize,
    snapshots: usize,
    ledger_snapshots: usize,
    swaps: usize,
    violations: Vec<String>,
}

/// How a host is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill,
    Term,
}

struct Round<'a> {
    index: usize,
    rng: StdRng,
    cluster: &'a EmbeddedCluster,
    bootstrap: String,
    rt: tokio::runtime::Handle,
    versions: &'a Versions,
    dir: tempfile::TempDir,
    topic: String,
    out: String,
    dlq: String,
    group: String,
    partitions: i32,
    /// The hosts' `max_batch`: records a partition worker may have handled before the first
    /// of them is recorded (its batch).
    pending: usize,
    configs: [PathBuf; 2],
    hosts: [Option<HostProcess>; 2],
    active: [usize; 2],
    leaders: HashMap<(String, i32), i32>,
    log: TopicLog,
    committed: Committed,
    snapshots: Vec<Snapshot>,
    swaps: Vec<Swap>,
    ids: Vec<String>,
    producer: BurstProducer,
    result: RoundResult,
    host_log: Vec<String>,
    started: Instant,
    verbose: bool,
}

impl<'a> Round<'a> {
    fn new(
        index: usize,
        seed: u64,
        partitions: i32,
        cluster: &'a EmbeddedCluster,
        rt: tokio::runtime::Handle,
        versions: &'a Versions,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let bootstrap = cluster.bootstrap_servers().to_owned();
        let topic = crate::unique(&format!("chaos{index}"));
        let out = format!("{topic}.out");
        let dlq = format!("{topic}.dlq");
        let group = crate::unique("chaos-group");
        let mut leaders = HashMap::new();
        for (t, n) in [(&topic, partitions), (&out, partitions)] {
            cluster.create_topic(t, n).expect("create topic");
            for p in 0..n {
                let b = 1 + (p + i32::from(t == &out)) % 2;
                cluster.partition_leader(t, p, b).expect("leader");
                leaders.insert((t.clone(), p), b);
            }
        }
        cluster.create_topic(&dlq, 1).expect("create dlq topic");
        cluster
            .partition_leader(&dlq, 0, DLQ_BROKER)
            .expect("dlq leader");
        cluster
            .group_coordinator(&group, rng.random_range(1..=2))
            .expect("coordinator");
        let dir = tempfile::tempdir().expect("tempdir");
        let commit_interval = *["200ms", "200ms", "1s"].choose(&mut rng).expect("choice");
        // The default batch most often, and one record at a time now and then.
        let default_batch = kasm_host::config::defaults::max_batch();
        let pending: usize = *[default_batch, default_batch, 32, 1]
            .choose(&mut rng)
            .expect("choice");
        let configs = HANDLERS.map(|h| {
            host_config(
                dir.path(),
                h,
                &topic,
                &out,
                &group,
                commit_interval,
                &format!("max_batch = {pending}"),
            )
        });
        let log = TopicLog::new(
            &bootstrap,
            &[(&topic, partitions), (&out, partitions), (&dlq, 1)],
        )
        .expect("reader");
        let committed = Committed::new(&bootstrap, &group, &topic, partitions).expect("committed");
        let producer = BurstProducer::start(rt.clone(), &bootstrap, &topic);
        eprintln!(
            "chaos: round {} seed {seed}: topic {topic}, commit_interval {commit_interval}, \
             max_batch {pending}",
            index + 1
        );
        Round {
            index,
            rng,
            cluster,
            bootstrap,
            rt,
            versions,
            dir,
            topic,
            out,
            dlq,
            group,
            partitions,
            pending,
            configs,
            hosts: [None, None],
            active: [0, 0],
            leaders,
            log,
            committed,
            snapshots: Vec::new(),
            swaps: Vec::new(),
            ids: Vec::new(),
            producer,
            result: RoundResult::default(),
            host_log: Vec::new(),
            started: Instant::now(),
            verbose: std::env::var_os("CHAOS_VERBOSE").is_some(),
        }
    }

    fn run(mut self, events: usize, faults: usize, out_dir: &Path) -> RoundResult {
        let mut plan: Vec<FaultKind> = FaultKind::ALL.to_vec();
        while plan.len() < faults {
            plan.push(*FaultKind::ALL.choose(&mut self.rng).expect("kind"));
        }
        plan.shuffle(&mut self.rng);
        let bursts = split(events, plan.len() + 1, &mut self.rng);

        self.start_host(0);
        for (i, kind) in plan.iter().enumerate() {
            self.produce(bursts[i], 0.01);
            self.pause(100..900);
            self.check_alive();
            let t = Instant::now();
            self.inject(*kind, i);
            self.note(&format!(
                "fault {} {} took {:.1}s",
                i + 1,
                kind.name(),
                t.elapsed().as_secs_f64()
            ));
            *self.result.faults.entry(*kind).or_insert(0) += 1;
            self.snapshot(&format!("after fault {} ({})", i + 1, kind.name()), None);
            self.pause(200..1500);
        }
        self.produce(bursts[plan.len()], 0.01);
        self.heal();
        if let Err(e) = self.producer.finish() {
            self.violation(format!("producing the round's events failed: {e}"));
        }
        self.note("every event produced");
        self.check_alive();
        let t = Instant::now();
        let drained = self.wait_drained(Duration::from_secs(180));
        self.note(&format!("drained in {:.1}s", t.elapsed().as_secs_f64()));
        if !drained {
            self.violation(
                "the round did not finish (committed offsets short of the end) within 180 s \
                 after the last fault"
                    .to_owned(),
            );
        }
        self.snapshot("drained", None);
        self.stop_host(0, Stop::Term, "end of round");
        self.note("stopped");
        self.finish(out_dir)
    }

    fn finish(mut self, out_dir: &Path) -> RoundResult {
        if !self.log.catch_up(Duration::from_secs(60)) {
            self.violation("could not read the round's topics to their ends".to_owned());
        }
        self.note("read the topics");
        let final_committed =
            retry(|| self.committed.get(Duration::from_secs(5))).unwrap_or_else(|e| {
                self.result
                    .violations
                    .push(format!("final committed offsets unreadable: {e}"));
                HashMap::new()
            });
        let sources: HashMap<(i32, i64), &Got> = self
            .log
            .records(&self.topic)
            .iter()
            .map(|g| ((g.partition, g.offset), g))
            .collect();
        let mut obs = Observation {
            sources: sources
                .values()
                .map(|g| SourceRecord {
                    partition: g.partition,
                    offset: g.offset,
                    event_id: g.headers.get("event-id").cloned().unwrap_or_default(),
                    poison: g.headers.get("out-topic") != Some(&self.out),
                })
                .collect(),
            snapshots: std::mem::take(&mut self.snapshots),
            swaps: std::mem::take(&mut self.swaps),
            final_committed,
            // Each partition worker: the batch in hand, `max_batch` records handled (outputs
            // possibly acknowledged) before one of them is recorded.
            in_flight: usize::try_from(self.partitions).unwrap_or(1) * self.pending.max(1),
            ..Observation::default()
        };
        let mut violations = Vec::new();
        for g in self.log.records(&self.out) {
            let v = g.json();
            let source = v["source"].as_str().unwrap_or_default().to_owned();
            let header = g.headers.get("event-id").map(String::as_str);
            let handler = HANDLERS
                .iter()
                .find(|h| header == Some(derive_event_id(&source, h, 0).as_str()));
            let Some(handler) = handler else {
                violations.push(format!(
                    "output {}/{} for {source:?} carries event-id {header:?}, derived for no host",
                    g.partition, g.offset
                ));
                continue;
            };
            obs.execs.push(Exec {
                event_id: source,
                handler: (*handler).to_owned(),
                sink: Sink::Output,
                partition: g.partition,
                offset: g.offset,
                version: v["version"].as_str().map(str::to_owned),
            });
        }
        let expect = DlqExpect {
            topic: &self.topic,
            group: &self.group,
            handlers: &HANDLERS,
            components: &self.versions.sha,
        };
        for d in self.log.records(&self.dlq) {
            violations.extend(check::check_dead_letter(d, &sources, &expect));
            let kind = d
                .headers
                .get("kasm-dlq-error-kind")
                .cloned()
                .unwrap_or_default();
            *self.result.dlq_kinds.entry(kind).or_insert(0) += 1;
            obs.execs.push(Exec {
                event_id: d
                    .headers
                    .get("kasm-dlq-event-id")
                    .cloned()
                    .unwrap_or_default(),
                handler: d
                    .headers
                    .get("kasm-dlq-handler")
                    .cloned()
                    .unwrap_or_default(),
                sink: Sink::DeadLetter,
                partition: d.partition,
                offset: d.offset,
                version: None,
            });
        }
        let verdict = check::check(&obs);
        self.result.snapshots = obs.snapshots.len();
        self.result.ledger_snapshots = obs.snapshots.iter().filter(|s| s.ledger.is_some()).count();
        self.result.swaps = obs.swaps.len();
        violations.extend(verdict.violations.iter().cloned());
        self.result.violations.extend(violations);
        self.result.verdict = verdict;
        if !self.result.violations.is_empty() {
            let path = out_dir.join(format!("round-{}-hosts.log", self.index + 1));
            let _ = std::fs::write(&path, self.host_log.join("\n"));
            eprintln!(
                "chaos: round {} violations; host output in {}",
                self.index + 1,
                path.display()
            );
        }
        std::mem::take(&mut self.result)
    }

    /// A progress line with the time into the round (`CHAOS_VERBOSE`).
    fn note(&self, what: &str) {
        if self.verbose {
            eprintln!(
                "chaos: round {} +{:.1}s {what}",
                self.index + 1,
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    fn violation(&mut self, v: String) {
        eprintln!("chaos: round {} VIOLATION: {v}", self.index + 1);
        self.result.violations.push(v);
    }

    fn pause(&mut self, ms: std::ops::Range<u64>) {
        std::thread::sleep(Duration::from_millis(self.rng.random_range(ms)));
    }

    /// Queue `n` new events (a fraction `poison` of them made to fail) for the producer.
    fn produce(&mut self, n: usize, poison: f64) {
        let mut burst = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.ids.len();
            let id = format!("r{}-{i}", self.index + 1);
            let bad = self.rng.random_bool(poison);
            let out = if bad {
                format!("{}-not-granted", self.out)
            } else {
                self.out.clone()
            };
            burst.push(Rec {
                key: Some(format!("k{i}").into_bytes()),
                payload: format!("{{\"n\":{i}}}").into_bytes(),
                headers: vec![
                    ("event-id".into(), id.clone().into_bytes()),
                    ("out-topic".into(), out.into_bytes()),
                ],
                partition: None,
            });
            self.ids.push(id);
        }
        self.producer.send(burst);
    }

    fn start_host(&mut self, i: usize) {
        let log = std::env::var("KASM_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let host = HostProcess::start_with_env(
            &self.configs[i],
            &self.bootstrap,
            &log,
            &[("KASM_ADMIN_TOKEN", TOKEN)],
        );
        self.hosts[i] = Some(host);
    }

    fn keep_output(&mut self, i: usize, host: &mut HostProcess) {
        let _ = host.try_status();
        self.host_log
            .push(format!("==== host {} (pid {})", HANDLERS[i], host.pid()));
        self.host_log.append(&mut host.output);
    }

    /// Restart the first host if it died on its own (a violation: nothing here should kill it).
    fn check_alive(&mut self) {
        for (i, handler) in HANDLERS.iter().enumerate() {
            let exited = self.hosts[i].as_mut().and_then(HostProcess::try_status);
            if let Some(status) = exited {
                let mut host = self.hosts[i].take().expect("host");
                self.keep_output(i, &mut host);
                let tail: Vec<String> =
                    self.host_log.iter().rev().take(20).rev().cloned().collect();
                self.violation(format!(
                    "host {handler} exited on its own ({status}); last output:\n{}",
                    tail.join("\n")
                ));
                self.snapshot_stopped(i, "after an unexpected exit");
                if i == 0 {
                    self.start_host(0);
                }
            }
        }
    }

    fn stop_host(&mut self, i: usize, how: Stop, label: &str) {
        let Some(mut host) = self.hosts[i].take() else {
            return;
        };
        match how {
            Stop::Kill => {
                self.keep_output(i, &mut host);
                host.kill();
            }
            Stop::Term => {
                host.signal("TERM");
                let deadline = Instant::now() + Duration::from_secs(30);
                let status = loop {
                    if let Some(s) = host.try_status() {
                        break Some(s);
                    }
                    if Instant::now() > deadline {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                self.keep_output(i, &mut host);
                match status {
                    Some(s) if s.success() => {}
                    Some(s) => self.violation(format!(
                        "host {} exited {s} after SIGTERM ({label}), not 0",
                        HANDLERS[i]
                    )),
                    None => self.violation(format!(
                        "host {} still running 30 s after SIGTERM ({label})",
                        HANDLERS[i]
                    )),
                }
                drop(host);
            }
        }
        self.snapshot_stopped(i, label);
    }

    /// Snapshot after host `i` stopped: committed offsets, its ledger, topic ends.
    fn snapshot_stopped(&mut self, i: usize, label: &str) {
        // Let anything the dead process had on the wire reach the broker first.
        std::thread::sleep(Duration::from_millis(150));
        match self.ledger_ids(i) {
            Ok(recorded) => self.snapshot(
                &format!("host {} stopped: {label}", HANDLERS[i]),
                Some(LedgerSnapshot {
                    handler: HANDLERS[i].to_owned(),
                    recorded,
                }),
            ),
            Err(e) => {
                self.violation(format!("reading host {}'s ledger: {e:#}", HANDLERS[i]));
                self.snapshot(label, None);
            }
        }
    }

    fn ledger_ids(&self, i: usize) -> anyhow::Result<HashSet<String>> {
        let path = self
            .dir
            .path()
            .join(HANDLERS[i])
            .join("data")
            .join("ledger.redb");
        let mut recorded = HashSet::new();
        if !path.exists() {
            return Ok(recorded);
        }
        let ledger = FileLedger::open(&path)?;
        self.rt.block_on(async {
            for id in &self.ids {
                if ledger.get(HANDLERS[i], id).await?.is_some() {
                    recorded.insert(id.clone());
                }
            }
            anyhow::Ok(())
        })?;
        drop(ledger);
        Ok(recorded)
    }

    /// Committed offsets, then the ends of the output and dead-letter topics.
    fn snapshot(&mut self, label: &str, ledger: Option<LedgerSnapshot>) {
        let t = Instant::now();
        let committed = self.committed.get(Duration::from_secs(5)).ok();
        let ends = retry(|| {
            Ok((
                self.log.ends(&self.out, Duration::from_secs(5))?,
                self.log.ends(&self.dlq, Duration::from_secs(5))?,
            ))
        });
        match ends {
            Ok((out_end, dlq_end)) => self.snapshots.push(Snapshot {
                label: format!("round {} {label}", self.index + 1),
                committed,
                out_end,
                dlq_end,
                ledger,
            }),
            Err(e) => {
                if ledger.is_some() {
                    self.violation(format!("snapshot {label}: topic ends unreadable: {e:#}"));
                }
            }
        }
        if t.elapsed() > Duration::from_secs(1) {
            self.note(&format!(
                "snapshot {label} took {:.1}s",
                t.elapsed().as_secs_f64()
            ));
        }
    }

    fn heal(&mut self) {
        for id in 1..=3 {
            let _ = self.cluster.broker_up(id);
        }
        let _ = self.cluster.broker_rtt(-1, Duration::ZERO);
        for (api, _) in REQUEST_ERRORS {
            let _ = self.cluster.clear_request_errors(*api);
        }
    }

    fn inject(&mut self, kind: FaultKind, i: usize) {
        let label = format!("fault {} ({})", i + 1, kind.name());
        match kind {
            FaultKind::Sigkill => {
                self.stop_host(0, Stop::Kill, &label);
                self.pause(0..1000);
                self.start_host(0);
            }
            FaultKind::Sigterm => {
                self.stop_host(0, Stop::Term, &label);
                self.pause(0..500);
                self.start_host(0);
            }
            FaultKind::BrokersDown => {
                let ids: &[i32] = DOWN_SETS.choose(&mut self.rng).expect("choice");
                for id in ids {
                    self.cluster.broker_down(*id).expect("broker down");
                }
                self.pause(1000..4000);
                for id in ids {
                    self.cluster.broker_up(*id).expect("broker up");
                }
            }
            FaultKind::RequestErrors => {
                let n = self.rng.random_range(1..=2);
                let picked: Vec<&(RDKafkaApiKey, &[RDKafkaRespErr])> =
                    REQUEST_ERRORS.choose_multiple(&mut self.rng, n).collect();
                for (api, errs) in &picked {
                    let count = self.rng.random_range(3..=10);
                    let errors: Vec<RDKafkaRespErr> = (0..count)
                        .map(|_| *errs.choose(&mut self.rng).expect("error"))
                        .collect();
                    self.cluster
                        .request_errors(*api, &errors)
                        .expect("request errors");
                }
                self.pause(1000..3000);
                for (api, _) in &picked {
                    self.cluster
                        .clear_request_errors(*api)
                        .expect("clear request errors");
                }
            }
            FaultKind::SlowRoundTrips => {
                let id = *[1, 2, 3, -1].choose(&mut self.rng).expect("choice");
                let rtt = Duration::from_millis(self.rng.random_range(100..1000));
                self.cluster.broker_rtt(id, rtt).expect("rtt");
                self.pause(2000..5000);
                self.cluster
                    .broker_rtt(-1, Duration::ZERO)
                    .expect("rtt reset");
            }
            FaultKind::LeaderMove => {
                let moves = self.rng.random_range(1..=3);
                for _ in 0..moves {
                    let t = if self.rng.random_bool(0.5) {
                        self.topic.clone()
                    } else {
                        self.out.clone()
                    };
                    let p = self.rng.random_range(0..self.partitions);
                    let now = self.leaders.get(&(t.clone(), p)).copied().unwrap_or(1);
                    let to = 3 - now; // 1 <-> 2: broker 3 stays the dead-letter topic's alone
                    self.cluster
                        .partition_leader(&t, p, to)
                        .expect("leader move");
                    self.leaders.insert((t, p), to);
                }
            }
            FaultKind::DlqUnwritable => {
                // The broker first, then the failing events: their dead-letter writes fail.
                let n = self.rng.random_range(3..=6);
                self.cluster.broker_down(DLQ_BROKER).expect("broker down");
                self.produce(n, 1.0);
                // Down for 6–9 s, longer (up to 14 s) until the host reports the partition
                // held on the failing write, so that the retry path is what gets exercised.
                let start = Instant::now();
                let until = start + Duration::from_millis(self.rng.random_range(6000..9000));
                let latest = start + Duration::from_secs(14);
                let mut held = false;
                while Instant::now() < until || (!held && Instant::now() < latest) {
                    if let Some(a) = &self.hosts[0] {
                        let (_, body) = http_get(&a.admin, "/readyz");
                        held |= body.contains("dead-letter write failing");
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                self.cluster.broker_up(DLQ_BROKER).expect("broker up");
                self.result.dlq_held_seen += usize::from(held);
            }
            FaultKind::SecondHost => {
                self.start_host(1);
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut got = false;
                while Instant::now() < deadline && !got {
                    if let Some(b) = &self.hosts[1] {
                        let (_, body) = http_get(&b.admin, "/readyz");
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                        got = v["handlers"][HANDLERS[1]]["assigned_partitions"]
                            .as_u64()
                            .is_some_and(|n| n > 0);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                if got {
                    self.result.rebalances += 1;
                } else {
                    self.violation(format!(
                        "{label}: the second host got no partitions within 20 s"
                    ));
                }
                let n = self.rng.random_range(100..300);
                self.produce(n, 0.01);
                self.pause(1000..4000);
                let how = if self.rng.random_bool(0.7) {
                    Stop::Term
                } else {
                    Stop::Kill
                };
                self.stop_host(1, how, &label);
            }
            FaultKind::Swap => {
                let to = 1 - self.active[0];
                let before = retry(|| self.log.ends(&self.out, Duration::from_secs(5)));
                let Some(a) = &self.hosts[0] else {
                    return;
                };
                let (code, body) = http_request(
                    &a.admin,
                    "PUT",
                    &format!("/v1/handlers/{}/component", HANDLERS[0]),
                    Some(TOKEN),
                    &self.versions.bytes[to],
                );
                let answered: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if code != 200 || answered["active"] != self.versions.sha[to].as_str() {
                    self.violation(format!(
                        "{label}: deploying {} answered {code}: {body}",
                        self.versions.names[to]
                    ));
                    return;
                }
                self.active[0] = to;
                let after = retry(|| self.log.ends(&self.out, Duration::from_secs(5)));
                match (before, after) {
                    (Ok(out_before), Ok(out_end)) => self.swaps.push(Swap {
                        handler: HANDLERS[0].to_owned(),
                        version: self.versions.names[to].to_owned(),
                        out_before,
                        out_end,
                    }),
                    (Err(e), _) | (_, Err(e)) => {
                        self.violation(format!("{label}: output ends unreadable: {e:#}"));
                    }
                }
            }
        }
    }

    /// Wait until the committed offsets reach the end of every source partition.
    fn wait_drained(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            let ends = self.log.ends(&self.topic, Duration::from_secs(5));
            let committed = self.committed.get(Duration::from_secs(5));
            if let (Ok(ends), Ok(committed)) = (ends, committed)
                && ends
                    .iter()
                    .all(|(p, e)| *e == 0 || committed.get(p) == Some(e))
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            self.check_alive();
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        self.heal();
    }
}

/// Which brokers a brokers-down fault takes down (3 alone is the dead-letter fault).
const DOWN_SETS: &[&[i32]] = &[&[1], &[2], &[1, 2], &[1, 2, 3]];

/// The requests errors are injected into, with errors a client is expected to ride out.
const REQUEST_ERRORS: &[(RDKafkaApiKey, &[RDKafkaRespErr])] = &[
    (
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        ],
    ),
    (
        RDKafkaApiKey::Fetch,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    ),
    (
        RDKafkaApiKey::OffsetCommit,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
        ],
    ),
    (
        RDKafkaApiKey::Heartbeat,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
        ],
    ),
    (
        RDKafkaApiKey::JoinGroup,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS],
    ),
    (
        RDKafkaApiKey::SyncGroup,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS],
    ),
    (
        RDKafkaApiKey::FindCoordinator,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE],
    ),
    (
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS],
    ),
];

/// `f`, tried up to three times, 500 ms apart.
fn retry<T>(mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut last = None;
    for _ in 0..3 {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
}

/// `total` split into `parts` random sizes.
fn split(total: usize, parts: usize, rng: &mut StdRng) -> Vec<usize> {
    let weights: Vec<f64> = (0..parts).map(|_| rng.random_range(0.3..1.7)).collect();
    let sum: f64 = weights.iter().sum();
    let mut sizes: Vec<usize> = weights
        .iter()
        .map(|w| (total as f64 * w / sum).floor() as usize)
        .collect();
    let given: usize = sizes.iter().sum();
    if let Some(last) = sizes.last_mut() {
        *last += total - given;
    }
    sizes
}

/// librdkafka settings of the hosts: 4 s sessions (the mock cluster holds every rebalance for
/// the session timeout minus 1 s, and a killed host's partitions for a whole session), short
/// fetch waits.
const HOST_KAFKA_PROPS: &str =
    "\"session.timeout.ms\" = 4000\n\"heartbeat.interval.ms\" = 500\n\"fetch.wait.max.ms\" = 100\n";

/// The config of host `handler` (data folder `dir/<handler>`); `extra` goes into its handler
/// table.
fn host_config(
    dir: &Path,
    handler: &str,
    topic: &str,
    out: &str,
    group: &str,
    commit_interval: &str,
    extra: &str,
) -> PathBuf {
    let d = dir.join(handler);
    std::fs::create_dir_all(&d).expect("host dir");
    let body = format!(
        "commit_interval = \"{commit_interval}\"\ndrain_timeout = \"3s\"\nledger_store = \"file\"\n\
         [kafka]\n{props}{faults}\"message.timeout.ms\" = 5000\n\
         [handlers.{handler}]\ncomponent = \"{c}\"\ntopics = [\"{topic}\"]\ngroup_id = \"{group}\"\n\
         {extra}\n\
         retry = {{ attempts = 8, initial_backoff = \"100ms\", max_backoff = \"2s\", jitter = 0.2 }}\n\
         grants = {{ producer = [\"{out}\"] }}\n",
        props = HOST_KAFKA_PROPS,
        faults = crate::MOCK_PRODUCE_FAULT_PROPS,
        c = crate::component(crate::components::FIXTURE_PUBLISHER).display(),
    );
    crate::write_config(&d, &body)
}

/// Produces bursts of events on a thread of its own, so a fault never blocks the campaign;
/// a send that fails is sent again (bounded).
struct BurstProducer {
    tx: Option<mpsc::Sender<Vec<Rec>>>,
    worker: Option<std::thread::JoinHandle<Result<usize, String>>>,
}

impl BurstProducer {
    fn start(rt: tokio::runtime::Handle, bootstrap: &str, topic: &str) -> Self {
        let (tx, rx) = mpsc::channel::<Vec<Rec>>();
        let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
        let worker = std::thread::spawn(move || {
            let producer = idempotent_producer(&bootstrap);
            let mut n = 0;
            for burst in rx {
                rt.block_on(send_all(&producer, &topic, &burst))?;
                n += burst.len();
            }
            Ok(n)
        });
        Self {
            tx: Some(tx),
            worker: Some(worker),
        }
    }

    fn send(&self, burst: Vec<Rec>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(burst);
        }
    }

    /// Wait until everything queued is acknowledged; how many records were produced.
    fn finish(&mut self) -> Result<usize, String> {
        drop(self.tx.take());
        match self.worker.take() {
            Some(w) => w
                .join()
                .map_err(|_| "the producer thread panicked".to_owned())?,
            None => Ok(0),
        }
    }
}

/// An `acks=all`, idempotent producer (a retried send never duplicates a record).
pub fn idempotent_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("reconnect.backoff.max.ms", "1000")
        .create()
        .expect("producer")
}

/// Send `records` to `topic`, sending again what failed (up to 10 rounds, 1 s apart).
pub async fn send_all(
    producer: &FutureProducer,
    topic: &str,
    records: &[Rec],
) -> Result<(), String> {
    for chunk in records.chunks(1000) {
        let mut pending: Vec<&Rec> = chunk.iter().collect();
        for attempt in 0..10 {
            let sends = pending
                .iter()
                .map(|r| producer.send(r.to_record(topic), Duration::from_secs(60)));
            let results = futures::future::join_all(sends).await;
            let mut last_error = String::new();
            let failed: Vec<&Rec> = pending
                .iter()
                .zip(results)
                .filter_map(|(r, res)| {
                    res.err().map(|(e, _)| {
                        last_error = e.to_string();
                        *r
                    })
                })
                .collect();
            if failed.is_empty() {
                break;
            }
            if attempt == 9 {
                return Err(format!(
                    "{} records to {topic} still failing: {last_error}",
                    failed.len()
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            pending = failed;
        }
    }
    Ok(())
}
