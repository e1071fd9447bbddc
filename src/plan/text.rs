//! The plan's text face: what `plan` prints for people to review.

use std::fmt::Write as _;

use serde_json::Value;

use super::{Estimate, Maintenance, Plan, StageKind, StagePlan};

impl Estimate {
    /// `12 files, 3.4 MB` or `0–360 files, 0 B–846.0 MB` for a range.
    pub fn text(&self) -> String {
        let files = if self.files.min == self.files.max {
            format!(
                "{} file{}",
                self.files.max,
                if self.files.max == 1 { "" } else { "s" }
            )
        } else {
            format!("{}–{} files", self.files.min, self.files.max)
        };
        let bytes = if self.bytes.min == self.bytes.max {
            size_text(self.bytes.max)
        } else {
            format!(
                "{}–{}",
                size_text(self.bytes.min),
                size_text(self.bytes.max)
            )
        };
        format!("{files}, {bytes}")
    }
}

/// Bytes for people: `512 B`, `3.4 KB`, `846.0 MB`, `1.2 GB` (powers of 1000).
pub fn size_text(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} KB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.1} GB", b / 1e9),
    }
}

/// A variable's value as compact JSON; a long list gets one element per line so
/// that reviewers can read (and diff) it.
fn var_text(v: &Value) -> String {
    let compact = serde_json::to_string(v).unwrap_or_default();
    match v {
        Value::Array(items) if compact.len() > 100 => {
            let lines: Vec<String> = items
                .iter()
                .map(|i| format!("    {}", serde_json::to_string(i).unwrap_or_default()))
                .collect();
            format!("[\n{}\n  ]", lines.join(",\n"))
        }
        _ => compact,
    }
}

impl Plan {
    /// The human form reviewed before merging: order, what each stage reads,
    /// writes and runs, and every scan per table.
    pub fn to_text(&self, explain: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "pipeline {}", self.pipeline);
        if let Some(d) = &self.description {
            for line in d.trim().lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        if !self.vars.is_empty() {
            let _ = writeln!(out, "\nvars");
            for (k, v) in &self.vars {
                let ty = self
                    .var_types
                    .get(k)
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default();
                let _ = writeln!(out, "  {k}{ty} = {}", var_text(v));
            }
        }
        let _ = writeln!(out, "\ntables");
        for t in &self.tables {
            let state = match (t.version, t.files) {
                (Some(v), Some(f)) => format!("version {v}, {f} files"),
                (Some(v), None) => format!("version {v}"),
                _ if t.optional => "absent, optional: not read".to_string(),
                _ => "created by the run".to_string(),
            };
            let mut parts = if t.partition_by.is_empty() {
                String::new()
            } else {
                format!(", partitioned by {}", t.partition_by.join(", "))
            };
            if t.deletion_vectors.is_some() {
                parts.push_str(match (t.vectors_enabled, t.version) {
                    (false, Some(_)) => ", deletion vectors (turned on by the run)",
                    _ => ", deletion vectors",
                });
            }
            let _ = writeln!(
                out,
                "  {:<20} {} ({state}{parts}, {} columns)",
                t.name,
                t.location,
                t.columns.len()
            );
        }
        if !self.not_selected.is_empty() {
            let _ = writeln!(
                out,
                "\nselection: {} stages run; not selected: {}",
                self.stages.len(),
                self.not_selected.join(", ")
            );
        }
        let _ = writeln!(out, "\norder");
        for (i, level) in self.levels.iter().enumerate() {
            let _ = writeln!(out, "  level {i}: {}", level.join(", "));
        }
        for s in &self.stages {
            self.stage_text(&mut out, s, explain);
        }
        let _ = writeln!(out, "\nscans");
        let total = self
            .scans
            .iter()
            .fold(Estimate::default(), |a, t| a.add(t.estimate));
        let _ = writeln!(
            out,
            "  the run reads {} (estimated from the Delta logs)",
            total.text()
        );
        out.push_str(&self.scans_text(true));
        let _ = writeln!(out, "\nwarnings");
        if self.warnings.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for w in &self.warnings {
            let _ = writeln!(out, "  - {} [sqlplan::{}, {}]", w.message, w.code, w.at);
            let _ = writeln!(out, "    help: {}", w.help);
        }
        out
    }

    /// Every scan of every table, full or pruned, with its filters (and the columns
    /// read, if `columns`): the `scans` section of the text plan.
    pub fn scans_text(&self, columns: bool) -> String {
        let mut out = String::new();
        for t in &self.scans {
            let budget = t
                .max_full_scans
                .map(|b| format!(", budget {b} full"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}: {} scans ({} full, {} pruned{budget})",
                t.table,
                t.scans.len(),
                t.full,
                t.pruned
            );
            if !t.scans.is_empty() {
                let budget = t
                    .max_scan_bytes
                    .map(|b| format!(" (budget {})", size_text(b)))
                    .unwrap_or_default();
                let _ = writeln!(out, "    reads {}{budget}", t.estimate.text());
            }
            if let Some(r) = &t.rewrites {
                let budget = t
                    .max_rewrite_bytes
                    .map(|b| format!(" (budget {})", size_text(b)))
                    .unwrap_or_default();
                let vectors = self
                    .tables
                    .iter()
                    .any(|tp| tp.name == t.table && tp.deletion_vectors.is_some());
                let how = if vectors {
                    "may rewrite or mark with deletion vectors"
                } else {
                    "may rewrite"
                };
                let _ = writeln!(out, "    writes {how} {}{budget}", r.text());
            }
            for s in &t.scans {
                let via = s
                    .via
                    .as_ref()
                    .map(|v| format!(" via {v}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    {}{via}: {}; {}",
                    s.stage,
                    s.access.label(),
                    s.estimate.text()
                );
                if !s.filters.is_empty() {
                    for f in &s.filters {
                        let _ = writeln!(out, "      filter: {f}");
                    }
                }
                if columns && !s.columns.is_empty() {
                    let _ = writeln!(out, "      columns: {}", s.columns.join(", "));
                }
            }
        }
        out
    }

    fn stage_text(&self, out: &mut String, s: &StagePlan, explain: bool) {
        let template = s
            .template
            .as_ref()
            .map(|t| format!("  [{t}]"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\nstage {} — {}, level {}{template}",
            s.name,
            s.kind().label(),
            s.level
        );
        if let Some(d) = &s.description {
            let _ = writeln!(out, "  {}", d.trim().replace('\n', "\n  "));
        }
        if !s.reads.is_empty() {
            let _ = writeln!(out, "  reads: {}", s.reads.join(", "));
        }
        if let Some(w) = &s.writes {
            let _ = writeln!(out, "  writes: {w}");
            let vectors = self
                .tables
                .iter()
                .find(|t| &t.name == w)
                .and_then(|t| t.deletion_vectors.as_ref());
            let fallback = " (copy-on-write instead if ON is not key equalities only \
                            or a clause is NOT MATCHED BY SOURCE)";
            if let (true, Some(v)) = (s.kind().changes_existing_rows(), vectors) {
                let _ = writeln!(
                    out,
                    "  with deletion vectors: a {} row is marked deleted in its file{}; a file is rewritten when over {}% of its live rows change, removed when all do{}",
                    if s.kind() == StageKind::Merge { "changed" } else { "deleted" },
                    if s.kind() == StageKind::Merge { " and its new version appended" } else { "" },
                    (v.rewrite_above * 100.0).round(),
                    if s.kind() == StageKind::Merge { fallback } else { "" }
                );
            }
        }
        for c in &s.checks {
            let action = match c.action {
                crate::spec::CheckAction::Drop => format!(
                    "drop into {}",
                    s.quarantine.as_deref().unwrap_or("quarantine")
                ),
                crate::spec::CheckAction::Fail => "fail the run".to_string(),
            };
            let _ = writeln!(out, "  check {}: {} (else {action})", c.name, c.sql);
        }
        for d in &s.depends_on {
            let _ = writeln!(out, "  after {}: {}", d.stage, d.reasons.join("; "));
        }
        if let Some(m) = &s.maintenance {
            let _ = writeln!(
                out,
                "  {}",
                match m {
                    Maintenance::Optimize {
                        filter,
                        zorder_by,
                        target_size,
                        deleted_above,
                    } => format!(
                        "optimize{}{}{}{}",
                        deleted_above
                            .map(|d| format!(
                                " the partitions with over {}% of their rows deleted by vectors (all their files rewritten without those rows)",
                                (d * 100.0 * 100.0).round() / 100.0
                            ))
                            .unwrap_or_default(),
                        filter
                            .as_ref()
                            .map(|f| format!(" where {f}"))
                            .unwrap_or_default(),
                        if zorder_by.is_empty() {
                            String::new()
                        } else {
                            format!(" z-order by {}", zorder_by.join(", "))
                        },
                        target_size
                            .map(|t| format!(" target size {t} bytes"))
                            .unwrap_or_default()
                    ),
                    Maintenance::Vacuum { retain_hours } =>
                        format!("vacuum files older than {retain_hours} h"),
                }
            );
        }
        if let Some(sql) = &s.sql {
            let _ = writeln!(out, "  sql:");
            for line in sql.trim_end().lines() {
                let _ = writeln!(out, "    | {line}");
            }
        }
        if explain {
            if let Some(lp) = &s.logical_plan {
                let _ = writeln!(out, "  logical plan:");
                for line in lp.lines() {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
    }
}
