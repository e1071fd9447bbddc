//! What sqlplan records in Delta commits: application transactions (stage, run
//! number), the run's start versions and plan fingerprint, the state values of the
//! commit that ends a run; and reading them back from a table's history.

use std::collections::BTreeMap;

use deltalake::kernel::transaction::CommitProperties;
use deltalake::DeltaTable;

use crate::delta::error::{Error, Result};

/// The Delta application id of a stage's commits.
pub fn app_id(pipeline: &str, stage: &str) -> String {
    format!("sqlplan:{pipeline}:{stage}")
}

/// The application id of the commit that ends a run (`#` is never in a stage name).
pub fn finish_app_id(pipeline: &str) -> String {
    format!("sqlplan:{pipeline}#finish")
}

/// Commit metadata keys.
pub const PIPELINE_KEY: &str = "sqlplan.pipeline";
pub const STAGE_KEY: &str = "sqlplan.stage";
pub const RUN_KEY: &str = "sqlplan.run";
/// The version of every table when the run started (JSON object).
pub const START_KEY: &str = "sqlplan.start";
/// A fingerprint of the plan and vars the run executes.
pub const PLAN_KEY: &str = "sqlplan.plan";
/// Commit metadata key prefix of state variables.
pub const STATE_PREFIX: &str = "sqlplan.state.";

/// What every commit of one run says about the run.
#[derive(Clone, Debug)]
pub struct RunTag {
    pub pipeline: String,
    pub run_number: i64,
    pub plan_hash: String,
    pub start_versions: BTreeMap<String, i64>,
}

impl RunTag {
    /// Every commit names the pipeline and stage that made it, the run's start
    /// versions and plan, and carries an application transaction (app id, run
    /// number), so a later run can prove which writes of an interrupted run committed
    /// and resume it on the same inputs.
    pub fn commit_properties(&self, stage: &str) -> CommitProperties {
        self.properties(app_id(&self.pipeline, stage), stage, BTreeMap::new())
    }

    /// The commit that ends the run: it alone carries the state values, so recorded
    /// state moves only after every write of the run committed.
    pub fn finish_properties(&self, states: &BTreeMap<String, String>) -> CommitProperties {
        let states = states
            .iter()
            .map(|(k, v)| (format!("{STATE_PREFIX}{k}"), serde_json::json!(v)))
            .collect();
        self.properties(finish_app_id(&self.pipeline), "finish", states)
    }

    /// A restore made by `--abandon`, ending this (unfinished) run.
    pub fn abandon_properties(&self) -> CommitProperties {
        self.properties(
            format!("sqlplan:{}#abandon", self.pipeline),
            "abandon",
            BTreeMap::new(),
        )
    }

    fn properties(
        &self,
        app: String,
        stage: &str,
        extra: BTreeMap<String, serde_json::Value>,
    ) -> CommitProperties {
        let mut metadata = vec![
            (PIPELINE_KEY.to_string(), serde_json::json!(self.pipeline)),
            (STAGE_KEY.to_string(), serde_json::json!(stage)),
            (RUN_KEY.to_string(), serde_json::json!(self.run_number)),
            (
                START_KEY.to_string(),
                serde_json::json!(self.start_versions),
            ),
            (PLAN_KEY.to_string(), serde_json::json!(self.plan_hash)),
        ];
        metadata.extend(extra);
        CommitProperties::default()
            .with_application_transaction(deltalake::kernel::Transaction::new(app, self.run_number))
            .with_metadata(metadata)
    }
}

/// The greatest version any of `app_ids` committed to `table`.
pub async fn last_run(table: &DeltaTable, app_ids: &[String]) -> Result<Option<i64>> {
    let snapshot = table.snapshot().map_err(Error::from)?;
    let mut last = None;
    for id in app_ids {
        let v = snapshot
            .transaction_version(table.log_store().as_ref(), id)
            .await
            .map_err(Error::from)?;
        last = last.max(v);
    }
    Ok(last)
}

/// How far back `landed` looks: the commits other writers could have made
/// between a lost answer and the look.
const LANDED_DEPTH: usize = 100;

/// The version at which `table` (opened at its newest) holds the commit of stage
/// (or write label) `label` of run `run` of `pipeline`, if it does. A commit whose
/// answer the store lost (the write happened, the writer saw an error, and its
/// retry was refused because the version existed) is found here: the run goes on
/// from it instead of failing or writing it again.
pub async fn landed(
    table: &DeltaTable,
    pipeline: &str,
    run: i64,
    label: &str,
) -> Result<Option<i64>> {
    let ours = |c: &Commit| {
        c.info.get(PIPELINE_KEY).and_then(|v| v.as_str()) == Some(pipeline)
            && c.info.get(STAGE_KEY).and_then(|v| v.as_str()) == Some(label)
            && c.info.get(RUN_KEY).and_then(|v| v.as_i64()) == Some(run)
    };
    Ok(history(table, LANDED_DEPTH)
        .await?
        .into_iter()
        .find(ours)
        .map(|c| c.version))
}

/// One commit of a table, newest first in `history`.
pub struct Commit {
    pub version: i64,
    /// The commit's metadata (sqlplan's keys among them).
    pub info: BTreeMap<String, serde_json::Value>,
    pub operation: Option<String>,
    /// The writer's `engineInfo` (e.g. `delta-rs:1.1.3`).
    pub engine: Option<String>,
    /// Milliseconds since the epoch.
    pub timestamp: Option<i64>,
}

/// The table's last `depth` commits, newest first, with their versions.
pub async fn history(table: &DeltaTable, depth: usize) -> Result<Vec<Commit>> {
    use futures::TryStreamExt;
    let Some(newest) = table.version() else {
        return Ok(Vec::new());
    };
    let infos: Vec<_> = table
        .history(Some(depth))
        .try_collect()
        .await
        .map_err(Error::from)?;
    // Commit files are contiguous up to the newest; history lists them newest first.
    Ok(infos
        .into_iter()
        .enumerate()
        .map(|(i, c)| Commit {
            version: newest as i64 - i as i64,
            operation: c.operation,
            engine: c.engine_info,
            timestamp: c.timestamp,
            info: c.info.into_iter().collect(),
        })
        .collect())
}

/// `operationMetrics` of the table's latest commit (writes report no metrics value).
pub async fn last_commit_metrics(table: &DeltaTable) -> BTreeMap<String, serde_json::Value> {
    use futures::StreamExt;
    let mut history = table.history(Some(1));
    match history.next().await {
        Some(Ok(info)) => info
            .info
            .get("operationMetrics")
            .and_then(|m| m.as_object())
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        _ => BTreeMap::new(),
    }
}

/// How far back in a table's history to look for a recorded state.
const STATE_DEPTH: usize = 1000;

/// A commit of a pipeline that carries state values, newest first in
/// `state_records`.
pub struct StateRecord {
    pub run: Option<i64>,
    /// Written by a run's finish step (the only place state goes now); other
    /// commits carrying state were written before runs had one.
    pub finish: bool,
    pub values: BTreeMap<String, String>,
}

/// The commits of `pipeline` on `table` that carry state values, newest first.
pub async fn state_records(table: &DeltaTable, pipeline: &str) -> Result<Vec<StateRecord>> {
    let mut out = Vec::new();
    for commit in history(table, STATE_DEPTH).await? {
        let info = &commit.info;
        if info.get(PIPELINE_KEY).and_then(|v| v.as_str()) != Some(pipeline) {
            continue;
        }
        let values: BTreeMap<String, String> = info
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(STATE_PREFIX)?;
                Some((
                    name.to_string(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                ))
            })
            .collect();
        let finish = info.get(STAGE_KEY).and_then(|v| v.as_str()) == Some("finish");
        if values.is_empty() && !finish {
            continue;
        }
        out.push(StateRecord {
            run: info.get(RUN_KEY).and_then(|v| v.as_i64()),
            finish,
            values,
        });
    }
    Ok(out)
}

/// Who made each commit of `table` (opened at its newest version) after `version`,
/// oldest first: `version N: OPERATION by WRITER`, the writer being a sqlplan
/// pipeline's stage or the engine that says so in its commit.
pub async fn describe_since(table: &DeltaTable, version: i64) -> Result<Vec<String>> {
    let newest = table.version().map_or(version, |v| v as i64);
    let depth = usize::try_from(newest - version).unwrap_or(0);
    if depth == 0 {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = history(table, depth)
        .await?
        .into_iter()
        .map(|c| {
            let by = match (c.info.get(PIPELINE_KEY), c.info.get(STAGE_KEY)) {
                (Some(p), Some(s)) => format!(
                    "sqlplan pipeline `{}` stage `{}`",
                    p.as_str().unwrap_or_default(),
                    s.as_str().unwrap_or_default()
                ),
                _ => c.engine.unwrap_or_else(|| "another writer".into()),
            };
            format!(
                "version {}: {} by {by}",
                c.version,
                c.operation.as_deref().unwrap_or("a commit")
            )
        })
        .collect();
    out.reverse();
    Ok(out)
}

/// When `version` of `table` (opened at its newest version) was committed, in
/// milliseconds since the epoch.
pub async fn commit_time(table: &DeltaTable, version: i64) -> Result<Option<i64>> {
    let newest = table.version().map_or(-1, |v| v as i64);
    let depth = usize::try_from(newest - version + 1).unwrap_or(0);
    if depth == 0 {
        return Ok(None);
    }
    Ok(history(table, depth)
        .await?
        .last()
        .and_then(|c| c.timestamp))
}
