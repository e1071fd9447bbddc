//! The Plan: one deterministic, serialisable value — ordered stages, rendered SQL,
//! dependencies, scans, warnings — and its JSON form; the text face is in
//! `text.rs`, the graph faces (Mermaid, DOT) in `graph.rs`.
//! `plan` prints it; `run` executes exactly it.

use std::collections::BTreeMap;
use std::str::FromStr;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Query, Statement};
use serde::Serialize;
use serde_json::Value;

use crate::diag::Code;

mod graph;
mod text;

pub use text::size_text;

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
        .map_err(|e| e.to_string())
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

/// What a stage does, as compile parsed and bound it. The executor runs this value
/// and never parses SQL, so `run` executes exactly the Plan by construction.
///
/// A new stage kind starts here: its variant here and in `StageKind`, then the
/// compiler points at every match that must learn it (binding, the executor's
/// dispatch, labels and scan accounting).
#[derive(Clone, Debug)]
pub enum Work {
    /// A SELECT evaluated by each reader.
    View(Box<Query>),
    /// A SELECT computed once; every reader reuses the result.
    Materialized(Box<Query>),
    /// INSERT, or INSERT OVERWRITE of the partitions the query produces.
    Insert {
        source: Box<Query>,
        /// The target columns the statement names, lower case; empty: by position.
        columns: Vec<String>,
        overwrite: bool,
    },
    /// The whole MERGE statement (DataFusion plans it into its source and clauses).
    Merge(Box<Statement>),
    /// DELETE: its WHERE, if any (none deletes every row).
    Delete {
        selection: Option<SqlExpr>,
    },
    /// Compaction or z-order; the filter on partition columns, parsed. The other
    /// options are in the stage's `maintenance`.
    Optimize {
        filter: Option<SqlExpr>,
    },
    Vacuum,
}

impl Work {
    pub fn kind(&self) -> StageKind {
        match self {
            Work::View(_) => StageKind::View,
            Work::Materialized(_) => StageKind::Materialized,
            Work::Insert {
                overwrite: false, ..
            } => StageKind::Insert,
            Work::Insert {
                overwrite: true, ..
            } => StageKind::InsertOverwrite,
            Work::Merge(_) => StageKind::Merge,
            Work::Delete { .. } => StageKind::Delete,
            Work::Optimize { .. } => StageKind::Optimize,
            Work::Vacuum => StageKind::Vacuum,
        }
    }
}

/// The name of what a stage does, as the plan's JSON and text show it.
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

    /// The stage defines a relation that later stages read by its name.
    pub fn defines_relation(self) -> bool {
        match self {
            StageKind::View | StageKind::Materialized => true,
            StageKind::Insert
            | StageKind::InsertOverwrite
            | StageKind::Merge
            | StageKind::Delete
            | StageKind::Optimize
            | StageKind::Vacuum => false,
        }
    }

    /// The stage changes rows of the table's existing files: it rewrites them, or
    /// marks rows deleted with vectors.
    pub fn changes_existing_rows(self) -> bool {
        match self {
            StageKind::Merge | StageKind::Delete => true,
            StageKind::View
            | StageKind::Materialized
            | StageKind::Insert
            | StageKind::InsertOverwrite
            | StageKind::Optimize
            | StageKind::Vacuum => false,
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
    /// What the stage does; its JSON form is the kind's name.
    #[serde(rename = "kind", serialize_with = "serialize_kind")]
    #[schemars(rename = "kind", with = "StageKind")]
    pub work: Work,
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

impl StagePlan {
    pub fn kind(&self) -> StageKind {
        self.work.kind()
    }
}

fn serialize_kind<S: serde::Serializer>(work: &Work, s: S) -> Result<S::Ok, S::Error> {
    work.kind().serialize(s)
}

/// A lint: a valid pipeline that probably does not do what its author meant.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Lint {
    /// The diagnostic code (`sqlplan::<code>`).
    #[schemars(with = "String")]
    pub code: Code,
    pub stage: String,
    /// Where the stage is declared: `file:line`.
    pub at: String,
    /// The same place in the pipeline's YAML, for tools that mark it in the file.
    #[serde(skip)]
    pub span: Option<miette::SourceSpan>,
    pub message: String,
    pub help: String,
}

/// A row check: rows for which `sql` is not true are dropped into the quarantine
/// table or fail the run (`action`).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct CheckPlan {
    pub name: String,
    pub sql: String,
    /// `sql`, parsed: what the executor binds against the relation.
    #[serde(skip)]
    pub expr: SqlExpr,
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
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema, serde::Deserialize,
)]
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
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema, serde::Deserialize,
)]
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
}
