//! Where a run starts: afresh, or where the pipeline's last run stopped.
//!
//! Delta commits are atomic per table, never across tables, so a run that dies or
//! fails after some of its writes committed leaves its tables between two states.
//! Running its batch again from the new state is not exact (a rerun of the summary
//! pipeline would see its own `latest_summary` rows and re-apply records), so the
//! next run *resumes* the unfinished one instead: it takes the same run number, reads
//! every table as of the version it had when that run started (Delta time travel),
//! skips the stages whose commits are in the log (their application transaction
//! proves it) and runs the rest. The result is the uninterrupted run's, and no write
//! is applied twice.
//!
//! A run is finished when its `finish` commit (see `RunTag::finish_properties`) is in
//! the log of every table it goes to: on each of them, the run number of the newest
//! finish commit is at least that of the newest stage commit.

use std::collections::BTreeMap;

use deltalake::DeltaTable;
use serde_json::Value;

use super::context::StageResult;
use super::error::StageError;
use super::expect::quarantine_label;
use crate::delta::error::Doing as _;
use crate::delta::{self, RunTag};
use crate::plan::Plan;

/// How far back in a table's history to look for the commits of an unfinished run.
const HISTORY_DEPTH: usize = 200;

/// The run about to execute.
pub struct RunStart {
    pub tag: RunTag,
    /// Stages the interrupted run committed → the version each committed.
    pub committed: BTreeMap<String, i64>,
    /// Whether this run resumes an interrupted one.
    pub resumed: bool,
}

/// How the run starts.
pub enum Start {
    Run(RunStart),
    /// `--abandon`: the unfinished run is ended first by restoring each table it
    /// wrote to its start version; then a fresh run starts.
    Abandon {
        unfinished: RunTag,
        /// Tables the unfinished run wrote → their versions at its start.
        restore: BTreeMap<String, i64>,
    },
}

/// Decides how the run starts, from the tables as they are now (all opened at their
/// newest version). An unfinished run whose plan or vars differ from this one's is
/// an error unless `abandon`: resuming it with other SQL would not give either run's
/// result.
pub async fn find(
    plan: &Plan,
    tables: &BTreeMap<String, DeltaTable>,
    abandon: bool,
) -> StageResult<Start> {
    // Every commit label of the plan: its stages, and their quarantine writes.
    let stage_ids: Vec<String> = plan
        .stages
        .iter()
        .flat_map(|s| {
            let quarantine = s.quarantine.as_ref().map(|_| quarantine_label(&s.name));
            std::iter::once(s.name.clone()).chain(quarantine)
        })
        .map(|label| delta::app_id(&plan.pipeline, &label))
        .collect();
    let finish_id = [delta::finish_app_id(&plan.pipeline)];
    let mut last = None;
    for table in tables.values() {
        last = last.max(delta::commit::last_run(table, &stage_ids).await?);
    }
    // A run is finished when every table its finish commit goes to carries it (a
    // crash between two finish commits leaves it unfinished).
    let (mut finished, mut newest_finish): (Option<Option<i64>>, Option<i64>) = (None, None);
    for name in crate::control::finish_tables(plan) {
        let run = match tables.get(&name) {
            Some(t) => delta::commit::last_run(t, &finish_id).await?,
            None => None,
        };
        finished = Some(finished.map_or(run, |f| f.min(run)));
        newest_finish = newest_finish.max(run);
    }
    let finished = finished.flatten();
    let plan_hash = plan_hash(plan);
    let fresh = |run_number: i64| RunStart {
        tag: RunTag {
            pipeline: plan.pipeline.clone(),
            run_number,
            plan_hash: plan_hash.clone(),
            start_versions: tables
                .iter()
                .filter_map(|(n, t)| Some((n.clone(), t.version()? as i64)))
                .collect(),
        },
        committed: BTreeMap::new(),
        resumed: false,
    };
    let Some(run) = last.filter(|l| finished < Some(*l)) else {
        return Ok(Start::Run(fresh(last.max(newest_finish).unwrap_or(0) + 1)));
    };
    let commits = commits_of_run(plan, tables, run).await?;
    // Commits made before runs recorded their start cannot be resumed; such a run
    // is taken as finished (the behaviour of the versions that wrote it).
    let Some(start) = commits.iter().find_map(|c| c.start.clone()) else {
        return Ok(Start::Run(fresh(run + 1)));
    };
    let unfinished = RunTag {
        pipeline: plan.pipeline.clone(),
        run_number: run,
        plan_hash: plan_hash.clone(),
        start_versions: start,
    };
    if abandon {
        let restore = commits
            .iter()
            .filter_map(|c| Some((c.table.clone(), *unfinished.start_versions.get(&c.table)?)))
            .collect();
        return Ok(Start::Abandon {
            unfinished,
            restore,
        });
    }
    if let Some(other) = commits.iter().find(|c| c.plan_hash != plan_hash) {
        return Err(StageError::Resume(format!(
            "run {run} of pipeline `{}` did not finish: it committed {} but not the rest. \
             It is resumed by running the same plan with the same vars; this plan differs \
             (plan {} recorded, {} now). Run it with the templates and vars of run {run} \
             to finish it, or run with --abandon to restore the tables it wrote to their \
             versions at its start and start afresh",
            plan.pipeline,
            describe(&commits),
            other.plan_hash,
            plan_hash
        )));
    }
    Ok(Start::Run(RunStart {
        tag: unfinished,
        committed: commits
            .iter()
            .map(|c| (c.stage.clone(), c.version))
            .collect(),
        resumed: true,
    }))
}

/// A commit of the unfinished run.
struct RunCommit {
    stage: String,
    table: String,
    version: i64,
    start: Option<BTreeMap<String, i64>>,
    plan_hash: String,
}

fn describe(commits: &[RunCommit]) -> String {
    commits
        .iter()
        .map(|c| format!("`{}` ({} version {})", c.stage, c.table, c.version))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every stage commit of `run` of this pipeline, newest first per table.
async fn commits_of_run(
    plan: &Plan,
    tables: &BTreeMap<String, DeltaTable>,
    run: i64,
) -> StageResult<Vec<RunCommit>> {
    let mut found = Vec::new();
    for (name, table) in tables {
        for commit in delta::commit::history(table, HISTORY_DEPTH).await? {
            let info = &commit.info;
            if info
                .get(delta::commit::PIPELINE_KEY)
                .and_then(Value::as_str)
                != Some(&plan.pipeline)
            {
                continue;
            }
            let Some(r) = info.get(delta::commit::RUN_KEY).and_then(Value::as_i64) else {
                continue;
            };
            if r < run {
                break;
            }
            if r > run {
                continue;
            }
            found.push(RunCommit {
                stage: info
                    .get(delta::commit::STAGE_KEY)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                table: name.clone(),
                version: commit.version,
                start: info
                    .get(delta::commit::START_KEY)
                    .and_then(|v| serde_json::from_value(v.clone()).ok()),
                plan_hash: info
                    .get(delta::commit::PLAN_KEY)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }
    Ok(found)
}

/// A fingerprint of what the run executes: the pipeline, its vars, every stage's
/// kind, SQL and target, and every table's location. Plan-time observations (table
/// versions, scans) are left out: they change when a run commits.
pub fn plan_hash(plan: &Plan) -> String {
    let stages: Vec<Value> = plan
        .stages
        .iter()
        .map(|s| {
            serde_json::json!([
                s.name,
                s.kind(),
                s.sql,
                s.writes,
                s.maintenance,
                s.state,
                s.report
            ])
        })
        .collect();
    let tables: Vec<Value> = plan
        .tables
        .iter()
        .map(|t| serde_json::json!([t.name, t.location]))
        .collect();
    let text = serde_json::json!([plan.pipeline, plan.vars, stages, tables]).to_string();
    // FNV-1a, 64 bits: stable across builds and platforms (std's hasher is not).
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Ends an unfinished run: each table it wrote goes back to its version at the run's
/// start (a Delta restore, itself a new commit: history is kept), then the run's
/// finish commit, without state, marks it ended.
pub async fn abandon(
    plan: &Plan,
    tables: &BTreeMap<String, DeltaTable>,
    unfinished: &RunTag,
    restore: &BTreeMap<String, i64>,
) -> StageResult<()> {
    // Nothing is lost: a restore undoes every commit after the start version, so it
    // is refused when one of them is not the unfinished run's own.
    for (name, version) in restore {
        let table = tables
            .get(name)
            .ok_or_else(|| StageError::Internal(format!("unknown table `{name}`")))?;
        let newest = table.version().map_or(0, |v| v as i64);
        let depth = usize::try_from(newest - version).unwrap_or(0);
        let foreign: Vec<i64> = delta::commit::history(table, depth)
            .await?
            .into_iter()
            .filter(|c| c.version > *version)
            .filter(|c| {
                c.info
                    .get(delta::commit::PIPELINE_KEY)
                    .and_then(Value::as_str)
                    != Some(&plan.pipeline)
                    || c.info.get(delta::commit::RUN_KEY).and_then(Value::as_i64)
                        != Some(unfinished.run_number)
            })
            .map(|c| c.version)
            .collect();
        if !foreign.is_empty() {
            let described = delta::commit::describe_since(table, *version).await?;
            return Err(StageError::Resume(format!(
                "--abandon would restore `{name}` to version {version}, the version run {} started from, and so also undo what others committed since ({}); nothing was restored. Undo run {}'s commits to `{name}` by hand, or resume it without --abandon",
                unfinished.run_number,
                described
                    .iter()
                    .filter(|d| foreign.iter().any(|v| d.starts_with(&format!("version {v}:"))))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
                unfinished.run_number,
            )));
        }
    }
    for (name, version) in restore {
        let table = tables
            .get(name)
            .ok_or_else(|| StageError::Internal(format!("unknown table `{name}`")))?;
        table
            .clone()
            .restore()
            .with_version_to_restore(*version as u64)
            .with_commit_properties(unfinished.abandon_properties())
            .await
            .doing(|| format!("restoring `{name}` to version {version}"))?;
        eprintln!(
            "sqlplan: abandoned run {}: `{name}` restored to version {version}",
            unfinished.run_number
        );
    }
    for name in crate::control::finish_tables(plan) {
        let table = plan
            .tables
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| StageError::Internal(format!("unknown table `{name}`")))?;
        let table = delta::open(&table.name, &table.location, None).await?;
        delta::append_empty(table, unfinished.finish_properties(&BTreeMap::new())).await?;
    }
    Ok(())
}
