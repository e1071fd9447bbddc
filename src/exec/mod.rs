//! Execute: run exactly the Plan. Stages whose dependencies are done run
//! concurrently as tokio tasks, at most `jobs` at a time; the DAG guarantees that two
//! writers of one table, or a writer and a reader, never overlap. After a failure
//! no new stage starts and running ones finish; Ctrl-C aborts running stages before
//! they commit (a Delta commit is atomic, so nothing is half-written).

pub mod bounds;
mod changes;
mod compact;
mod context;
mod error;
mod expect;
mod maintain;
mod materialize;
mod merge;
mod metrics;
mod resume;
mod tables;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use crate::diag::{Code, Problem};
use crate::plan::{Plan, StagePlan};
use crate::report::StageMetrics;
use crate::report::{RunReport, StageReport, StageStatus};
use context::Executor;

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Stages running at the same time, at most.
    pub jobs: usize,
    /// Live progress bars (on a terminal) instead of log lines.
    pub progress: bool,
    /// Materialized relations larger than this (bytes in memory) spill to local Parquet.
    pub spill_threshold: u64,
    /// No progress output at all (e.g. under `sqlplan test`).
    pub quiet: bool,
    /// End the pipeline's unfinished run by restoring the tables it wrote, instead
    /// of resuming it.
    pub abandon: bool,
    /// Run the query stages on this cluster (`df://HOST:PORT`).
    pub engine: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: std::io::stderr().is_terminal(),
            spill_threshold: 2 << 30,
            quiet: false,
            abandon: false,
            engine: None,
        }
    }
}

struct Finished {
    name: String,
    result: Result<StageMetrics, String>,
    started: Duration,
    finished: Duration,
}

/// Runs the plan; the report says what every stage did. A failed stage yields a
/// report with `failed` status (the caller exits 1), not an `Err`.
pub async fn run(plan: Plan, options: &RunOptions) -> Result<RunReport, Problem> {
    let _lock = crate::control::lock::acquire(&plan)
        .map_err(|e| Problem::failed(Code::RunInProgress, e).help("nothing was written"))?;
    let executor = Arc::new(
        Executor::new(
            plan,
            options.spill_threshold,
            options.abandon,
            options.engine.as_deref(),
        )
        .await
        .map_err(|e| Problem::failed(Code::RunSetup, e.to_string()).help("nothing was written"))?,
    );
    let plan = &executor.plan;
    let ledger = Ledger::start(&executor).await?;
    let start = Instant::now();
    let progress = Progress::new(options.progress, options.quiet);
    let preds: BTreeMap<&str, BTreeSet<&str>> = plan
        .stages
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.depends_on.iter().map(|d| d.stage.as_str()).collect(),
            )
        })
        .collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut started: BTreeSet<String> = BTreeSet::new();
    let mut reports: BTreeMap<String, StageReport> = BTreeMap::new();
    let mut running: JoinSet<Finished> = JoinSet::new();
    let mut stop: Option<StageStatus> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        if stop.is_none() {
            for stage in &plan.stages {
                if running.len() >= options.jobs.max(1) {
                    break;
                }
                let ready = !started.contains(&stage.name)
                    && preds[stage.name.as_str()].iter().all(|p| done.contains(*p));
                if ready {
                    started.insert(stage.name.clone());
                    let bar = progress.start(stage);
                    let executor = executor.clone();
                    let stage = stage.clone();
                    running.spawn(async move {
                        let started = start.elapsed();
                        crate::delta::failpoint::hit(&format!("before:{}", stage.name));
                        let result = executor.run_stage(&stage).await.map_err(|e| e.to_string());
                        if result.is_ok() {
                            crate::delta::failpoint::hit(&format!("after:{}", stage.name));
                        }
                        bar.finish_and_clear();
                        Finished {
                            name: stage.name.clone(),
                            result,
                            started,
                            finished: start.elapsed(),
                        }
                    });
                }
            }
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            joined = running.join_next() => {
                let Some(joined) = joined else { continue };
                let f = match joined {
                    Ok(f) => f,
                    Err(e) if e.is_cancelled() => continue,
                    Err(e) => return Err(Problem::failed(Code::Internal, format!("a stage task panicked: {e}"))),
                };
                let stage = plan.stages.iter().find(|s| s.name == f.name).expect("planned stage");
                let ok = f.result.is_ok();
                progress.log(stage, &f.result, f.finished - f.started);
                reports.insert(f.name.clone(), StageReport::new(stage, f.result, f.started, f.finished));
                if ok {
                    done.insert(f.name);
                    executor.release(stage, &done).await;
                } else if stop.is_none() {
                    stop = Some(StageStatus::Failed);
                }
            }
            _ = &mut ctrl_c, if stop != Some(StageStatus::Cancelled) => {
                progress.note("interrupted: cancelling running stages; nothing they were writing is committed");
                running.abort_all();
                stop = Some(StageStatus::Cancelled);
            }
        }
    }
    let stages = plan
        .stages
        .iter()
        .map(|s| {
            reports.remove(&s.name).unwrap_or_else(|| {
                let status = if started.contains(&s.name) {
                    StageStatus::Cancelled
                } else {
                    StageStatus::Skipped
                };
                StageReport::not_run(s, status)
            })
        })
        .collect();
    if executor.resumed {
        progress.note(&format!(
            "sqlplan: resumed run {}: stages it committed were not run again; the rest read the tables as of its start",
            executor.tag.run_number
        ));
    }
    let report = RunReport::new(
        plan,
        executor.tag.run_number,
        executor.resumed,
        stages,
        start.elapsed(),
    );
    let finished = match report.succeeded() {
        true => executor
            .finish()
            .await
            .map_err(|e| format!("every stage succeeded but the run's finish commit failed: {e}")),
        false => Ok(()),
    };
    ledger.end(&report, finished.as_ref().err().cloned()).await;
    if let Some(remote) = &executor.remote {
        if let Err(e) = remote.clean().await {
            eprintln!(
                "sqlplan: warning: the run's scratch folder {} was not removed: {e}",
                remote.scratch
            );
        }
    }
    finished.map_err(|e| {
        Problem::failed(Code::RunUnfinished, e)
            .help("state did not move; the next run resumes this one")
    })?;
    Ok(report)
}

/// The run's rows in the run ledger (`ledger.rs`): the start row is written before
/// any stage runs (a run that cannot record itself does not start); the end row
/// after the finish commit. A failure to write the end row is reported, not fatal:
/// every write of the run is committed by then, and the tables' logs, not the
/// ledger, decide resumption.
struct Ledger {
    location: Option<String>,
    entry: crate::control::ledger::Entry,
}

impl Ledger {
    async fn start(executor: &Executor) -> Result<Ledger, Problem> {
        let plan = &executor.plan;
        let setup = |e: String| Problem::failed(Code::RunSetup, e).help("no stage ran");
        let location = crate::control::ledger::location(plan).map_err(setup)?;
        if let (Some(location), Some((tag, restored))) = (&location, &executor.abandoned) {
            let entry = crate::control::ledger::Entry::abandoned(plan, tag, restored);
            crate::control::ledger::append(location, &entry)
                .await
                .map_err(setup)?;
        }
        let entry = crate::control::ledger::Entry::start(plan, &executor.tag, executor.resumed);
        if let Some(location) = &location {
            crate::control::ledger::append(location, &entry)
                .await
                .map_err(setup)?;
        }
        Ok(Ledger { location, entry })
    }

    async fn end(&self, report: &RunReport, error: Option<String>) {
        let Some(location) = &self.location else {
            return;
        };
        let entry = self.entry.end(report, error);
        if let Err(e) = crate::control::ledger::append(location, &entry).await {
            eprintln!("sqlplan: warning: the run's end was not recorded in the ledger: {e}");
        }
    }
}

/// Per-stage progress: spinners on a terminal, one log line per event otherwise.
struct Progress {
    bars: Option<MultiProgress>,
    quiet: bool,
}

impl Progress {
    fn new(live: bool, quiet: bool) -> Self {
        Progress {
            bars: (live && !quiet).then(MultiProgress::new),
            quiet,
        }
    }

    fn start(&self, stage: &StagePlan) -> ProgressBar {
        match &self.bars {
            Some(m) => {
                let bar = m.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                        .expect("valid template"),
                );
                bar.set_message(format!("{} ({})", stage.name, stage.kind().label()));
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            }
            None => {
                if !self.quiet {
                    eprintln!("sqlplan: start  {} ({})", stage.name, stage.kind().label());
                }
                ProgressBar::hidden()
            }
        }
    }

    fn log(&self, stage: &StagePlan, result: &Result<StageMetrics, String>, took: Duration) {
        let line = match result {
            Ok(_) => format!(
                "sqlplan: done   {} in {:.3}s",
                stage.name,
                took.as_secs_f64()
            ),
            Err(e) => format!(
                "sqlplan: FAILED {} after {:.3}s: {e}",
                stage.name,
                took.as_secs_f64()
            ),
        };
        self.note(&line);
    }

    fn note(&self, line: &str) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(line);
            }
            None if self.quiet => {}
            None => eprintln!("{line}"),
        }
    }
}
