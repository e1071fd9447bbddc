//! The ledger as `sqlplan runs` prints it.

use std::collections::BTreeMap;

use super::Entry;

/// `sqlplan runs` as text: one line per attempt, newest first, then the stages of
/// the newest.
pub fn to_text(location: &str, entries: &[Entry]) -> String {
    use std::fmt::Write as _;
    let mut out = format!("ledger {location}\n");
    if entries.is_empty() {
        out.push_str("no runs recorded\n");
        return out;
    }
    let _ = writeln!(
        out,
        "\n{:>5} {:<20} {:<12} {:>9} {:<24} {:>10} {:>10}  note",
        "run", "started (UTC)", "status", "time s", "stages", "MB read", "MB written"
    );
    let mb = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6));
    for e in entries {
        let _ = writeln!(
            out,
            "{:>5} {:<20} {:<12} {:>9} {:<24} {:>10} {:>10}  {}",
            e.run,
            e.started.format("%Y-%m-%d %H:%M:%S"),
            e.status,
            e.seconds.map_or("-".into(), |s| format!("{s:.1}")),
            stage_counts(e),
            mb(e.bytes_scanned),
            mb(e.bytes_written),
            note(e)
        );
    }
    let newest = &entries[0];
    if !newest.stages.is_empty() {
        let _ = writeln!(out, "\nrun {} ({}), by stage:", newest.run, newest.status);
        for s in &newest.stages {
            let _ = writeln!(
                out,
                "  {:<24} {:<10} {:>9} {}",
                s.name,
                s.status,
                s.seconds.map_or("-".into(), |t| format!("{t:.1}s")),
                s.version
                    .map_or(String::new(), |v| format!("committed version {v}"))
            );
        }
    }
    out
}

fn stage_counts(e: &Entry) -> String {
    if e.stages.is_empty() {
        return "-".into();
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &e.stages {
        *counts.entry(s.status.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn note(e: &Entry) -> String {
    let mut parts = Vec::new();
    if e.resumed {
        parts.push("resumed".to_string());
    }
    match e.status.as_str() {
        "running" => parts.push(format!("process {}", e.process)),
        "interrupted" if e.superseded => parts.push(format!(
            "process {} is gone; a later run started, so this one had finished (its end was not recorded)",
            e.process
        )),
        "interrupted" => parts.push(format!(
            "process {} is gone; the next run resumes it",
            e.process
        )),
        _ => {}
    }
    if let Some(error) = &e.error {
        parts.push(error.lines().next().unwrap_or_default().to_string());
    }
    parts.join("; ")
}
