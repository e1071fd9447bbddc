//! The run context: one DataFusion session where every table and relation is
//! registered, the latest handle of every Delta table, and the dispatch of a stage
//! to its kind (a file each: materialize, write, merge, maintain).

use std::collections::{BTreeMap, BTreeSet};

use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Query, Statement};
use deltalake::DeltaTable;
use tokio::sync::Mutex;

use super::error::StageError;
use crate::delta;
use crate::plan::{Plan, StageKind, StagePlan, Work};
use crate::report::StageMetrics;

/// The run's shared state: one DataFusion session where every table and relation
/// is registered, and the latest handle of every Delta table.
pub struct Executor {
    pub plan: Plan,
    /// The run number, start versions and plan fingerprint every commit carries.
    pub tag: delta::RunTag,
    /// This run resumes an interrupted one; these stages of it committed (→ version).
    pub resumed: bool,
    pub(super) committed_earlier: BTreeMap<String, i64>,
    /// `--abandon` ended this unfinished run, restoring these tables (→ version).
    pub abandoned: Option<(delta::RunTag, BTreeMap<String, i64>)>,
    pub ctx: SessionContext,
    /// Materialized relations larger than this many bytes are spilled to disk.
    pub(super) spill_threshold: u64,
    /// Where they go; removed with the executor.
    /// Created on the first spill, so a run that never spills (most) leaves nothing
    /// behind even when it is killed.
    pub(super) spill_dir: std::sync::OnceLock<tempfile::TempDir>,
    pub(super) tables: Mutex<BTreeMap<String, DeltaTable>>,
    /// State values computed by `state:` stages; the run's finish commit records them.
    pub(super) states: Mutex<BTreeMap<String, String>>,
    /// Views registered so far (re-planned after commits to what they read).
    pub(super) views: Mutex<Vec<String>>,
    /// Materialized relations computed so far (their key bounds drive pruning).
    pub(super) materialized: Mutex<std::collections::BTreeSet<String>>,
    /// Partition columns per table.
    pub(super) partitions: BTreeMap<String, Vec<String>>,
    /// The cluster the query stages run on (`run --engine`), if any.
    pub(super) remote: Option<crate::cluster::Remote>,
    /// Set when another run took over this run's lease (object-store warehouses).
    pub(super) lease_lost: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

pub(super) type StageResult<T> = Result<T, StageError>;

pub(super) fn df_err<E: std::fmt::Display + 'static>(e: E) -> StageError {
    if let Some(conflict) = commit_conflict(&e) {
        return StageError::Refused(conflict);
    }
    let s = e.to_string();
    StageError::Engine(s.lines().next().unwrap_or(&s).to_string())
}

/// The message of Delta's conflict check refusing a commit, if that is what `e`
/// is or wraps (delta-rs's error, or DataFusion's wrapping it): found by type.
pub(super) fn commit_conflict<E: std::fmt::Display + 'static>(e: &E) -> Option<String> {
    use deltalake::kernel::transaction::CommitConflictError;
    use std::error::Error;
    let any = e as &dyn std::any::Any;
    let mut error: Option<&(dyn Error + 'static)> =
        if let Some(d) = any.downcast_ref::<deltalake::DeltaTableError>() {
            Some(d)
        } else if let Some(d) = any.downcast_ref::<datafusion::error::DataFusionError>() {
            Some(d)
        } else if let Some(d) = any.downcast_ref::<delta::Error>() {
            Some(d)
        } else {
            None
        };
    while let Some(current) = error {
        if let Some(conflict) = current.downcast_ref::<CommitConflictError>() {
            return Some(conflict.to_string());
        }
        error = current.source();
    }
    None
}

impl Executor {
    /// Opens the tables and decides where the run starts: afresh, or resuming the
    /// pipeline's unfinished run (`abandon`: ending it by restoring its tables first).
    pub async fn new(
        plan: Plan,
        spill_threshold: u64,
        abandon: bool,
        engine: Option<&str>,
    ) -> StageResult<Self> {
        let mut tables = super::tables::open_tables(&plan).await?;
        let mut start = super::resume::find(&plan, &tables, abandon).await?;
        let mut abandoned = None;
        if let super::resume::Start::Abandon {
            unfinished,
            restore,
        } = start
        {
            super::resume::abandon(&plan, &tables, &unfinished, &restore).await?;
            abandoned = Some((unfinished, restore));
            for t in &plan.tables {
                if tables.contains_key(&t.name) {
                    tables.insert(
                        t.name.clone(),
                        delta::open(&t.name, &t.location, None).await?,
                    );
                }
            }
            start = super::resume::find(&plan, &tables, false).await?;
        }
        let super::resume::Start::Run(start) = start else {
            return Err(StageError::Resume(
                "the abandoned run is still unfinished".to_string(),
            ));
        };
        if start.resumed {
            // Every stage reads the tables as the interrupted run found them.
            for t in &plan.tables {
                let version = start.tag.start_versions.get(&t.name).copied();
                let current = tables.get(&t.name).and_then(|d| d.version());
                if let Some(v) = version.filter(|v| Some(*v as u64) != current) {
                    tables.insert(
                        t.name.clone(),
                        delta::open(&t.name, &t.location, Some(v)).await?,
                    );
                }
            }
        }
        let ctx = crate::session::new_context();
        let remote = match engine {
            Some(engine) => {
                let control = crate::control::control_url(&plan)?.ok_or_else(|| {
                    StageError::Unsupported(
                        "a run on a cluster needs a table it finishes on (its scratch \
                             folder goes beside it)"
                            .to_string(),
                    )
                })?;
                let scratch = control
                    .join(&format!(
                        "scratch/{}-run{}-{}/",
                        plan.pipeline,
                        start.tag.run_number,
                        uuid::Uuid::new_v4().simple()
                    ))
                    .map_err(delta::Error::from)?;
                Some(crate::cluster::Remote::new(engine, ctx.state(), scratch)?)
            }
            None => None,
        };
        for (name, table) in &tables {
            let provider = delta::scan::provider(table, remote.is_some()).await?;
            ctx.register_table(name.as_str(), provider)
                .map_err(df_err)?;
        }
        let partitions = plan
            .tables
            .iter()
            .map(|t| (t.name.clone(), t.partition_by.clone()))
            .collect();
        Ok(Executor {
            partitions,
            plan,
            tag: start.tag,
            resumed: start.resumed,
            committed_earlier: start.committed,
            abandoned,
            spill_threshold,
            spill_dir: std::sync::OnceLock::new(),
            lease_lost: std::sync::OnceLock::new(),
            ctx,
            tables: Mutex::new(tables),
            views: Mutex::new(Vec::new()),
            states: Mutex::new(BTreeMap::new()),
            materialized: Mutex::new(Default::default()),
            remote,
        })
    }

    /// The physical plan of a query stage and the context to run it in: on the
    /// cluster with `--engine`, else here.
    pub(super) async fn physical(
        &self,
        df: DataFrame,
    ) -> StageResult<(
        std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        std::sync::Arc<datafusion::execution::TaskContext>,
    )> {
        match &self.remote {
            Some(remote) => remote.physical(df.logical_plan()).await.map_err(df_err),
            None => {
                let task = std::sync::Arc::new(df.task_ctx());
                let plan = df.create_physical_plan().await.map_err(df_err)?;
                Ok((plan, task))
            }
        }
    }

    pub(super) async fn table(&self, name: &str) -> StageResult<DeltaTable> {
        self.tables
            .lock()
            .await
            .get(name)
            .cloned()
            .ok_or_else(|| StageError::Table(format!("unknown table `{name}`")))
    }

    /// After a commit, later stages read the new version.
    /// Returns the version the stage committed, or None when the operation had
    /// nothing to commit (e.g. an optimize with nothing to compact).
    pub(super) async fn committed(
        &self,
        name: &str,
        table: DeltaTable,
    ) -> StageResult<Option<i64>> {
        let version = table.version().map(|v| v as i64);
        let before = self
            .tables
            .lock()
            .await
            .get(name)
            .and_then(|t| t.version())
            .map(|v| v as i64);
        if version == before {
            return Ok(None);
        }
        let provider = delta::scan::provider(&table, self.remote.is_some()).await?;
        self.ctx.deregister_table(name).map_err(df_err)?;
        self.ctx.register_table(name, provider).map_err(df_err)?;
        self.tables.lock().await.insert(name.to_string(), table);
        self.refresh_views(name).await?;
        Ok(version)
    }

    /// Frees the materialized relations `finished` read that no stage will read any
    /// more (every reader done, none of them a view, which is planned again after
    /// commits): a run's peak memory is then what its live relations hold, not
    /// everything it computed.
    pub(super) async fn release(&self, finished: &StagePlan, done: &BTreeSet<String>) {
        for relation in &finished.reads {
            let materialized = self
                .plan
                .stages
                .iter()
                .any(|s| &s.name == relation && s.kind() == StageKind::Materialized);
            if !materialized {
                continue;
            }
            let readers: Vec<&StagePlan> = self
                .plan
                .stages
                .iter()
                .filter(|s| s.reads.contains(relation))
                .collect();
            let unused = readers
                .iter()
                .all(|s| s.kind() != StageKind::View && done.contains(&s.name));
            if unused && self.materialized.lock().await.remove(relation) {
                let _ = self.ctx.deregister_table(relation.as_str());
            }
        }
    }

    /// Adds literal key bounds from materialized relations to the Delta scans they
    /// drive (see `bounds`).
    pub(super) async fn bounded(&self, df: DataFrame) -> StageResult<(DataFrame, Vec<String>)> {
        let materialized = self.materialized.lock().await.clone();
        let catalog = super::bounds::Catalog {
            tables: &self.partitions,
            materialized: &materialized,
        };
        super::bounds::apply(&self.ctx, &catalog, df, self.remote.is_some())
            .await
            .map_err(df_err)
    }

    /// A view is evaluated by its readers, so after a commit to a table it reads
    /// (directly or through other views) it is planned again on the new version.
    /// No stage can be reading it meanwhile: such a reader would have a hazard with
    /// the writer that just committed.
    pub(super) async fn refresh_views(&self, table: &str) -> StageResult<()> {
        let mut views: Vec<&StagePlan> = {
            let registered = self.views.lock().await;
            self.plan
                .stages
                .iter()
                .filter(|s| registered.contains(&s.name))
                .collect()
        };
        views.sort_by_key(|s| s.index);
        for view in views {
            if let (Work::View(query), true) = (&view.work, self.reads_through_views(view, table)) {
                let df = self.query(query).await?;
                self.ctx
                    .deregister_table(view.name.as_str())
                    .map_err(df_err)?;
                self.ctx
                    .register_table(view.name.as_str(), df.into_view())
                    .map_err(df_err)?;
            }
        }
        Ok(())
    }

    pub(super) fn reads_through_views(&self, stage: &StagePlan, table: &str) -> bool {
        stage.reads.iter().any(|r| {
            r == table
                || self
                    .plan
                    .stages
                    .iter()
                    .find(|s| &s.name == r && s.kind() == StageKind::View)
                    .is_some_and(|v| self.reads_through_views(v, table))
        })
    }

    pub async fn run_stage(&self, stage: &StagePlan) -> StageResult<StageMetrics> {
        if let Some(&version) = self.committed_earlier.get(&stage.name) {
            return self.adopt(stage, version).await;
        }
        let mut metrics = match self.execute(stage).await {
            Ok(metrics) => metrics,
            Err(error) => match self.landed(stage.writes.as_deref(), &stage.name).await {
                Some(version) => StageMetrics {
                    commit_answer_lost: true,
                    committed_earlier: false,
                    ..self.adopt(stage, version).await?
                },
                // delta-rs retries past commits that do not conflict; this one does.
                None => match error {
                    StageError::Refused(e) => return Err(self.conflict(stage, e).await),
                    error => return Err(error),
                },
            },
        };
        if stage.report {
            metrics.reported = self.rows_of(&stage.name).await?;
        }
        if let Some(state) = &stage.state {
            // The relation's single value; NULL (e.g. an empty batch) records nothing,
            // so the previous value stays in force.
            let rows = self.rows_of(&stage.name).await?;
            if rows.len() > 1 {
                return Err(StageError::StateNotSingle {
                    stage: stage.name.clone(),
                    rows: rows.len(),
                });
            }
            let value = rows
                .first()
                .and_then(|r| r.values().next())
                .filter(|v| !v.is_null());
            if let Some(v) = value {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                if let Some(ty) = self.plan.var_types.get(state) {
                    ty.parse_text(&text)
                        .map_err(|reason| StageError::StateType {
                            stage: stage.name.clone(),
                            state: state.clone(),
                            value: text.clone(),
                            reason,
                        })?;
                }
                self.states.lock().await.insert(state.clone(), text);
            }
        }
        Ok(metrics)
    }

    /// Names the commits another writer made to the stage's table since the stage
    /// read it, for the error of a commit Delta's conflict check refused.
    async fn conflict(&self, stage: &StagePlan, reason: String) -> StageError {
        let Some(target) = stage.writes.clone() else {
            return StageError::Engine(reason);
        };
        let read = match self.table(&target).await {
            Ok(t) => t.version().map_or(-1, |v| v as i64),
            Err(e) => return e,
        };
        let since = match self.location(&target) {
            Ok(location) => match delta::open(&target, &location, None).await {
                Ok(newest) => delta::commit::describe_since(&newest, read)
                    .await
                    .map(|c| c.join("; "))
                    .unwrap_or_else(|e| format!("its history is unreadable: {e}")),
                Err(e) => format!("it cannot be opened: {e}"),
            },
            Err(e) => e.to_string(),
        };
        StageError::Conflict {
            table: target,
            read,
            since,
            reason: reason
                .split("Commit failed: ")
                .nth(1)
                .unwrap_or(&reason)
                .trim_end_matches('.')
                .to_string(),
        }
    }

    /// The version of `table` that holds this run's commit `label`, when a write
    /// failed: a store that lost the answer to a commit that happened makes its
    /// writer retry, and the retry is refused (the version exists, and it carries
    /// this run's own transaction). None when the commit is not there, or the log
    /// cannot be read now (the write's own error then stands).
    pub(super) async fn landed(&self, table: Option<&str>, label: &str) -> Option<i64> {
        let table = table?;
        let newest = delta::open(table, &self.location(table).ok()?, None)
            .await
            .ok()?;
        let version =
            delta::commit::landed(&newest, &self.plan.pipeline, self.tag.run_number, label)
                .await
                .ok()??;
        eprintln!(
            "sqlplan: the store lost the answer to `{label}`'s commit to `{table}`; its log holds it at version {version}, and the run goes on from it"
        );
        Some(version)
    }

    /// A stage the interrupted run committed: later stages read the version it
    /// committed, as they would have in that run.
    pub(super) async fn adopt(&self, stage: &StagePlan, version: i64) -> StageResult<StageMetrics> {
        let target = stage
            .writes
            .clone()
            .ok_or("a committed stage without a table")?;
        let location = self.location(&target)?;
        let table = delta::open(&target, &location, Some(version)).await?;
        self.committed(&target, table).await?;
        Ok(StageMetrics {
            version: Some(version),
            committed_earlier: true,
            ..Default::default()
        })
    }

    pub(super) fn location(&self, table: &str) -> StageResult<String> {
        self.plan
            .tables
            .iter()
            .find(|t| t.name == table)
            .map(|t| t.location.clone())
            .ok_or_else(|| StageError::Table(format!("unknown table `{table}`")))
    }

    /// Ends the run, after every stage succeeded: one commit on each state table (on
    /// the last table written when the pipeline records no state) carries the state
    /// values and the run's finish transaction. Until it is in the log, the run is
    /// unfinished and the next one resumes it; recorded state never moves past a
    /// batch that some table did not receive.
    pub async fn finish(&self) -> StageResult<()> {
        let states = self.states.lock().await.clone();
        crate::delta::failpoint::hit("before:finish");
        let finish_id = [delta::finish_app_id(&self.plan.pipeline)];
        for name in crate::control::finish_tables(&self.plan) {
            // The newest version: a resumed run may read the table at an older one.
            let table = delta::open(&name, &self.location(&name)?, None).await?;
            // A resumed run whose finish reached some tables before it died.
            if delta::commit::last_run(&table, &finish_id).await? >= Some(self.tag.run_number) {
                continue;
            }
            crate::delta::failpoint::writing(&name, "finish");
            let table = match delta::append_empty(table, self.tag.finish_properties(&states)).await
            {
                Ok(table) => table,
                Err(error) => match self.landed(Some(&name), "finish").await {
                    Some(version) => {
                        delta::open(&name, &self.location(&name)?, Some(version)).await?
                    }
                    None => return Err(error.into()),
                },
            };
            self.tables.lock().await.insert(name.clone(), table);
            crate::delta::failpoint::hit(&format!("after:finish:{name}"));
        }
        crate::delta::failpoint::hit("after:finish");
        Ok(())
    }

    /// The commit properties of a stage's write (and, for failpoints, who writes).
    pub(super) fn props(
        &self,
        stage: &StagePlan,
    ) -> deltalake::kernel::transaction::CommitProperties {
        if let Some(table) = &stage.writes {
            crate::delta::failpoint::writing(table, &stage.name);
        }
        self.tag.commit_properties(&stage.name)
    }

    /// At most this many rows of a reported relation go into the report.
    const REPORTED_ROWS: usize = 1000;

    pub(super) async fn rows_of(
        &self,
        relation: &str,
    ) -> StageResult<Vec<serde_json::Map<String, serde_json::Value>>> {
        let df = self
            .ctx
            .table(relation)
            .await
            .map_err(df_err)?
            .limit(0, Some(Self::REPORTED_ROWS))
            .map_err(df_err)?;
        let batches = df.collect().await.map_err(df_err)?;
        crate::report::json_rows(&batches).map_err(StageError::Engine)
    }

    /// Whether another run took over this run's lease.
    pub(super) fn lease_lost(&self) -> bool {
        self.lease_lost
            .get()
            .is_some_and(|l| l.load(std::sync::atomic::Ordering::SeqCst))
    }

    pub(super) async fn execute(&self, stage: &StagePlan) -> StageResult<StageMetrics> {
        if self.lease_lost() {
            return Err(StageError::LeaseLost);
        }
        match &stage.work {
            Work::View(query) => {
                let df = self.query(query).await?;
                self.ctx
                    .register_table(stage.name.as_str(), df.into_view())
                    .map_err(df_err)?;
                self.views.lock().await.push(stage.name.clone());
                Ok(StageMetrics::default())
            }
            Work::Materialized(query) => self.materialize(stage, query).await,
            Work::Insert {
                source, columns, ..
            } => self.insert(stage, source, columns).await,
            Work::Merge(statement) => self.merge(stage, statement).await,
            Work::Delete { selection } => self.delete(stage, selection.as_ref()).await,
            Work::Optimize { .. } | Work::Vacuum => self.maintain(stage).await,
        }
    }

    /// A query compile parsed, planned on the run's session: bound again to the
    /// tables' versions of this run, never parsed again.
    pub(super) async fn query(&self, query: &Query) -> StageResult<DataFrame> {
        let statement = Statement::Query(Box::new(query.clone()));
        let plan = self.plan_statement(statement).await?;
        self.ctx.execute_logical_plan(plan).await.map_err(df_err)
    }

    /// A statement compile parsed, as a logical plan of the run's session.
    pub(super) async fn plan_statement(&self, statement: Statement) -> StageResult<LogicalPlan> {
        self.ctx
            .state()
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await
            .map_err(df_err)
    }
}
