//! Report: what a run did, per stage — for people (a table) and machines (JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::plan::{Plan, StageKind, StagePlan};

/// What a stage did, as far as DataFusion and delta-rs tell.
#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct StageMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_inserted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_updated: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_deleted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_added: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_removed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    /// Delta files the stage's scans planned to read (MERGE: target files scanned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_scanned: Option<u64>,
    /// Parquet bytes the stage's scans read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_scanned: Option<u64>,
    /// Literal predicates added to Delta scans from materialized relations' keys.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub literal_bounds: Vec<String>,
    /// The rows of a relation whose stage has `report: true`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reported: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Size of the local Parquet file a large materialized relation was spilled to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spilled_bytes: Option<u64>,
    /// The Delta version this stage committed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Rows failing each `expect:` check (false or NULL), by check.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, u64>,
    /// Rows the checks dropped into the quarantine table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<u64>,
    /// MERGE with deletion vectors: files given a vector (old rows marked deleted in
    /// place), files rewritten (most of their rows changed), rows deleted by vector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_with_vectors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_rewritten: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_deleted_by_vector: Option<u64>,
    /// MERGE on a cluster: how the executors found the target rows the source's
    /// keys match: `key sets` (each task holds its partitions' source keys) or
    /// `shuffle join` (target keys and source meet by key hash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_pass: Option<String>,
    /// The store lost the answer to the stage's commit (the write happened, and
    /// the retried request was refused): the log holds the commit, and the run
    /// went on from it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub commit_answer_lost: bool,
    /// The interrupted run this one resumes committed the stage: it was not run again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub committed_earlier: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Succeeded,
    Failed,
    /// Running when the run was interrupted; aborted before committing.
    Cancelled,
    /// Never started because an earlier stage failed or the run was interrupted.
    Skipped,
    /// Not run again: the interrupted run this one resumes committed it.
    Committed,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct StageReport {
    pub name: String,
    pub kind: StageKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    pub status: StageStatus,
    /// Offsets from the start of the run, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<String>,
    pub metrics: StageMetrics,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the stage failed, by kind (`conflict`, `checks_failed`, `delta`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<&'static str>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl StageReport {
    pub fn new(
        stage: &StagePlan,
        result: Result<StageMetrics, (&'static str, String)>,
        started: Duration,
        finished: Duration,
    ) -> Self {
        let (status, metrics, error) = match result {
            Ok(m) if m.committed_earlier => (StageStatus::Committed, m, None),
            Ok(m) => (StageStatus::Succeeded, m, None),
            Err(e) => (StageStatus::Failed, StageMetrics::default(), Some(e)),
        };
        let (error_kind, error) = error.map(|(k, m)| (Some(k), Some(m))).unwrap_or_default();
        StageReport {
            name: stage.name.clone(),
            kind: stage.kind(),
            template: stage.template.clone(),
            status,
            started_ms: Some(ms(started)),
            finished_ms: Some(ms(finished)),
            wall_ms: Some(ms(finished.saturating_sub(started))),
            writes: stage.writes.clone(),
            metrics,
            error,
            error_kind,
        }
    }

    pub fn not_run(stage: &StagePlan, status: StageStatus) -> Self {
        StageReport {
            name: stage.name.clone(),
            kind: stage.kind(),
            template: stage.template.clone(),
            status,
            started_ms: None,
            finished_ms: None,
            wall_ms: None,
            writes: stage.writes.clone(),
            metrics: StageMetrics::default(),
            error: None,
            error_kind: None,
        }
    }
}

/// The version of the run report's JSON form (`run --report`).
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct RunReport {
    pub format_version: u32,
    pub pipeline: String,
    /// The run number carried by this run's Delta commits (application transactions).
    pub run_number: i64,
    /// This run resumed an interrupted run (same number): stages that run had
    /// committed are `committed`, the rest ran reading the tables as of its start.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    pub status: StageStatus,
    pub wall_ms: f64,
    /// In execution order.
    pub stages: Vec<StageReport>,
    /// A run on a cluster: what this process received from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<Received>,
}

/// Rows and bytes (Arrow's in-memory size) the sqlplan process received from the
/// cluster in a run: results it needed here (MERGE sources, `report:` and
/// `state:` relations, the names of files the executors wrote).
#[derive(Clone, Copy, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct Received {
    pub rows: u64,
    pub bytes: u64,
}

impl RunReport {
    pub fn new(
        plan: &Plan,
        run_number: i64,
        resumed: bool,
        stages: Vec<StageReport>,
        wall: Duration,
    ) -> Self {
        let status = if stages.iter().any(|s| s.status == StageStatus::Failed) {
            StageStatus::Failed
        } else if stages
            .iter()
            .any(|s| matches!(s.status, StageStatus::Cancelled | StageStatus::Skipped))
        {
            StageStatus::Cancelled
        } else {
            StageStatus::Succeeded
        };
        RunReport {
            format_version: FORMAT_VERSION,
            pipeline: plan.pipeline.clone(),
            run_number,
            resumed,
            status,
            wall_ms: ms(wall),
            stages,
            received: None,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.status == StageStatus::Succeeded
    }

    pub fn failed_stage(&self) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.status == StageStatus::Failed)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialise") + "\n"
    }

    pub fn to_text(&self) -> String {
        let mut out = format!(
            "run {} of {}{}: {:?} in {:.3}s\n\n",
            self.run_number,
            self.pipeline,
            if self.resumed { " (resumed)" } else { "" },
            self.status,
            self.wall_ms / 1e3
        )
        .to_lowercase();
        let _ = writeln!(
            out,
            "{:<24} {:<22} {:<10} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6} {:>8}",
            "stage",
            "kind",
            "status",
            "time s",
            "rows out",
            "files read",
            "MB read",
            "inserted",
            "updated",
            "deleted",
            "+files",
            "-files",
            "version"
        );
        let num = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
        for s in &self.stages {
            let m = &s.metrics;
            let _ = writeln!(
                out,
                "{:<24} {:<22} {:<10} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6} {:>8}",
                s.name,
                s.kind.label(),
                format!("{:?}", s.status).to_lowercase(),
                s.wall_ms.map_or("-".into(), |w| format!("{:.3}", w / 1e3)),
                num(m.rows_out),
                num(m.files_scanned),
                m.bytes_scanned
                    .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6)),
                num(m.rows_inserted),
                num(m.rows_updated),
                num(m.rows_deleted),
                num(m.files_added),
                num(m.files_removed),
                m.version.map_or("-".into(), |v| v.to_string()),
            );
        }
        let written: Vec<&StageReport> = self
            .stages
            .iter()
            .filter(|s| s.metrics.bytes_written.is_some() || s.metrics.files_with_vectors.is_some())
            .collect();
        if !written.is_empty() {
            let _ = writeln!(out, "\nwritten:");
        }
        for s in written {
            let m = &s.metrics;
            let mut parts = Vec::new();
            if let Some(v) = m.files_with_vectors {
                parts.push(format!(
                    "{v} files given a deletion vector ({} rows deleted by vector), {} rewritten",
                    m.rows_deleted_by_vector.unwrap_or(0),
                    m.files_rewritten.unwrap_or(0)
                ));
            } else if let Some(r) = m.rows_deleted_by_vector {
                parts.push(format!("{r} rows deleted by vectors purged"));
            }
            parts.push(format!(
                "{} files added, {} removed",
                m.files_added.unwrap_or(0),
                m.files_removed.unwrap_or(0)
            ));
            if let Some(b) = m.bytes_written {
                parts.push(format!("{:.1} MB written", b as f64 / 1e6));
            }
            let _ = writeln!(out, "  {}: {}", s.name, parts.join("; "));
        }
        for s in self
            .stages
            .iter()
            .filter(|s| !s.metrics.reported.is_empty())
        {
            let _ = writeln!(out, "\n{}:", s.name);
            for row in &s.metrics.reported {
                let cells: Vec<String> = row.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(out, "  {}", cells.join("  "));
            }
        }
        for s in self.stages.iter().filter(|s| !s.metrics.checks.is_empty()) {
            let _ = writeln!(out, "\n{} checks (rows failing):", s.name);
            for (check, n) in &s.metrics.checks {
                let _ = writeln!(out, "  {check}: {n}");
            }
            if let Some(q) = s.metrics.quarantined {
                let _ = writeln!(out, "  quarantined: {q}");
            }
        }
        if let Some(r) = self.received {
            let _ = writeln!(
                out,
                "\nreceived from the cluster: {} rows, {:.1} MB",
                r.rows,
                r.bytes as f64 / 1e6
            );
        }
        for s in self.stages.iter().filter(|s| s.error.is_some()) {
            let _ = writeln!(
                out,
                "\nstage {} failed: {}",
                s.name,
                s.error.as_deref().unwrap_or("")
            );
        }
        out
    }
}

/// Rows as JSON objects (NULL columns left out), for reports and fixtures.
pub fn json_rows(
    batches: &[datafusion::arrow::array::RecordBatch],
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    writer
        .write_batches(&batches.iter().collect::<Vec<_>>())
        .map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}
