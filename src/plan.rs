//! The Plan: one deterministic, serialisable value — ordered stages, rendered SQL,
//! dependencies, scans, warnings — and its renderings (text, JSON, Mermaid, DOT).
//! `plan` prints it; `run` executes exactly it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use serde::Serialize;
use serde_json::Value;

pub use crate::spec::{VarType, VectorOptions};

/// The version of the plan's JSON form (`plan --format json`): bumped when a field
/// changes meaning or goes away, so tools can tell what they read.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Plan {
    pub format_version: u32,
    pub pipeline: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub vars: BTreeMap<String, Value>,
    /// Each var's type: the value a `state:` stage returns is checked against it.
    pub var_types: BTreeMap<String, VarType>,
    pub tables: Vec<TablePlan>,
    /// Stage names per level; the stages of one level may run at the same time.
    pub levels: Vec<Vec<String>>,
    /// In execution order: by level, then program order.
    pub stages: Vec<StagePlan>,
    /// Per table, every scan the run will make.
    pub scans: Vec<TableScans>,
    pub warnings: Vec<Lint>,
    /// State variables → the table whose commits record them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub state: BTreeMap<String, String>,
    /// Stages `--select`/`--exclude` left out (they do not run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_selected: Vec<String>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct TablePlan {
    pub name: String,
    pub location: String,
    /// Delta version bound to; None when the run creates the table.
    pub version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<usize>,
    pub partition_by: Vec<String>,
    /// Absent and optional: not read, not created.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    pub columns: Vec<ColumnPlan>,
    /// MERGE writes deletion vectors (declared `deletion_vectors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_vectors: Option<VectorOptions>,
    /// The table has deletion vectors on already; when declared but not yet on, the
    /// run turns them on first.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub vectors_enabled: bool,
}

impl TablePlan {
    /// The schema the table has in Delta (plain types, microsecond timestamps).
    pub fn delta_schema(&self) -> Result<Schema, String> {
        Ok(crate::delta::schema::for_delta(&self.arrow_schema()?))
    }

    /// The table, created from its declared schema if absent.
    pub async fn open_or_create(&self) -> Result<deltalake::DeltaTable, String> {
        let schema = self.arrow_schema()?;
        crate::delta::open_or_create(
            &self.name,
            &self.location,
            &schema,
            &self.partition_by,
            self.deletion_vectors.is_some(),
        )
        .await
    }

    /// The Arrow schema recorded in the plan (types are Arrow's display strings).
    pub fn arrow_schema(&self) -> Result<Schema, String> {
        let fields = self
            .columns
            .iter()
            .map(|c| {
                DataType::from_str(&c.data_type)
                    .map(|dt| Field::new(&c.name, dt, c.nullable))
                    .map_err(|e| {
                        format!(
                            "column `{}` of `{}`: type `{}`: {e}",
                            c.name, self.name, c.data_type
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schema::new(fields))
    }
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ColumnPlan {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// A SELECT evaluated by each reader.
    View,
    /// A SELECT computed once; every reader reuses the result.
    Materialized,
    Insert,
    InsertOverwrite,
    Merge,
    Delete,
    Optimize,
    Vacuum,
}

impl StageKind {
    pub fn label(self) -> &'static str {
        match self {
            StageKind::View => "select (view)",
            StageKind::Materialized => "select (materialized)",
            StageKind::Insert => "insert",
            StageKind::InsertOverwrite => "insert overwrite",
            StageKind::Merge => "merge",
            StageKind::Delete => "delete",
            StageKind::Optimize => "optimize",
            StageKind::Vacuum => "vacuum",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Maintenance {
    Optimize {
        filter: Option<String>,
        zorder_by: Vec<String>,
        target_size: Option<u64>,
        /// Only partitions whose share of rows deleted by vectors is above this.
        #[serde(skip_serializing_if = "Option::is_none")]
        deleted_above: Option<f64>,
    },
    Vacuum {
        retain_hours: u64,
    },
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct StagePlan {
    pub name: String,
    /// Position in the pipeline (program order), from 0.
    pub index: usize,
    pub level: usize,
    pub kind: StageKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Declared tables and earlier relations this stage reads.
    pub reads: Vec<String>,
    /// Declared table this stage writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<String>,
    pub depends_on: Vec<Dependency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<ColumnPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// The relation's rows are included in the run report.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub report: bool,
    /// The state variable this stage's single value records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Row checks on the relation (`expect:`), in declared order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckPlan>,
    /// The table rows dropped by checks go to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
    /// DataFusion's optimized logical plan (shown with `--explain`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_plan: Option<String>,
}

/// A lint: a valid pipeline that probably does not do what its author meant.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Lint {
    /// The diagnostic code (`sqlplan::<code>`).
    pub code: &'static str,
    pub stage: String,
    /// Where the stage is declared: `file:line`.
    pub at: String,
    pub message: String,
    pub help: String,
}

/// A row check: rows for which `sql` is not true are dropped into the quarantine
/// table or fail the run (`action`).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct CheckPlan {
    pub name: String,
    pub sql: String,
    pub action: crate::spec::CheckAction,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Dependency {
    pub stage: String,
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct TableScans {
    pub table: String,
    pub full: usize,
    pub pruned: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_full_scans: Option<u64>,
    /// Every scan of the table together.
    pub estimate: Estimate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_scan_bytes: Option<u64>,
    /// What the run's writes to the table may rewrite (or mark with vectors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrites: Option<Estimate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rewrite_bytes: Option<u64>,
    pub scans: Vec<ScanPlan>,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Every file of the table.
    Full,
    /// Literal predicates on partition columns select partitions from the log.
    Partitions,
    /// Predicates on data columns: files skipped by their statistics where they can be.
    Statistics,
    /// MERGE target: delta-rs skips files outside the source's key range.
    KeyRange,
    /// Joined with a materialized relation: its key bounds become literal
    /// predicates on this scan at run time, so Delta skips files and partitions.
    Bounds,
}

impl Access {
    pub fn is_full(self) -> bool {
        self == Access::Full
    }

    pub fn label(self) -> &'static str {
        match self {
            Access::Full => "FULL",
            Access::Partitions => "pruned by partition",
            Access::Statistics => "pruned by file statistics",
            Access::KeyRange => "merge target, pruned by source key range",
            Access::Bounds => "pruned by key bounds of a materialized relation",
        }
    }
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ScanPlan {
    pub stage: String,
    /// The view through which the stage reads the table, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub access: Access,
    pub columns: Vec<String>,
    pub filters: Vec<String>,
    /// What it will read, from the Delta log (`compile/estimate.rs`).
    pub estimate: Estimate,
}

/// At least `min`, at most `max`; exact when they are equal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Span {
    pub min: u64,
    pub max: u64,
}

impl Span {
    pub fn exact(n: u64) -> Span {
        Span { min: n, max: n }
    }

    /// From nothing to `max`: a bound known only at run time can remove everything.
    pub fn up_to(self) -> Span {
        Span {
            min: 0,
            max: self.max,
        }
    }

    fn add(self, other: Span) -> Span {
        Span {
            min: self.min + other.min,
            max: self.max + other.max,
        }
    }
}

/// Files and bytes a scan reads (or a write may rewrite), estimated from the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Estimate {
    pub files: Span,
    pub bytes: Span,
}

impl Estimate {
    pub fn exact(files: u64, bytes: u64) -> Estimate {
        Estimate {
            files: Span::exact(files),
            bytes: Span::exact(bytes),
        }
    }

    pub fn up_to(self) -> Estimate {
        Estimate {
            files: self.files.up_to(),
            bytes: self.bytes.up_to(),
        }
    }

    pub fn add(self, other: Estimate) -> Estimate {
        Estimate {
            files: self.files.add(other.files),
            bytes: self.bytes.add(other.bytes),
        }
    }

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
    /// The JSON form; `explain` keeps the logical plans.
    pub fn to_json(&self, explain: bool) -> String {
        let mut plan = self.clone();
        if !explain {
            plan.stages.iter_mut().for_each(|s| s.logical_plan = None);
        }
        serde_json::to_string_pretty(&plan).expect("plans serialise") + "\n"
    }

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
            s.kind.label(),
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
            let fallback = " (copy-on-write instead if ON is not key equalities only or a clause is NOT MATCHED BY SOURCE)";
            if let (StageKind::Merge | StageKind::Delete, Some(v)) = (s.kind, vectors) {
                let _ = writeln!(
                    out,
                    "  with deletion vectors: a {} row is marked deleted in its file{}; a file is rewritten when over {}% of its live rows change, removed when all do{}",
                    if s.kind == StageKind::Merge { "changed" } else { "deleted" },
                    if s.kind == StageKind::Merge { " and its new version appended" } else { "" },
                    (v.rewrite_above * 100.0).round(),
                    if s.kind == StageKind::Merge { fallback } else { "" }
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

    /// The stage DAG as a Mermaid flowchart; edges carry their hazards.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        for s in self.stages_in_program_order() {
            let _ = writeln!(out, "  {}[\"{}<br/>{}\"]", s.name, s.name, s.kind.label());
        }
        for s in self.stages_in_program_order() {
            for d in &s.depends_on {
                let _ = writeln!(
                    out,
                    "  {} -->|\"{}\"| {}",
                    d.stage,
                    d.reasons.join("; ").replace('"', "'"),
                    s.name
                );
            }
        }
        out
    }

    /// The stage DAG in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut out = format!(
            "digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box];\n",
            self.pipeline
        );
        for s in self.stages_in_program_order() {
            let _ = writeln!(
                out,
                "  \"{}\" [label=\"{}\\n{}\"];",
                s.name,
                s.name,
                s.kind.label()
            );
        }
        for s in self.stages_in_program_order() {
            for d in &s.depends_on {
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{}\" [label=\"{}\"];",
                    d.stage,
                    s.name,
                    d.reasons.join("; ").replace('"', "'")
                );
            }
        }
        out.push_str("}\n");
        out
    }

    fn stages_in_program_order(&self) -> Vec<&StagePlan> {
        let mut stages: Vec<&StagePlan> = self.stages.iter().collect();
        stages.sort_by_key(|s| s.index);
        stages
    }
}
