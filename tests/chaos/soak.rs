//! The soak run (`make soak`, not in CI): one host for an hour at a steady rate, with
//! periodic hot swaps, broker faults and a second host joining now and then, sampling the
//! host's resident memory, open file descriptors and threads into `target/soak/samples.csv`.
//!
//! Growth must level off: after a warm-up (the first third of the run: allocator arenas,
//! caches and pools fill), the mean of the last third may exceed the mean of the middle third
//! by at most [`RSS_GROWTH`] (memory) and [`FD_GROWTH`] descriptors. A leak of one buffer per
//! record, one descriptor per swap or one thread per rebalance grows steadily and fails that.
//! No SIGKILL here: a restart would reset exactly what is being watched.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};

use super::observe::Committed;
use super::{HANDLERS, TOKEN};
use crate::broker::{Rec, TestBroker};
use crate::hostproc::{HostProcess, http_request};

/// Allowed growth of mean RSS from the middle to the last third of the run.
pub const RSS_GROWTH: f64 = 0.10;
/// Allowed growth of mean open descriptors from the middle to the last third.
pub const FD_GROWTH: f64 = 8.0;

/// The hosts' ledger is capped (oldest entries swept every minute) so that it reaches its
/// steady size within minutes: with the default 7-day retention it grows with every event, and
/// the ledger's page cache (128 MiB) with it, until the cache is full — growth by design that
/// would hide a leak for most of an hour.
const LEDGER_CAP: &str = "ledger_max_entries = 20000";

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Length of the run.
    pub duration: Duration,
    /// Events per second.
    pub rate: u32,
    /// Seconds between samples.
    pub sample_every: Duration,
    /// Seconds between swaps.
    pub swap_every: Duration,
    /// Seconds between faults.
    pub fault_every: Duration,
    /// Seed of the fault schedule.
    pub seed: u64,
}

impl SoakConfig {
    /// The defaults (60 min, 200 events/s, a sample every 10 s, a swap every 2 min, a fault
    /// every 45 s), with `SOAK_MINUTES`, `SOAK_RATE`, `SOAK_SEED` from the environment.
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let minutes = var("SOAK_MINUTES").unwrap_or(60).max(1);
        let short = minutes < 10;
        SoakConfig {
            duration: Duration::from_secs(minutes * 60),
            rate: var("SOAK_RATE").map_or(200, |r| r.clamp(1, 5000) as u32),
            sample_every: Duration::from_secs(if short { 5 } else { 10 }),
            swap_every: Duration::from_secs(if short { 30 } else { 120 }),
            fault_every: Duration::from_secs(if short { 20 } else { 45 }),
            seed: var("SOAK_SEED").unwrap_or_else(rand::random),
        }
    }
}

/// One sample of the host process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the start.
    pub at_s: f64,
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
    /// Events produced so far.
    pub produced: u64,
    /// Records not yet committed.
    pub lag: i64,
}

/// The outcome.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// Samples taken.
    pub samples: Vec<Sample>,
    /// Swaps, faults and second-host visits made.
    pub swaps: usize,
    /// Faults injected.
    pub faults: usize,
    /// Events produced.
    pub produced: u64,
    /// What went wrong (empty: passed).
    pub failures: Vec<String>,
    /// The text written to `target/soak/summary.txt`.
    pub text: String,
}

/// Read `VmRSS`, the open descriptors and `Threads` of process `pid`.
pub fn process_usage(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((field("VmRSS:")?, fds, field("Threads:")?))
}

/// Means of `f` over the middle and the last third of `samples` (by time).
pub fn thirds(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Option<(f64, f64)> {
    let end = samples.last()?.at_s;
    let mean = |lo: f64, hi: f64| {
        let xs: Vec<f64> = samples
            .iter()
            .filter(|s| s.at_s >= lo && s.at_s < hi)
            .map(&f)
            .collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    Some((
        mean(end / 3.0, 2.0 * end / 3.0)?,
        mean(2.0 * end / 3.0, f64::INFINITY)?,
    ))
}

/// Whether memory and descriptors levelled off; the reasons if not.
pub fn levelled_off(samples: &[Sample]) -> Vec<String> {
    let mut failures = Vec::new();
    match (
        thirds(samples, |s| s.rss_kib as f64),
        thirds(samples, |s| s.fds as f64),
    ) {
        (Some((rss_mid, rss_last)), Some((fd_mid, fd_last))) => {
            if rss_last > rss_mid * (1.0 + RSS_GROWTH) {
                failures.push(format!(
                    "RSS still growing: mean {:.1} MiB in the middle third, {:.1} MiB in the last \
                     (more than {:.0} %)",
                    rss_mid / 1024.0,
                    rss_last / 1024.0,
                    RSS_GROWTH * 100.0
                ));
            }
            if fd_last > fd_mid + FD_GROWTH {
                failures.push(format!(
                    "open descriptors still growing: mean {fd_mid:.1} in the middle third, \
                     {fd_last:.1} in the last (more than {FD_GROWTH} more)"
                ));
            }
        }
        _ => failures.push(format!(
            "too few samples ({}) to tell whether growth levels off",
            samples.len()
        )),
    }
    failures
}

/// Run the soak; blocks (call it from `spawn_blocking`).
pub fn run(cfg: &SoakConfig, rt: &tokio::runtime::Handle) -> SoakReport {
    let mut report = SoakReport::default();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let out_dir = crate::root().join("target").join("soak");
    let _ = std::fs::create_dir_all(&out_dir);
    let broker = TestBroker::embedded();
    let cluster = broker.cluster();
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let partitions = 4;
    let topic = crate::unique("soak");
    let out = format!("{topic}.out");
    let dlq = format!("{topic}.dlq");
    let group = crate::unique("soak-group");
    for (t, n) in [(&topic, partitions), (&out, partitions)] {
        cluster.create_topic(t, n).expect("create topic");
        for p in 0..n {
            cluster.partition_leader(t, p, 1 + p % 2).expect("leader");
        }
    }
    cluster.create_topic(&dlq, 1).expect("create dlq");
    cluster.partition_leader(&dlq, 0, 3).expect("dlq leader");
    cluster.group_coordinator(&group, 1).expect("coordinator");
    let dir = tempfile::tempdir().expect("tempdir");
    let configs =
        HANDLERS.map(|h| super::host_config(dir.path(), h, &topic, &out, &group, "1s", LEDGER_CAP));
    let versions = super::Versions::load();
    let start_host = |i: usize| {
        HostProcess::start_with_env(
            &configs[i],
            &bootstrap,
            "error",
            &[("KASM_ADMIN_TOKEN", TOKEN)],
        )
    };
    let mut host = start_host(0);
    let pid = host.pid();
    let mut producer = super::BurstProducer::start(rt.clone(), &bootstrap, &topic);
    let committed = Committed::new(&bootstrap, &group, &topic, partitions).expect("committed");
    eprintln!(
        "soak: seed {}, {} min at {} events/s, host pid {pid}",
        cfg.seed,
        cfg.duration.as_secs() / 60,
        cfg.rate
    );

    let started = Instant::now();
    let (mut next_sample, mut next_swap, mut next_fault) =
        (started, started + cfg.swap_every, started + cfg.fault_every);
    let mut active = 0;
    let tick = Duration::from_millis(100);
    let mut due: f64 = 0.0;
    let mut fault_ends: Option<(Instant, &'static str)> = None;
    let mut second: Option<HostProcess> = None;
    while started.elapsed() < cfg.duration {
        let t = Instant::now();
        // Produce at the steady rate (on the producer's thread: a fault slows the
        // acknowledgements, never this loop).
        due += f64::from(cfg.rate) * tick.as_secs_f64();
        let n = due as u64;
        due -= n as f64;
        let burst: Vec<Rec> = (report.produced..report.produced + n)
            .map(|i| Rec {
                key: Some(format!("k{i}").into_bytes()),
                payload: format!("{{\"n\":{i}}}").into_bytes(),
                headers: vec![
                    ("event-id".into(), format!("soak-{i}").into_bytes()),
                    (
                        "out-topic".into(),
                        if i % 500 == 499 {
                            format!("{out}-not-granted")
                        } else {
                            out.clone()
                        }
                        .into_bytes(),
                    ),
                ],
                partition: None,
            })
            .collect();
        producer.send(burst);
        report.produced += n;

        if let Some(status) = host.try_status() {
            report.failures.push(format!(
                "the host exited on its own ({status}); last output:\n{}",
                host.output
                    .iter()
                    .rev()
                    .take(20)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
            break;
        }
        if t >= next_sample {
            next_sample += cfg.sample_every;
            let lag = match (
                committed.get(Duration::from_secs(2)),
                committed.ends(Duration::from_secs(2)),
            ) {
                (Ok(c), Ok(e)) => e
                    .iter()
                    .map(|(p, e)| e - c.get(p).copied().unwrap_or(0))
                    .sum(),
                _ => -1,
            };
            if let Some((rss_kib, fds, threads)) = process_usage(pid) {
                report.samples.push(Sample {
                    at_s: started.elapsed().as_secs_f64(),
                    rss_kib,
                    fds,
                    threads,
                    produced: report.produced,
                    lag,
                });
            }
        }
        if let Some((until, what)) = fault_ends
            && t >= until
        {
            match what {
                "second-host" => {
                    if let Some(mut b) = second.take() {
                        b.signal("TERM");
                        let _ = b.wait_exit(Duration::from_secs(30));
                    }
                }
                _ => {
                    for id in 1..=3 {
                        let _ = cluster.broker_up(id);
                    }
                    let _ = cluster.broker_rtt(-1, Duration::ZERO);
                    for (api, _) in super::REQUEST_ERRORS {
                        let _ = cluster.clear_request_errors(*api);
                    }
                }
            }
            fault_ends = None;
        }
        if fault_ends.is_none() && t >= next_fault {
            next_fault += cfg.fault_every;
            report.faults += 1;
            let kind = *[
                "brokers-down",
                "request-errors",
                "slow-round-trips",
                "dlq-unwritable",
                "second-host",
            ]
            .choose(&mut rng)
            .expect("kind");
            let length = Duration::from_millis(rng.random_range(2000..6000));
            match kind {
                "brokers-down" => {
                    let _ = cluster.broker_down(rng.random_range(1..=2));
                }
                "request-errors" => {
                    let (api, errs) = super::REQUEST_ERRORS.choose(&mut rng).expect("api");
                    let errors: Vec<_> = (0..rng.random_range(3..=10))
                        .map(|_| *errs.choose(&mut rng).expect("error"))
                        .collect();
                    let _ = cluster.request_errors(*api, &errors);
                }
                "slow-round-trips" => {
                    let _ =
                        cluster.broker_rtt(-1, Duration::from_millis(rng.random_range(100..800)));
                }
                "dlq-unwritable" => {
                    let _ = cluster.broker_down(3);
                }
                _ => second = Some(start_host(1)),
            }
            fault_ends = Some((
                t + length.max(Duration::from_secs(if kind == "second-host" {
                    10
                } else {
                    2
                })),
                kind,
            ));
        }
        if t >= next_swap {
            next_swap += cfg.swap_every;
            active = 1 - active;
            let (code, body) = http_request(
                &host.admin,
                "PUT",
                &format!("/v1/handlers/{}/component", HANDLERS[0]),
                Some(TOKEN),
                &versions.bytes[active],
            );
            if code == 200 {
                report.swaps += 1;
            } else {
                report.failures.push(format!(
                    "swap to {} answered {code}: {body}",
                    versions.names[active]
                ));
            }
        }
        if let Some(rest) = tick.checked_sub(t.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    // Heal, let it catch up, stop it cleanly.
    for id in 1..=3 {
        let _ = cluster.broker_up(id);
    }
    let _ = cluster.broker_rtt(-1, Duration::ZERO);
    if let Some(mut b) = second.take() {
        b.signal("TERM");
        let _ = b.wait_exit(Duration::from_secs(30));
    }
    if let Err(e) = producer.finish() {
        report.failures.push(format!("producing: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let drained = loop {
        if let (Ok(c), Ok(e)) = (
            committed.get(Duration::from_secs(5)),
            committed.ends(Duration::from_secs(5)),
        ) && e.iter().all(|(p, e)| c.get(p) == Some(e) || *e == 0)
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if !drained {
        report
            .failures
            .push("the host did not catch up within 120 s after the run".to_owned());
    }
    host.signal("TERM");
    let status = host.wait_exit(Duration::from_secs(30));
    if !status.success() {
        report.failures.push(format!("exit {status} after SIGTERM"));
    }
    report.failures.extend(levelled_off(&report.samples));

    let mut csv = String::from("seconds,rss_kib,open_fds,threads,produced,lag\n");
    for s in &report.samples {
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{},{}",
            s.at_s, s.rss_kib, s.fds, s.threads, s.produced, s.lag
        );
    }
    let _ = std::fs::write(out_dir.join("samples.csv"), csv);
    let fmt_third = |f: &dyn Fn(&Sample) -> f64| {
        thirds(&report.samples, f).map_or("n/a".to_owned(), |(m, l)| format!("{m:.1} → {l:.1}"))
    };
    let first = report.samples.first().copied();
    let peak_rss = report.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    report.text = format!(
        "kasm soak\n  seed {} — {:.0} min at {} events/s: {} events, {} swaps, {} faults\n  \
         samples {} (target/soak/samples.csv)\n  \
         RSS MiB: first {:.1}, peak {:.1}, mean middle → last third {}\n  \
         open fds: first {}, mean middle → last third {}\n  \
         threads: first {}, mean middle → last third {}\n  \
         result: {}\n",
        cfg.seed,
        started.elapsed().as_secs_f64() / 60.0,
        cfg.rate,
        report.produced,
        report.swaps,
        report.faults,
        report.samples.len(),
        first.map_or(0.0, |s| s.rss_kib as f64 / 1024.0),
        peak_rss as f64 / 1024.0,
        fmt_third(&|s| s.rss_kib as f64 / 1024.0),
        first.map_or(0, |s| s.fds),
        fmt_third(&|s| s.fds as f64),
        first.map_or(0, |s| s.threads),
        fmt_third(&|s| s.threads as f64),
        if report.failures.is_empty() {
            "levelled off, caught up, clean exit".to_owned()
        } else {
            report.failures.join("; ")
        }
    );
    eprintln!("{}", report.text);
    let _ = std::fs::write(out_dir.join("summary.txt"), &report.text);
    report
}
