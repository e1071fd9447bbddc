//! The run ledger: a Delta table `_sqlplan/runs` beside the tables a pipeline's runs
//! finish on, with a row when a run starts and a row when it ends. It is what a
//! person on call reads first (`sqlplan runs`): which run, when, how it ended, what
//! it read (every table's version at its start), what each stage did and committed,
//! and what it cost.
//!
//! Rows are only ever appended. A run that dies leaves its start row alone; read
//! back, it shows as `running` while its process lives and `interrupted` after. The
//! ledger is a record, not a control: resume decides from the tables' own logs
//! (`exec/resume.rs`), so a lost ledger row never loses or repeats a write.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde::Serialize;
use serde_json::Value;

use crate::delta;
use crate::delta::error::{Error, Result};
use crate::report::{RunReport, StageStatus};

mod text;
pub use text::to_text;

/// The ledger's folder name under the control folder (`_sqlplan/`).
const TABLE: &str = "runs";

/// One attempt of a run: a fresh run, or a resumption of an interrupted one (same
/// number, later start).
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub pipeline: String,
    pub run: i64,
    pub started: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<DateTime<Utc>>,
    /// `running` or `interrupted` (no end row: the process is alive, or gone),
    /// `succeeded`, `failed`, `cancelled`, `abandoned`.
    pub status: String,
    pub resumed: bool,
    /// The fingerprint of the plan and vars (as in every commit of the run).
    pub plan_hash: String,
    pub vars: Value,
    /// Every table's version when the run started (what it reads).
    pub read_versions: BTreeMap<String, i64>,
    /// Per stage, at the end: status, the version it committed, time and bytes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_scanned: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    /// `pid@host` of the process that ran it.
    pub process: String,
    /// A later run number of the pipeline started: this attempt's run is over
    /// whatever its status says (a run takes the next number only once the last one
    /// finished or was abandoned; this one died after its finish commit, before its
    /// end row).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub superseded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub sqlplan_version: String,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct StageEntry {
    pub name: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_scanned: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
}

impl Entry {
    /// The start row of a run about to execute.
    pub fn start(plan: &crate::plan::Plan, tag: &delta::RunTag, resumed: bool) -> Entry {
        Entry {
            pipeline: plan.pipeline.clone(),
            run: tag.run_number,
            started: now(),
            ended: None,
            status: "running".into(),
            resumed,
            plan_hash: tag.plan_hash.clone(),
            vars: serde_json::to_value(&plan.vars).unwrap_or(Value::Null),
            read_versions: tag.start_versions.clone(),
            stages: Vec::new(),
            seconds: None,
            bytes_scanned: None,
            bytes_written: None,
            process: process(),
            superseded: false,
            error: None,
            sqlplan_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// The end row: the start row with how the run ended. `error` is set when the
    /// run failed after its stages (the finish commit).
    /// What tells this row from every other: the attempt (pipeline, run, start)
    /// and whether it is the attempt's start or its end.
    fn identity(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.pipeline,
            self.run,
            self.started.to_rfc3339(),
            if self.ended.is_some() {
                &self.status
            } else {
                "start"
            }
        )
    }

    pub fn end(&self, report: &RunReport, error: Option<String>) -> Entry {
        let stages: Vec<StageEntry> = report
            .stages
            .iter()
            .map(|s| StageEntry {
                name: s.name.clone(),
                status: status_name(s.status).into(),
                version: s.metrics.version,
                seconds: s.wall_ms.map(|ms| ms / 1e3),
                bytes_scanned: s.metrics.bytes_scanned,
                bytes_written: s.metrics.bytes_written,
            })
            .collect();
        let total =
            |f: fn(&StageEntry) -> Option<u64>| stages.iter().filter_map(f).reduce(|a, b| a + b);
        let error = error.or_else(|| {
            report
                .failed_stage()
                .map(|s| format!("stage `{}`: {}", s.name, s.error.as_deref().unwrap_or("")))
        });
        Entry {
            ended: Some(now()),
            status: if error.is_some() {
                "failed".into()
            } else {
                status_name(report.status).into()
            },
            bytes_scanned: total(|s| s.bytes_scanned),
            bytes_written: total(|s| s.bytes_written),
            seconds: Some(report.wall_ms / 1e3),
            stages,
            error,
            ..self.clone()
        }
    }

    /// The end row of an unfinished run that `--abandon` ended (its start is not
    /// known here: the restore is what ended it).
    pub fn abandoned(
        plan: &crate::plan::Plan,
        tag: &delta::RunTag,
        restored: &BTreeMap<String, i64>,
    ) -> Entry {
        let mut entry = Entry::start(plan, tag, false);
        // Its plan and vars are in its commits, not here: this run's may differ.
        entry.plan_hash = String::new();
        entry.vars = Value::Null;
        entry.process = String::new();
        entry.ended = Some(entry.started);
        entry.status = "abandoned".into();
        entry.error = Some(format!(
            "abandoned by a later run: {}",
            restored
                .iter()
                .map(|(t, v)| format!("`{t}` restored to version {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        entry
    }
}

fn status_name(status: StageStatus) -> &'static str {
    match status {
        StageStatus::Succeeded => "succeeded",
        StageStatus::Failed => "failed",
        StageStatus::Cancelled => "cancelled",
        StageStatus::Skipped => "skipped",
        StageStatus::Committed => "committed",
    }
}

fn now() -> DateTime<Utc> {
    // Microseconds: what the table keeps, so a start row and its end row agree.
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

use super::host;

fn process() -> String {
    format!("{}@{}", std::process::id(), host())
}

/// Whether the process that wrote a start row still lives (on this host; a process
/// of another host is taken as alive).
fn alive(process: &str) -> bool {
    match process.split_once('@') {
        Some((pid, h)) if h == host() => std::path::Path::new(&format!("/proc/{pid}")).exists(),
        _ => true,
    }
}

/// On an object store (no `/proc` to ask, and runs on any host): each
/// pipeline's live lease holder beside the ledger at `location` (None for a
/// local ledger, whose runs are checked by their process).
async fn lease_holders(
    location: &str,
    pipelines: &BTreeMap<String, i64>,
) -> Result<Option<BTreeMap<String, Option<String>>>> {
    let url = delta::table_url(location)?;
    if url.scheme() == "file" {
        return Ok(None);
    }
    let (store, ledger) = delta::stores::store_for(&url)?;
    let folder: deltalake::Path = ledger
        .parts()
        .take(ledger.parts().count().saturating_sub(1))
        .collect();
    let mut holders = BTreeMap::new();
    for pipeline in pipelines.keys() {
        let path = folder.clone().join(format!("{pipeline}.lease"));
        let holder = super::lease::live_holder(&store, &path)
            .await
            .map_err(|e| match e {
                super::Error::Store(e) => e,
                other => delta::Error::table(other.to_string()),
            })?;
        holders.insert(pipeline.clone(), holder);
    }
    Ok(Some(holders))
}

/// Where the ledger of runs finishing on these tables lives: `_sqlplan/runs` beside
/// the first finish table.
pub fn location(plan: &crate::plan::Plan) -> Result<Option<String>> {
    Ok(super::control_url(plan)?.map(|u| format!("{}{TABLE}", u.as_str())))
}

fn schema() -> Schema {
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    let micros = |name: &str, nullable: bool| {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            nullable,
        )
    };
    Schema::new(vec![
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("run", DataType::Int64, false),
        micros("started", false),
        micros("ended", true),
        text("status"),
        Field::new("resumed", DataType::Boolean, true),
        text("plan_hash"),
        text("vars"),
        text("read_versions"),
        text("stages"),
        Field::new("seconds", DataType::Float64, true),
        Field::new("bytes_scanned", DataType::Int64, true),
        Field::new("bytes_written", DataType::Int64, true),
        text("process"),
        text("error"),
        text("sqlplan_version"),
    ])
}

fn to_batch(entry: &Entry) -> Result<RecordBatch> {
    let text = |s: Option<String>| Arc::new(StringArray::from(vec![s])) as ArrayRef;
    let int = |n: Option<u64>| Arc::new(Int64Array::from(vec![n.map(|n| n as i64)])) as ArrayRef;
    let micros = |t: Option<DateTime<Utc>>| {
        Arc::new(
            TimestampMicrosecondArray::from(vec![t.map(|t| t.timestamp_micros())])
                .with_timezone("UTC"),
        ) as ArrayRef
    };
    let columns: Vec<ArrayRef> = vec![
        text(Some(entry.pipeline.clone())),
        Arc::new(Int64Array::from(vec![entry.run])),
        micros(Some(entry.started)),
        micros(entry.ended),
        text(Some(entry.status.clone())),
        Arc::new(BooleanArray::from(vec![entry.resumed])),
        text(Some(entry.plan_hash.clone())),
        text(Some(json(&entry.vars))),
        text(Some(json(&entry.read_versions))),
        text(entry.ended.map(|_| json(&entry.stages))),
        Arc::new(Float64Array::from(vec![entry.seconds])),
        int(entry.bytes_scanned),
        int(entry.bytes_written),
        text(Some(entry.process.clone())),
        text(entry.error.clone()),
        text(Some(entry.sqlplan_version.clone())),
    ];
    RecordBatch::try_new(Arc::new(schema()), columns).map_err(Error::from)
}

/// JSON text of a value (the ledger keeps maps and lists as JSON).
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Files the ledger may hold before an append compacts it (each append adds one).
const COMPACT_ABOVE: usize = 64;

/// Appends one row (one Delta commit), creating the ledger on first use; every
/// `COMPACT_ABOVE` rows or so, compacts it into one file, so that reading it stays
/// one small scan however many runs it records.
///
/// Each row's commit carries the row's identity (`sqlplan.ledger`) and an
/// application transaction of the pipeline: when the store loses the answer to
/// the commit, the retried commit is refused (the version exists and carries the
/// same transaction), and the row found in the log counts as appended, once.
pub async fn append(location: &str, entry: &Entry) -> Result<()> {
    let row = serde_json::json!(entry.identity());
    // A write the store cut before its answer, and the client could not send
    // again, is tried anew: the row's identity keeps it from landing twice.
    let mut tries = 0;
    let table = loop {
        tries += 1;
        match append_once(location, entry, &row).await {
            Ok(table) => break table,
            Err(error) => {
                if let Some(table) = appended(location, &row).await {
                    break table;
                }
                if tries == APPEND_TRIES {
                    return Err(error);
                }
                tokio::time::sleep(std::time::Duration::from_millis(500 * tries)).await;
            }
        }
    };
    let files = table
        .snapshot()
        .map(|s| s.log_data().num_files())
        .unwrap_or_default();
    if files > COMPACT_ABOVE {
        // The row is in; a compaction that fails (a store fault) waits for the next.
        if let Err(e) = table.optimize().await {
            eprintln!("sqlplan: warning: compacting the run ledger failed: {e}");
        }
    }
    Ok(())
}

/// How many times a row's append is tried.
const APPEND_TRIES: u64 = 3;

async fn append_once(
    location: &str,
    entry: &Entry,
    row: &serde_json::Value,
) -> Result<deltalake::DeltaTable> {
    let table = delta::open_or_create("runs", location, &schema(), &[], false).await?;
    let props = deltalake::kernel::transaction::CommitProperties::default()
        .with_application_transaction(deltalake::kernel::Transaction::new(
            format!("sqlplan:{}#ledger", entry.pipeline),
            entry.run,
        ))
        .with_metadata([(LEDGER_KEY.to_string(), row.clone())]);
    table
        .write(vec![to_batch(entry)?])
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .with_writer_properties(delta::writer_properties())
        .with_commit_properties(props)
        .await
        .map_err(|e| Error::doing(format!("cannot append to the run ledger at {location}"), e))
}

/// The ledger at its newest, if it holds the row `row` (its commit landed, though
/// the store lost the answer).
async fn appended(location: &str, row: &serde_json::Value) -> Option<deltalake::DeltaTable> {
    let newest = delta::open("runs", location, None).await.ok()?;
    let recent = delta::commit::history(&newest, 20).await.ok()?;
    recent
        .iter()
        .any(|c| c.info.get(LEDGER_KEY) == Some(row))
        .then_some(newest)
}

/// Commit metadata key of a ledger row's identity.
pub const LEDGER_KEY: &str = "sqlplan.ledger";

/// The ledger's attempts of `pipeline`, newest first: each start row paired with its
/// end row (same pipeline, run and start time).
pub async fn read(location: &str, pipeline: &str) -> Result<Vec<Entry>> {
    let mut out = read_all(location).await?;
    out.retain(|e| e.pipeline == pipeline);
    Ok(out)
}

/// Every attempt of every pipeline, newest first.
async fn read_all(location: &str) -> Result<Vec<Entry>> {
    let Some(table) = delta::open_if_exists(&delta::table_url(location)?).await? else {
        return Ok(Vec::new());
    };
    let ctx = crate::session::new_context();
    let batches = ctx
        .read_table(delta::scan::provider(&table, false).await?)
        .map_err(Error::from)?
        .collect()
        .await
        .map_err(Error::from)?;
    let mut attempts: BTreeMap<(i64, String, i64), Entry> = BTreeMap::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            let entry = from_row(batch, row)?;
            let key = (
                entry.started.timestamp_micros(),
                entry.pipeline.clone(),
                entry.run,
            );
            // An end row replaces its start row.
            if attempts.get(&key).is_none_or(|e| e.ended.is_none()) {
                attempts.insert(key, entry);
            }
        }
    }
    let mut out: Vec<Entry> = attempts.into_values().rev().collect();
    let mut newest_run: BTreeMap<String, i64> = BTreeMap::new();
    for entry in &out {
        let n = newest_run.entry(entry.pipeline.clone()).or_default();
        *n = (*n).max(entry.run);
    }
    let leases = lease_holders(location, &newest_run).await?;
    for entry in &mut out {
        let alive = match &leases {
            Some(holders) => holders.get(&entry.pipeline) == Some(&Some(entry.process.clone())),
            None => alive(&entry.process),
        };
        if entry.ended.is_none() && entry.status == "running" && !alive {
            entry.status = "interrupted".into();
        }
        entry.superseded = newest_run[&entry.pipeline] > entry.run;
    }
    Ok(out)
}

/// Runs of any pipeline in this ledger that did not end (no attempt succeeded or was
/// abandoned): each may be resumed, reading the tables as of its start versions, so
/// maintenance must keep what those versions need. One entry per run: its newest
/// attempt.
pub async fn unfinished(location: &str) -> Result<Vec<Entry>> {
    let mut runs: BTreeMap<(String, i64), Vec<Entry>> = BTreeMap::new();
    for entry in read_all(location).await? {
        runs.entry((entry.pipeline.clone(), entry.run))
            .or_default()
            .push(entry);
    }
    Ok(runs
        .into_values()
        .filter(|attempts| {
            !attempts
                .iter()
                .any(|a| a.superseded || a.status == "succeeded" || a.status == "abandoned")
        })
        .filter_map(|attempts| attempts.into_iter().max_by_key(|a| a.started))
        .collect())
}

fn from_row(batch: &RecordBatch, row: usize) -> Result<Entry> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::table(format!("the run ledger has no column `{name}`")))
    };
    let text = |name: &str| -> Result<Option<String>> {
        let c = column(name)?;
        let c = datafusion::arrow::compute::cast(c, &DataType::Utf8).map_err(Error::from)?;
        let c = c
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        Ok((!c.is_null(row)).then(|| c.value(row).to_string()))
    };
    let int = |name: &str| -> Result<Option<i64>> {
        let c = datafusion::arrow::compute::cast(column(name)?, &DataType::Int64)
            .map_err(Error::from)?;
        let c = c
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("cast to Int64");
        Ok((!c.is_null(row)).then(|| c.value(row)))
    };
    let time = |name: &str| -> Result<Option<DateTime<Utc>>> {
        let c = datafusion::arrow::compute::cast(
            column(name)?,
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )
        .map_err(Error::from)?;
        let c = c
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("cast to timestamp");
        Ok((!c.is_null(row))
            .then(|| DateTime::from_timestamp_micros(c.value(row)))
            .flatten())
    };
    let parsed = |name: &str| -> Result<Value> {
        Ok(text(name)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null))
    };
    let seconds = datafusion::arrow::compute::cast(column("seconds")?, &DataType::Float64)
        .map_err(Error::from)?;
    let seconds = seconds
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("cast to Float64");
    let resumed = column("resumed")?
        .as_any()
        .downcast_ref::<BooleanArray>()
        .is_some_and(|c| !c.is_null(row) && c.value(row));
    Ok(Entry {
        pipeline: text("pipeline")?.unwrap_or_default(),
        run: int("run")?.unwrap_or_default(),
        started: time("started")?
            .ok_or_else(|| Error::table("a ledger row without a start time"))?,
        ended: time("ended")?,
        status: text("status")?.unwrap_or_default(),
        resumed,
        plan_hash: text("plan_hash")?.unwrap_or_default(),
        vars: parsed("vars")?,
        read_versions: serde_json::from_value(parsed("read_versions")?).unwrap_or_default(),
        stages: serde_json::from_value(parsed("stages")?).unwrap_or_default(),
        seconds: (!seconds.is_null(row)).then(|| seconds.value(row)),
        bytes_scanned: int("bytes_scanned")?.map(|n| n as u64),
        bytes_written: int("bytes_written")?.map(|n| n as u64),
        process: text("process")?.unwrap_or_default(),
        superseded: false,
        error: text("error")?,
        sqlplan_version: text("sqlplan_version")?.unwrap_or_default(),
    })
}
