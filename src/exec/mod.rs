//! Execute: run exactly the Plan. Stages whose dependencies are done run
//! concurrently as tokio tasks, at most `jobs` at a time; the DAG guarantees that two
//! writers of one table, or a writer and a reader, never overlap. After a failure
//! no new stage starts and running ones finish; Ctrl-C aborts running stages before
//! they commit (a Delta commit is atomic, so nothing is half-written).

pub mod bounds;
mod changes;
mod changes_on_cluster;
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
use error::StageError;

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
    result: Result<StageMetrics, StageError>,
    started: Duration,
    finished: Duration,
}

/// Runs the plan; the report says what every stage did. A failed stage yields a
/// report with `failed` status (the caller exits 1), not an `Err`.
pub async fn run(plan: Plan, options: &RunOptions) -> Result<RunReport, Problem> {
    let lock = crate::control::lock::acquire(&plan).await.map_err(|e| {
        let code = match e {
            crate::control::Error::Busy { .. } => Code::RunInProgress,
            crate::control::Error::Store(_) => Code::RunSetup,
        };
        Problem::failed(code, e.to_string()).help("nothing was written")
    })?;
    let lost = lock.as_ref().and_then(|l| l.lost_flag());
    let result = run_holding(plan, options, lost).await;
    // Whatever the outcome: a lease left behind would refuse the next run
    // until it expired.
    if let Some(lock) = lock {
        lock.release().await;
    }
    result
}

/// `run`, once the run holds its pipeline's lock (`lost`: set if another run
/// takes its lease over).
async fn run_holding(
    plan: Plan,
    options: &RunOptions,
    lost: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> Result<RunReport, Problem> {
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
    if let Some(flag) = lost {
        let _ = executor.lease_lost.set(flag);
    }
    let ledger = Ledger::start(&executor).await?;
    let start = Instant::now();
    let progress = Progress::new(options.progress, options.quiet);
    let mut schedule = Schedule::new(&executor.plan);
    schedule
        .drive(&executor, &progress, start, options.jobs.max(1))
        .await?;
    if executor.resumed {
        progress.note(&format!(
            "sqlplan: resumed run {}: stages it committed were not run again; the rest read the tables as of its start",
            executor.tag.run_number
        ));
    }
    let mut report = RunReport::new(
        &executor.plan,
        executor.tag.run_number,
        executor.resumed,
        schedule.into_reports(&executor.plan),
        start.elapsed(),
    );
    report.received = executor.remote.as_ref().map(|r| {
        let (rows, bytes) = r.received.totals();
        crate::report::Received { rows, bytes }
    });
    finish(&executor, &ledger, &report).await?;
    Ok(report)
}

/// After the stages: the finish commit when every stage succeeded, the ledger's end
/// row, the cluster's scratch folder removed.
async fn finish(executor: &Executor, ledger: &Ledger, report: &RunReport) -> Result<(), Problem> {
    let finished = match report.succeeded() {
        // A run whose lease another run took over records no state.
        true if executor.lease_lost() => Err(crate::exec::error::StageError::LeaseLost),
        true => executor.finish().await,
        false => Ok(()),
    };
    let unfinished = finished
        .err()
        .map(|e| format!("every stage succeeded but the run's finish commit failed: {e}"));
    ledger.end(report, unfinished.clone()).await;
    if let Some(remote) = &executor.remote {
        if let Err(e) = remote.clean().await {
            eprintln!(
                "sqlplan: warning: the run's scratch folder {} was not removed: {e}",
                remote.scratch
            );
        }
    }
    match unfinished {
        Some(message) => Err(Problem::failed(Code::RunUnfinished, message)
            .help("state did not move; the next run resumes this one")),
        None => Ok(()),
    }
}

/// Which stages have started, which are done, and what each did: a stage starts
/// once every stage it depends on is done, at most `jobs` at a time; after a
/// failure or Ctrl-C nothing more starts.
struct Schedule<'p> {
    preds: BTreeMap<&'p str, BTreeSet<&'p str>>,
    started: BTreeSet<String>,
    done: BTreeSet<String>,
    reports: BTreeMap<String, StageReport>,
    running: JoinSet<Finished>,
    stop: Option<StageStatus>,
}

impl<'p> Schedule<'p> {
    fn new(plan: &'p Plan) -> Self {
        let preds = plan
            .stages
            .iter()
            .map(|s| {
                let deps = s.depends_on.iter().map(|d| d.stage.as_str()).collect();
                (s.name.as_str(), deps)
            })
            .collect();
        Schedule {
            preds,
            started: BTreeSet::new(),
            done: BTreeSet::new(),
            reports: BTreeMap::new(),
            running: JoinSet::new(),
            stop: None,
        }
    }

    /// Runs stages until none is left to start and none runs.
    async fn drive(
        &mut self,
        executor: &Arc<Executor>,
        progress: &Progress,
        start: Instant,
        jobs: usize,
    ) -> Result<(), Problem> {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            if self.stop.is_none() {
                self.start_ready(executor, progress, start, jobs);
            }
            if self.running.is_empty() {
                return Ok(());
            }
            tokio::select! {
                joined = self.running.join_next() => {
                    let Some(joined) = joined else { continue };
                    let finished = match joined {
                        Ok(f) => f,
                        Err(e) if e.is_cancelled() => continue,
                        Err(e) => {
                            let message = format!("a stage task panicked: {e}");
                            return Err(Problem::failed(Code::Internal, message));
                        }
                    };
                    self.finished(finished, executor, progress).await;
                }
                _ = &mut ctrl_c, if self.stop != Some(StageStatus::Cancelled) => {
                    progress.note("interrupted: cancelling running stages; nothing they were writing is committed");
                    self.running.abort_all();
                    self.stop = Some(StageStatus::Cancelled);
                }
            }
        }
    }

    /// Starts, in plan order, every stage whose predecessors are done, while fewer
    /// than `jobs` run.
    fn start_ready(
        &mut self,
        executor: &Arc<Executor>,
        progress: &Progress,
        start: Instant,
        jobs: usize,
    ) {
        for stage in &executor.plan.stages {
            if self.running.len() >= jobs {
                break;
            }
            let ready = !self.started.contains(&stage.name)
                && self.preds[stage.name.as_str()]
                    .iter()
                    .all(|p| self.done.contains(*p));
            if !ready {
                continue;
            }
            self.started.insert(stage.name.clone());
            let bar = progress.start(stage);
            let executor = executor.clone();
            let stage = stage.clone();
            self.running.spawn(async move {
                let started = start.elapsed();
                crate::delta::failpoint::hit(&format!("before:{}", stage.name));
                let result = executor.run_stage(&stage).await;
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

    async fn finished(&mut self, f: Finished, executor: &Executor, progress: &Progress) {
        let stage = executor
            .plan
            .stages
            .iter()
            .find(|s| s.name == f.name)
            .expect("planned stage");
        let ok = f.result.is_ok();
        progress.log(stage, &f.result, f.finished - f.started);
        // The report is a document: the error is its kind and message from here on.
        let result = f.result.map_err(|e| (e.kind(), e.to_string()));
        let report = StageReport::new(stage, result, f.started, f.finished);
        self.reports.insert(f.name.clone(), report);
        if ok {
            self.done.insert(f.name);
            executor.release(stage, &self.done).await;
        } else if self.stop.is_none() {
            self.stop = Some(StageStatus::Failed);
        }
    }

    /// Every stage's report in plan order: those that never finished were
    /// cancelled (started) or skipped.
    fn into_reports(mut self, plan: &Plan) -> Vec<StageReport> {
        plan.stages
            .iter()
            .map(|s| {
                self.reports.remove(&s.name).unwrap_or_else(|| {
                    let status = if self.started.contains(&s.name) {
                        StageStatus::Cancelled
                    } else {
                        StageStatus::Skipped
                    };
                    StageReport::not_run(s, status)
                })
            })
            .collect()
    }
}

/// The run's rows in the run ledger (`control/ledger`): the start row is written before
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
        let setup = |e: crate::delta::Error| {
            Problem::failed(Code::RunSetup, e.to_string()).help("no stage ran")
        };
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

    fn log(&self, stage: &StagePlan, result: &Result<StageMetrics, StageError>, took: Duration) {
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
