//! The admin API's answers as text for a terminal: tables, short hashes, UTC dates.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::admin::HandlerView;
use crate::admin::deploy::SwapReport;
use crate::dlq::list::Page;
use crate::dlq::replay::ReplayReport;
use crate::handler::PartitionView;
use crate::runtime::LoadSource;

pub(super) fn render_handler(h: &HandlerView) -> String {
    let mut out = String::new();
    let v = &h.active_version;
    let caps = if v.capabilities.is_empty() {
        "no capability".to_owned()
    } else {
        v.capabilities
            .iter()
            .map(|c| c.interface())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "handler    {} ({})", h.name, h.status.as_str());
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
                s.reason.to_string(),
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
    let load = match r.load {
        LoadSource::Cache => "loaded precompiled artifact",
        LoadSource::Compiled => "compiled",
    };
    let _ = writeln!(out, "{what:<10} {} (done)", r.handler);
    let _ = writeln!(out, "active     {}", r.active);
    let _ = writeln!(out, "previous   {}", r.previous);
    let _ = writeln!(out, "load       {load} in {:.1} ms", r.compile_ms);
    let _ = writeln!(out, "swap       {:.1} µs", r.swap_us);
    out
}

/// A page of dead letters as a table, and where the next page starts.
pub(super) fn render_dlq_list(page: &Page) -> String {
    let mut out = String::new();
    if page.records.is_empty() {
        let _ = writeln!(out, "no dead letters");
    } else {
        let rows = page
            .records
            .iter()
            .map(|r| {
                let p = &r.provenance;
                vec![
                    format!("{}:{}", r.partition, r.offset),
                    format!(
                        "{}/{}@{}",
                        p.source_topic.as_deref().unwrap_or("-"),
                        opt(p.source_partition),
                        opt(p.source_offset),
                    ),
                    p.error_kind.clone().unwrap_or_else(|| "-".to_owned()),
                    opt(p.attempts),
                    r.replay_count.to_string(),
                    short(p.error_message.as_deref().unwrap_or("-"), 80),
                ]
            })
            .collect();
        out.push_str(&table(
            &["DLQ", "SOURCE", "KIND", "ATTEMPTS", "REPLAYS", "MESSAGE"],
            &[false, false, false, true, true, false],
            rows,
        ));
    }
    if let Some(next) = page
        .next
        .as_ref()
        .map(ToString::to_string)
        .filter(|n| !n.is_empty())
    {
        let _ = writeln!(out, "more: --from {next}");
    }
    out
}

/// What a replay did: how many were replayed, each refusal with its reason, and where it
/// stopped.
pub(super) fn render_replay(r: &ReplayReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "replayed   {}", r.replayed.len());
    let _ = writeln!(out, "refused    {}", r.refused.len());
    for f in &r.refused {
        let _ = writeln!(
            out,
            "           {}:{}  {}: {}",
            f.dlq_partition,
            f.dlq_offset,
            f.kind.as_str(),
            f.reason
        );
    }
    if let Some(why) = &r.stopped {
        let _ = writeln!(out, "stopped    {why}");
    }
    out
}

/// Whether a replay left something undone (exit code 1).
pub(super) fn replay_incomplete(r: &ReplayReport) -> bool {
    !r.refused.is_empty() || r.stopped.is_some()
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

pub(super) fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
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
