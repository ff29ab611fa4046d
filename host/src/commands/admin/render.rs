//! The admin API's answers as text for a terminal: tables, short hashes, UTC dates.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::{HandlerView, PartitionView, SwapReport};

pub(super) fn render_handler(h: &HandlerView) -> String {
    let mut out = String::new();
    let v = &h.active_version;
    let caps = if v.capabilities.is_empty() {
        "no capability".to_owned()
    } else {
        v.capabilities.join(", ")
    };
    let _ = writeln!(out, "handler    {} ({})", h.name, h.status);
    let _ = writeln!(out, "group      {}", h.group_id);
    let _ = writeln!(out, "topics     {}", h.topics.join(", "));
    let _ = writeln!(out, "version    {}", v.sha256);
    let _ = writeln!(
        out,
        "           {:.1} KiB, needs {caps}",
        v.size as f64 / 1024.0
    );
    let c = &h.counters;
    let _ = writeln!(
        out,
        "counters   processed {}  skipped {}  retried {}  dead-lettered {}",
        c.processed, c.skipped, c.retried, c.dead_lettered
    );

    let _ = writeln!(out, "\nhistory (oldest first)");
    if h.history.is_empty() {
        let _ = writeln!(out, "  none");
    }
    let rows = h
        .history
        .iter()
        .map(|s| {
            let from = s.from.as_deref().map_or("-", short_sha);
            let mut firsts: Vec<(&String, &i64)> = s.first_offsets.iter().collect();
            firsts.sort_by_key(|(k, _)| partition_key(k));
            let firsts: Vec<String> = firsts.iter().map(|(k, o)| format!("{k}@{o}")).collect();
            vec![
                utc(s.at_ms),
                s.reason.clone(),
                format!("{from} → {}", short_sha(&s.to)),
                if firsts.is_empty() {
                    "-".to_owned()
                } else {
                    firsts.join(" ")
                },
            ]
        })
        .collect::<Vec<_>>();
    if !rows.is_empty() {
        out.push_str(&indent(&table(
            &["TIME (UTC)", "REASON", "FROM → TO", "FIRST OFFSETS"],
            &[false; 4],
            rows,
        )));
    }

    let _ = writeln!(out, "\npartitions");
    if h.partitions.is_empty() {
        let _ = writeln!(out, "  none assigned");
    } else {
        let mut parts: Vec<(&String, &PartitionView)> = h.partitions.iter().collect();
        parts.sort_by_key(|(k, _)| partition_key(k));
        let rows = parts
            .iter()
            .map(|(k, p)| {
                vec![
                    (*k).clone(),
                    opt(p.committed),
                    opt(p.lag),
                    p.in_flight.to_string(),
                    if p.paused { "yes" } else { "no" }.to_owned(),
                ]
            })
            .collect();
        out.push_str(&indent(&table(
            &["PARTITION", "COMMITTED", "LAG", "IN FLIGHT", "PAUSED"],
            &[false, true, true, true, false],
            rows,
        )));
    }
    out
}

pub(super) fn render_swap(r: &SwapReport, what: &str) -> String {
    let mut out = String::new();
    if r.active == r.previous {
        let _ = writeln!(out, "unchanged  {} already runs this version", r.handler);
        let _ = writeln!(out, "active     {}", r.active);
        return out;
    }
    let load = match r.load.as_str() {
        "cache" => "loaded precompiled artifact",
        "" | "compiled" => "compiled",
        other => other,
    };
    let _ = writeln!(out, "{what:<10} {} (done)", r.handler);
    let _ = writeln!(out, "active     {}", r.active);
    let _ = writeln!(out, "previous   {}", r.previous);
    let _ = writeln!(out, "load       {load} in {:.1} ms", r.compile_ms);
    let _ = writeln!(out, "swap       {:.1} µs", r.swap_us);
    out
}

pub(super) fn render_dlq_list(v: &Value) -> String {
    let empty = Vec::new();
    let records = v
        .as_array()
        .or_else(|| {
            ["records", "items", "entries", "dead_letters"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_array))
        })
        .unwrap_or(&empty);
    let mut out = String::new();
    if records.is_empty() {
        let _ = writeln!(out, "no dead letters");
    } else {
        let rows = records
            .iter()
            .map(|r| {
                let f = |paths: &[&str]| field(r, paths).unwrap_or_else(|| "-".to_owned());
                let source = format!(
                    "{}/{}@{}",
                    f(&[
                        "provenance.source_topic",
                        "source.topic",
                        "source_topic",
                        "headers.kasm-dlq-source-topic",
                    ]),
                    f(&[
                        "provenance.source_partition",
                        "source.partition",
                        "source_partition",
                        "headers.kasm-dlq-source-partition",
                    ]),
                    f(&[
                        "provenance.source_offset",
                        "source.offset",
                        "source_offset",
                        "headers.kasm-dlq-source-offset",
                    ]),
                );
                let message = f(&[
                    "provenance.error_message",
                    "error_message",
                    "error.message",
                    "message",
                    "reason",
                    "error",
                    "headers.kasm-dlq-error-message",
                ]);
                vec![
                    format!(
                        "{}:{}",
                        f(&[
                            "partition",
                            "dlq_partition",
                            "dlq.partition",
                            "position.partition"
                        ]),
                        f(&["offset", "dlq_offset", "dlq.offset", "position.offset"]),
                    ),
                    source,
                    f(&[
                        "provenance.error_kind",
                        "error_kind",
                        "error.kind",
                        "kind",
                        "headers.kasm-dlq-error-kind",
                    ]),
                    f(&[
                        "provenance.attempts",
                        "attempts",
                        "error.attempts",
                        "headers.kasm-dlq-attempts",
                    ]),
                    f(&["replay_count", "replays", "headers.kasm-replay-count"]),
                    short(&message, 80),
                ]
            })
            .collect();
        out.push_str(&table(
            &["DLQ", "SOURCE", "KIND", "ATTEMPTS", "REPLAYS", "MESSAGE"],
            &[false, false, false, true, true, false],
            rows,
        ));
    }
    if let Some(next) =
        field(v, &["next", "next_cursor", "next_from", "cursor"]).filter(|n| !n.is_empty())
    {
        let _ = writeln!(out, "more: --from {next}");
    }
    out
}

pub(super) fn render_replay(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "replayed   {}", count(v.get("replayed")));
    let refused = v.get("refused");
    let _ = writeln!(out, "refused    {}", count(refused));
    let reasons: Vec<String> = match refused {
        Some(Value::Array(items)) => items
            .iter()
            .map(|r| match r {
                Value::Object(_) => {
                    let at = match (
                        field(r, &["dlq_partition", "partition"]),
                        field(r, &["dlq_offset", "offset"]),
                    ) {
                        (Some(p), Some(o)) => format!("{p}:{o}"),
                        _ => "-".to_owned(),
                    };
                    let why =
                        field(r, &["reason", "error", "message"]).unwrap_or_else(|| r.to_string());
                    match field(r, &["kind"]) {
                        Some(kind) => format!("{at}  {kind}: {why}"),
                        None => format!("{at}  {why}"),
                    }
                }
                other => scalar(other).unwrap_or_else(|| other.to_string()),
            })
            .collect(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, r)| format!("{k}  {}", scalar(r).unwrap_or_else(|| r.to_string())))
            .collect(),
        _ => Vec::new(),
    };
    for r in reasons {
        let _ = writeln!(out, "           {r}");
    }
    if let Some(why) = field(v, &["stopped"]) {
        let _ = writeln!(out, "stopped    {why}");
    }
    out
}

/// Whether a replay did less than asked: some dead letters refused, or it stopped early.
pub(super) fn replay_incomplete(v: &Value) -> bool {
    count(v.get("refused")) > 0 || field(v, &["stopped"]).is_some()
}

/// A count from a number, or the length of an array or object.
pub(super) fn count(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::Array(a)) => a.len() as u64,
        Some(Value::Object(m)) => m.len() as u64,
        _ => 0,
    }
}

/// A string, number or bool as text.
pub(super) fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The first of `paths` (dot-separated) that holds a scalar in `v`, as text. A step into an
/// array of `[name, value]` pairs (how headers may come) takes the last pair of that name.
pub(super) fn field(v: &Value, paths: &[&str]) -> Option<String> {
    paths.iter().find_map(|path| {
        let mut cur = v;
        for k in path.split('.') {
            cur = match cur {
                Value::Array(pairs) => pairs
                    .iter()
                    .rev()
                    .find(|p| p.get(0).and_then(Value::as_str) == Some(k))
                    .and_then(|p| p.get(1))?,
                other => other.get(k)?,
            };
        }
        scalar(cur)
    })
}

/// At most `max` characters of `s` on one line.
pub(super) fn short(s: &str, max: usize) -> String {
    let one_line: String = s
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

pub(super) fn short_sha(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

pub(super) fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

pub(super) fn total_lag(parts: &BTreeMap<String, PartitionView>) -> String {
    let known: Vec<i64> = parts.values().filter_map(|p| p.lag).collect();
    if known.is_empty() {
        "-".to_owned()
    } else {
        known.iter().sum::<i64>().to_string()
    }
}

/// Sort key of `topic/partition`: by topic, then partition number (so 2 comes before 10).
pub(super) fn partition_key(k: &str) -> (String, i64) {
    match k.rsplit_once('/') {
        Some((t, p)) => (t.to_owned(), p.parse().unwrap_or(i64::MAX)),
        None => (k.to_owned(), i64::MAX),
    }
}

/// Columns padded to their widest cell, two spaces apart; `right[i]` right-aligns column `i`.
pub(super) fn table(headers: &[&str], right: &[bool], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(super) fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of ms since the Unix epoch.
pub(super) fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
