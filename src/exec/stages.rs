//! Running one stage: a view, a materialized relation, an INSERT, a MERGE (planned
//! by DataFusion, executed by delta-rs), a DELETE, or maintenance.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::dml::{MergeIntoAction, MergeIntoClauseKind};
use datafusion::logical_expr::{cast, col, lit, Expr, LogicalPlan, WriteOp};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, FilterOp, FilterValue};
use serde::Serialize;
use tokio::sync::Mutex;

use super::delta;
use super::expect::{quarantine_label, Checker};
use crate::plan::{Maintenance, Plan, StageKind, StagePlan};

/// What a stage did, as far as DataFusion and delta-rs tell.
#[derive(Clone, Debug, Default, Serialize)]
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
    /// The interrupted run this one resumes committed the stage: it was not run again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub committed_earlier: bool,
}

/// The run's shared state: one DataFusion session where every table and relation
/// is registered, and the latest handle of every Delta table.
pub struct Executor {
    pub plan: Plan,
    /// The run number, start versions and plan fingerprint every commit carries.
    pub tag: delta::RunTag,
    /// This run resumes an interrupted one; these stages of it committed (→ version).
    pub resumed: bool,
    committed_earlier: BTreeMap<String, i64>,
    pub ctx: SessionContext,
    /// Materialized relations larger than this many bytes are spilled to disk.
    spill_threshold: u64,
    /// Where they go; removed with the executor.
    spill_dir: tempfile::TempDir,
    tables: Mutex<BTreeMap<String, DeltaTable>>,
    /// State values computed by `state:` stages; the run's finish commit records them.
    states: Mutex<BTreeMap<String, String>>,
    /// Views registered so far (re-planned after commits to what they read).
    views: Mutex<Vec<String>>,
    /// Materialized relations computed so far (their key bounds drive pruning).
    materialized: Mutex<std::collections::BTreeSet<String>>,
    /// Partition columns per table.
    partitions: BTreeMap<String, Vec<String>>,
}

type StageResult<T> = Result<T, String>;

fn df_err(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or(&s).to_string()
}

impl Executor {
    /// Opens the tables and decides where the run starts: afresh, or resuming the
    /// pipeline's unfinished run (`abandon`: ending it by restoring its tables first).
    pub async fn new(plan: Plan, spill_threshold: u64, abandon: bool) -> StageResult<Self> {
        let mut tables = delta::open_tables(&plan).await?;
        let mut start = super::resume::find(&plan, &tables, abandon).await?;
        if let super::resume::Start::Abandon { unfinished, restore } = start {
            super::resume::abandon(&plan, &tables, &unfinished, &restore).await?;
            for t in &plan.tables {
                if tables.contains_key(&t.name) {
                    tables.insert(t.name.clone(), delta::open(&t.name, &t.location, None).await?);
                }
            }
            start = super::resume::find(&plan, &tables, false).await?;
        }
        let super::resume::Start::Run(start) = start else {
            return Err("the abandoned run is still unfinished".into());
        };
        if start.resumed {
            // Every stage reads the tables as the interrupted run found them.
            for t in &plan.tables {
                let version = start.tag.start_versions.get(&t.name).copied();
                let current = tables.get(&t.name).and_then(|d| d.version());
                if let Some(v) = version.filter(|v| Some(*v as u64) != current) {
                    tables.insert(t.name.clone(), delta::open(&t.name, &t.location, Some(v)).await?);
                }
            }
        }
        let ctx = crate::session::new_context();
        for (name, table) in &tables {
            ctx.register_table(name.as_str(), table.table_provider().await.map_err(df_err)?)
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
            spill_threshold,
            spill_dir: tempfile::Builder::new()
                .prefix("sqlplan-spill")
                .tempdir()
                .map_err(|e| format!("cannot create a spill directory: {e}"))?,
            ctx,
            tables: Mutex::new(tables),
            views: Mutex::new(Vec::new()),
            states: Mutex::new(BTreeMap::new()),
            materialized: Mutex::new(Default::default()),
        })
    }

    async fn table(&self, name: &str) -> StageResult<DeltaTable> {
        self.tables
            .lock()
            .await
            .get(name)
            .cloned()
            .ok_or_else(|| format!("unknown table `{name}`"))
    }

    /// After a commit, later stages read the new version.
    /// Returns the version the stage committed, or None when the operation had
    /// nothing to commit (e.g. an optimize with nothing to compact).
    async fn committed(&self, name: &str, table: DeltaTable) -> StageResult<Option<i64>> {
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
        let provider = table.table_provider().await.map_err(df_err)?;
        self.ctx.deregister_table(name).map_err(df_err)?;
        self.ctx.register_table(name, provider).map_err(df_err)?;
        self.tables.lock().await.insert(name.to_string(), table);
        self.refresh_views(name).await?;
        Ok(version)
    }

    /// Adds literal key bounds from materialized relations to the Delta scans they
    /// drive (see `bounds`).
    async fn bounded(&self, df: DataFrame) -> StageResult<(DataFrame, Vec<String>)> {
        let materialized = self.materialized.lock().await.clone();
        let catalog = super::bounds::Catalog {
            tables: &self.partitions,
            materialized: &materialized,
        };
        super::bounds::apply(&self.ctx, &catalog, df).await
    }

    /// A view is evaluated by its readers, so after a commit to a table it reads
    /// (directly or through other views) it is planned again on the new version.
    /// No stage can be reading it meanwhile: such a reader would have a hazard with
    /// the writer that just committed.
    async fn refresh_views(&self, table: &str) -> StageResult<()> {
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
            if self.reads_through_views(view, table) {
                let df = self
                    .ctx
                    .sql(view.sql.as_deref().unwrap_or(""))
                    .await
                    .map_err(df_err)?;
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

    fn reads_through_views(&self, stage: &StagePlan, table: &str) -> bool {
        stage.reads.iter().any(|r| {
            r == table
                || self
                    .plan
                    .stages
                    .iter()
                    .find(|s| &s.name == r && s.kind == StageKind::View)
                    .is_some_and(|v| self.reads_through_views(v, table))
        })
    }

    pub async fn run_stage(&self, stage: &StagePlan) -> StageResult<StageMetrics> {
        if let Some(&version) = self.committed_earlier.get(&stage.name) {
            return self.adopt(stage, version).await;
        }
        let mut metrics = self.execute(stage).await?;
        if stage.report {
            metrics.reported = self.rows_of(&stage.name).await?;
        }
        if let Some(state) = &stage.state {
            // The relation's single value; NULL (e.g. an empty batch) records nothing,
            // so the previous value stays in force.
            let rows = self.rows_of(&stage.name).await?;
            if rows.len() > 1 {
                return Err(format!(
                    "state stage `{}` returned {} rows; one is expected",
                    stage.name,
                    rows.len()
                ));
            }
            let value = rows
                .first()
                .and_then(|r| r.values().next())
                .filter(|v| !v.is_null());
            if let Some(v) = value {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                self.states.lock().await.insert(state.clone(), text);
            }
        }
        Ok(metrics)
    }

    /// A stage the interrupted run committed: later stages read the version it
    /// committed, as they would have in that run.
    async fn adopt(&self, stage: &StagePlan, version: i64) -> StageResult<StageMetrics> {
        let target = stage.writes.clone().ok_or("a committed stage without a table")?;
        let location = self.location(&target)?;
        let table = delta::open(&target, &location, Some(version)).await?;
        self.committed(&target, table).await?;
        Ok(StageMetrics {
            version: Some(version),
            committed_earlier: true,
            ..Default::default()
        })
    }

    fn location(&self, table: &str) -> StageResult<String> {
        self.plan
            .tables
            .iter()
            .find(|t| t.name == table)
            .map(|t| t.location.clone())
            .ok_or_else(|| format!("unknown table `{table}`"))
    }

    /// Ends the run, after every stage succeeded: one commit on each state table (on
    /// the last table written when the pipeline records no state) carries the state
    /// values and the run's finish transaction. Until it is in the log, the run is
    /// unfinished and the next one resumes it; recorded state never moves past a
    /// batch that some table did not receive.
    pub async fn finish(&self) -> StageResult<()> {
        let states = self.states.lock().await.clone();
        super::failpoint::hit("before:finish");
        for name in delta::finish_tables(&self.plan) {
            let table = self.table(&name).await?;
            super::failpoint::writing(&name, "finish");
            let table = delta::append_empty(table, self.tag.finish_properties(&states)).await?;
            self.tables.lock().await.insert(name.clone(), table);
        }
        super::failpoint::hit("after:finish");
        Ok(())
    }

    /// The commit properties of a stage's write (and, for failpoints, who writes).
    fn props(&self, stage: &StagePlan) -> deltalake::kernel::transaction::CommitProperties {
        if let Some(table) = &stage.writes {
            super::failpoint::writing(table, &stage.name);
        }
        self.tag.commit_properties(&stage.name)
    }

    /// At most this many rows of a reported relation go into the report.
    const REPORTED_ROWS: usize = 1000;

    async fn rows_of(
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
        json_rows(&batches)
    }

    async fn execute(&self, stage: &StagePlan) -> StageResult<StageMetrics> {
        let sql = stage.sql.as_deref().unwrap_or("");
        match stage.kind {
            StageKind::View => {
                let df = self.ctx.sql(sql).await.map_err(df_err)?;
                self.ctx
                    .register_table(stage.name.as_str(), df.into_view())
                    .map_err(df_err)?;
                self.views.lock().await.push(stage.name.clone());
                Ok(StageMetrics::default())
            }
            StageKind::Materialized => self.materialize(stage, sql).await,
            StageKind::Insert | StageKind::InsertOverwrite => self.insert(stage, sql).await,
            StageKind::Merge => self.merge(stage, sql).await,
            StageKind::Delete => self.delete(stage, sql).await,
            StageKind::Optimize | StageKind::Vacuum => self.maintain(stage).await,
        }
    }

    /// Computed once; every reader scans the result: held in memory, or spilled to
    /// local Parquet once it grows past the spill threshold.
    async fn materialize(&self, stage: &StagePlan, sql: &str) -> StageResult<StageMetrics> {
        use futures::StreamExt;
        let df = self.ctx.sql(sql).await.map_err(df_err)?;
        let (df, literal_bounds) = self.bounded(df).await?;
        let width = df.schema().fields().len();
        let mut checker = (!stage.checks.is_empty()).then(|| Checker::new(&stage.checks));
        let df = match &checker {
            Some(c) => c.with_check_columns(df)?,
            None => df,
        };
        let task = Arc::new(df.task_ctx());
        let plan = df.create_physical_plan().await.map_err(df_err)?;
        // The physical schema: batches may differ from the logical one (view types,
        // nullability), and a MemTable must match its batches. Check columns are
        // removed from every batch.
        let schema = Arc::new(
            plan.schema()
                .project(&(0..width).collect::<Vec<_>>())
                .map_err(df_err)?,
        );
        let mut stream =
            datafusion::physical_plan::execute_stream(plan.clone(), task).map_err(df_err)?;
        let (mut held, mut held_bytes, mut rows) = (Vec::new(), 0usize, 0u64);
        let mut spill: Option<(
            std::path::PathBuf,
            datafusion::parquet::arrow::ArrowWriter<std::fs::File>,
        )> = None;
        while let Some(batch) = stream.next().await {
            let mut batch = batch.map_err(df_err)?;
            if let Some(c) = &mut checker {
                batch = c.split(batch)?;
            }
            let batch = compact(batch).map_err(df_err)?;
            rows += batch.num_rows() as u64;
            match &mut spill {
                Some((_, writer)) => writer.write(&batch).map_err(df_err)?,
                None => {
                    held_bytes += batch.get_array_memory_size();
                    held.push(batch);
                    if held_bytes as u64 > self.spill_threshold {
                        let (path, mut writer) = self.spill_writer(&stage.name, schema.clone())?;
                        for b in held.drain(..) {
                            writer.write(&b).map_err(df_err)?;
                        }
                        spill = Some((path, writer));
                    }
                }
            }
        }
        let scan = scan_stats(&plan);
        let mut checks = BTreeMap::new();
        let mut quarantined = None;
        if let Some(c) = &checker {
            if let Some(failure) = c.failure(&stage.name) {
                return Err(failure);
            }
            checks = c.counts();
            quarantined = Some(c.dropped.len() as u64);
            if !c.dropped.is_empty() {
                self.quarantine(stage, c).await?;
            }
        }
        let spilled_bytes = match spill {
            Some((path, writer)) => {
                writer.close().map_err(df_err)?;
                let bytes = std::fs::metadata(&path).map_err(df_err)?.len();
                let options = datafusion::prelude::ParquetReadOptions::default();
                self.ctx
                    .register_parquet(stage.name.as_str(), path.to_string_lossy(), options)
                    .await
                    .map_err(df_err)?;
                Some(bytes)
            }
            None => {
                let table = MemTable::try_new(schema, vec![held]).map_err(df_err)?;
                self.ctx
                    .register_table(stage.name.as_str(), Arc::new(table))
                    .map_err(df_err)?;
                None
            }
        };
        self.materialized.lock().await.insert(stage.name.clone());
        Ok(StageMetrics {
            checks,
            quarantined,
            rows_out: Some(rows),
            files_scanned: scan.files,
            bytes_scanned: scan.bytes,
            spilled_bytes,
            literal_bounds,
            ..Default::default()
        })
    }

    /// Appends the rows a stage's checks dropped to its quarantine table (one commit;
    /// a resumed run that finds the commit in the log does not write them again).
    async fn quarantine(&self, stage: &StagePlan, checker: &Checker) -> StageResult<()> {
        let target = stage.quarantine.clone().ok_or("dropped rows without a quarantine table")?;
        let label = quarantine_label(&stage.name);
        if let Some(&version) = self.committed_earlier.get(&label) {
            let table = delta::open(&target, &self.location(&target)?, Some(version)).await?;
            self.committed(&target, table).await?;
            return Ok(());
        }
        let table = self.table(&target).await?;
        super::failpoint::writing(&target, &label);
        let table = table
            .write(vec![checker.quarantine_batch(self.tag.run_number, &stage.name)])
            .with_save_mode(SaveMode::Append)
            .with_writer_properties(delta::writer_properties())
            .with_commit_properties(self.tag.commit_properties(&label))
            .await
            .map_err(df_err)?;
        self.committed(&target, table).await?;
        Ok(())
    }

    fn spill_writer(
        &self,
        name: &str,
        schema: datafusion::arrow::datatypes::SchemaRef,
    ) -> StageResult<(
        std::path::PathBuf,
        datafusion::parquet::arrow::ArrowWriter<std::fs::File>,
    )> {
        let path = self.spill_dir.path().join(format!("{name}.parquet"));
        let file = std::fs::File::create(&path)
            .map_err(|e| format!("cannot spill to {}: {e}", path.display()))?;
        let writer =
            datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None).map_err(df_err)?;
        Ok((path, writer))
    }

    async fn insert(&self, stage: &StagePlan, sql: &str) -> StageResult<StageMetrics> {
        let Statement::Insert(insert) = parse_one(sql)? else {
            return Err("not an INSERT".into());
        };
        let target = stage.writes.clone().ok_or("INSERT without a target")?;
        let source = insert
            .source
            .as_ref()
            .ok_or("INSERT without a query")?
            .to_string();
        let columns: Vec<String> = insert
            .columns
            .iter()
            .map(|c| c.to_string().to_lowercase())
            .collect();
        let table = self.table(&target).await?;
        let df = self.ctx.sql(&source).await.map_err(df_err)?;
        let (df, literal_bounds) = self.bounded(df).await?;
        let df = conform(df, &table, &columns)?;
        let (batches, scan) = collect_with_scan_metrics(df).await?;
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let partitions = table
            .snapshot()
            .map_err(df_err)?
            .metadata()
            .partition_columns()
            .to_vec();
        let mut write = table
            .write(batches.clone())
            .with_writer_properties(delta::writer_properties())
            .with_commit_properties(self.props(stage));
        if stage.kind == StageKind::InsertOverwrite {
            write = write.with_save_mode(SaveMode::Overwrite);
            if !partitions.is_empty() {
                // Replace exactly the partitions this stage produced.
                match partition_predicate(&batches, &partitions) {
                    Some(predicate) => write = write.with_replace_where(predicate),
                    None => {
                        return Ok(StageMetrics {
                            rows_out: Some(0),
                            ..Default::default()
                        })
                    }
                }
            }
        } else {
            write = write.with_save_mode(SaveMode::Append);
        }
        let table = write.await.map_err(df_err)?;
        let m = delta::last_commit_metrics(&table).await;
        let version = self.committed(&target, table).await?;
        Ok(StageMetrics {
            rows_out: Some(rows),
            rows_inserted: Some(rows),
            files_added: metric(&m, "num_added_files"),
            files_removed: metric(&m, "num_removed_files"),
            bytes_written: metric(&m, "num_added_bytes"),
            files_scanned: scan.files,
            bytes_scanned: scan.bytes,
            literal_bounds,
            version,
            ..Default::default()
        })
    }

    async fn merge(&self, stage: &StagePlan, sql: &str) -> StageResult<StageMetrics> {
        let state = self.ctx.state();
        let LogicalPlan::Dml(dml) = state.create_logical_plan(sql).await.map_err(df_err)? else {
            return Err("not a MERGE".into());
        };
        let WriteOp::MergeInto(op) = dml.op else {
            return Err("not a MERGE".into());
        };
        let target = dml.table_name.table().to_string();
        let source_alias = dml
            .input
            .schema()
            .iter()
            .next()
            .and_then(|(q, _)| q.cloned())
            .map(|q| q.table().to_string())
            .ok_or("MERGE source without a name")?;
        // The source is computed once: checked for duplicate keys, then merged.
        let source = DataFrame::new(state.clone(), (*dml.input).clone());
        let (source, literal_bounds) = self.bounded(source).await?;
        let task = Arc::new(source.task_ctx());
        let physical = source.create_physical_plan().await.map_err(df_err)?;
        let schema = physical.schema();
        let batches = datafusion::physical_plan::collect(physical, task)
            .await
            .map_err(df_err)?;
        let source_rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let mem = MemTable::try_new(schema, vec![batches]).map_err(df_err)?;
        let source = self
            .ctx
            .read_table(Arc::new(mem))
            .map_err(df_err)?
            .alias(&source_alias)
            .map_err(df_err)?;
        let keys = source_keys(&op.on, &target);
        check_unique_keys(&source, &keys).await?;

        let table = self.table(&target).await?;
        let all_columns: Vec<String> = dml
            .target
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        // Keep the source on the build side of delta-rs's join: statistics compare the
        // source's in-memory size with the target's compressed size on disk, so a
        // large source could swap the whole target into the hash table.
        let mut state = state;
        state.config_mut().options_mut().optimizer.join_reordering = false;
        let mut mb = table
            .merge(source, op.on.clone())
            .with_target_alias(&target)
            .with_source_alias(&source_alias)
            .with_session_state(Arc::new(state))
            .with_writer_properties(delta::writer_properties())
            .with_commit_properties(self.props(stage));
        for clause in op.clauses {
            let pred = clause.predicate;
            mb = match (clause.kind.canonical(), clause.action) {
                (MergeIntoClauseKind::Matched, MergeIntoAction::Update(sets)) => mb
                    .when_matched_update(|mut b| {
                        if let Some(p) = pred {
                            b = b.predicate(p);
                        }
                        for (c, e) in sets {
                            b = b.update(c.as_str(), e);
                        }
                        b
                    }),
                (MergeIntoClauseKind::Matched, MergeIntoAction::Delete) => {
                    mb.when_matched_delete(|mut b| {
                        if let Some(p) = pred {
                            b = b.predicate(p);
                        }
                        b
                    })
                }
                (MergeIntoClauseKind::NotMatchedBySource, MergeIntoAction::Update(sets)) => mb
                    .when_not_matched_by_source_update(|mut b| {
                        if let Some(p) = pred {
                            b = b.predicate(p);
                        }
                        for (c, e) in sets {
                            b = b.update(c.as_str(), e);
                        }
                        b
                    }),
                (MergeIntoClauseKind::NotMatchedBySource, MergeIntoAction::Delete) => mb
                    .when_not_matched_by_source_delete(|mut b| {
                        if let Some(p) = pred {
                            b = b.predicate(p);
                        }
                        b
                    }),
                (_, MergeIntoAction::Insert { columns, values }) => {
                    mb.when_not_matched_insert(|mut b| {
                        if let Some(p) = pred {
                            b = b.predicate(p);
                        }
                        let columns = if columns.is_empty() {
                            all_columns.clone()
                        } else {
                            columns
                        };
                        for (c, e) in columns.into_iter().zip(values) {
                            b = b.set(c.as_str(), e);
                        }
                        b
                    })
                }
                (kind, action) => {
                    return Err(format!("unsupported MERGE clause {kind:?} {action:?}"))
                }
            }
            .map_err(df_err)?;
        }
        let (table, m) = mb.await.map_err(df_err)?;
        let version = self.committed(&target, table).await?;
        Ok(StageMetrics {
            literal_bounds,
            rows_out: Some(source_rows),
            rows_inserted: Some(m.num_target_rows_inserted as u64),
            rows_updated: Some(m.num_target_rows_updated as u64),
            rows_deleted: Some(m.num_target_rows_deleted as u64),
            files_added: Some(m.num_target_files_added as u64),
            files_removed: Some(m.num_target_files_removed as u64),
            files_scanned: Some(m.num_target_files_scanned as u64),
            version,
            ..Default::default()
        })
    }

    async fn delete(&self, stage: &StagePlan, sql: &str) -> StageResult<StageMetrics> {
        let Statement::Delete(delete) = parse_one(sql)? else {
            return Err("not a DELETE".into());
        };
        let target = stage.writes.clone().ok_or("DELETE without a target")?;
        let table = self.table(&target).await?;
        let mut op = table
            .delete()
            .with_session_state(Arc::new(self.ctx.state()))
            .with_commit_properties(self.props(stage));
        if let Some(selection) = &delete.selection {
            op = op.with_predicate(selection.to_string());
        }
        let (table, m) = op.await.map_err(df_err)?;
        let version = self.committed(&target, table).await?;
        Ok(StageMetrics {
            rows_deleted: m.num_deleted_rows.map(|n| n as u64),
            files_added: Some(m.num_added_files as u64),
            files_removed: Some(m.num_removed_files as u64),
            version,
            ..Default::default()
        })
    }

    async fn maintain(&self, stage: &StagePlan) -> StageResult<StageMetrics> {
        let target = stage.writes.clone().ok_or("maintenance without a table")?;
        let table = self.table(&target).await?;
        let props = self.props(stage);
        match stage
            .maintenance
            .as_ref()
            .ok_or("maintenance stage without settings")?
        {
            Maintenance::Optimize {
                filter,
                zorder_by,
                target_size,
            } => {
                let owned = match filter {
                    Some(f) => partition_filters(f)?,
                    None => Vec::new(),
                };
                let filters: Vec<(&str, FilterOp, FilterValue<'_>)> = owned
                    .iter()
                    .map(|(c, op, vals)| {
                        let v = if matches!(op, FilterOp::In | FilterOp::NotIn) {
                            FilterValue::Set(vals.iter().map(String::as_str).collect())
                        } else {
                            FilterValue::Scalar(vals[0].as_str())
                        };
                        (c.as_str(), *op, v)
                    })
                    .collect();
                let kind = if zorder_by.is_empty() {
                    deltalake::operations::optimize::OptimizeType::Compact
                } else {
                    deltalake::operations::optimize::OptimizeType::ZOrder(zorder_by.clone())
                };
                let mut op = table
                    .optimize()
                    .with_type(kind)
                    .with_filters(&filters)
                    .with_commit_properties(props);
                if let Some(size) = target_size.and_then(std::num::NonZeroU64::new) {
                    op = op.with_target_size(size);
                }
                let (table, m) = op.await.map_err(df_err)?;
                let version = self.committed(&target, table).await?;
                Ok(StageMetrics {
                    files_added: Some(m.num_files_added),
                    files_removed: Some(m.num_files_removed),
                    bytes_written: Some(m.files_added.total_size.max(0) as u64),
                    version,
                    ..Default::default()
                })
            }
            Maintenance::Vacuum { retain_hours } => {
                let (table, m) = table
                    .vacuum()
                    .with_retention_period(chrono::Duration::hours(*retain_hours as i64))
                    // The retention is explicit in the pipeline; Delta's 7-day floor
                    // would otherwise reject shorter ones.
                    .with_enforce_retention_duration(false)
                    .with_commit_properties(props)
                    .await
                    .map_err(df_err)?;
                let mut deleted: Vec<String> = m
                    .files_deleted
                    .iter()
                    .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
                    .collect();
                deleted.sort();
                deleted.dedup();
                let version = self.committed(&target, table).await?;
                Ok(StageMetrics {
                    files_removed: Some(deleted.len() as u64),
                    version,
                    ..Default::default()
                })
            }
        }
    }
}

#[derive(Default)]
struct ScanStats {
    files: Option<u64>,
    bytes: Option<u64>,
}

/// Executes a query keeping its physical plan, whose scan nodes carry the metrics:
/// files chosen from the Delta log (`count_files_scanned`) and Parquet bytes read.
async fn collect_with_scan_metrics(df: DataFrame) -> StageResult<(Vec<RecordBatch>, ScanStats)> {
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await.map_err(df_err)?;
    let batches = datafusion::physical_plan::collect(plan.clone(), task)
        .await
        .map_err(df_err)?;
    Ok((batches, scan_stats(&plan)))
}

/// Scan metrics of an executed physical plan: files chosen from the Delta log
/// (`count_files_scanned`) and Parquet bytes read.
fn scan_stats(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> ScanStats {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut stats = ScanStats::default();
    let _ = plan.apply(|node| {
        if let Some(m) = node.metrics() {
            if let Some(files) = m.sum_by_name("count_files_scanned") {
                *stats.files.get_or_insert(0) += files.as_usize() as u64;
            }
            if node.name() == "DataSourceExec" {
                if let Some(bytes) = m.sum_by_name("bytes_scanned") {
                    *stats.bytes.get_or_insert(0) += bytes.as_usize() as u64;
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    stats
}

/// Rows as JSON objects (NULL columns left out), for reports and fixtures.
pub fn json_rows(
    batches: &[RecordBatch],
) -> StageResult<Vec<serde_json::Map<String, serde_json::Value>>> {
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    writer
        .write_batches(&batches.iter().collect::<Vec<_>>())
        .map_err(df_err)?;
    writer.finish().map_err(df_err)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(df_err)
}

fn parse_one(sql: &str) -> StageResult<Statement> {
    let mut statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(df_err)?;
    statements
        .pop()
        .ok_or_else(|| "empty statement".to_string())
}

fn metric(m: &BTreeMap<String, serde_json::Value>, key: &str) -> Option<u64> {
    m.get(key).and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })
}

/// The query's columns, by position (or by the INSERT's column list), cast to the
/// table's columns and named like them.
fn conform(df: DataFrame, table: &DeltaTable, columns: &[String]) -> StageResult<DataFrame> {
    let target = table.snapshot().map_err(df_err)?.snapshot().arrow_schema();
    let source: Vec<Expr> = df
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    if columns.is_empty() && source.len() != target.fields().len() {
        return Err(format!(
            "the query has {} columns, the table {}",
            source.len(),
            target.fields().len()
        ));
    }
    let exprs = target
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let e = if columns.is_empty() {
                source[i].clone()
            } else {
                match columns.iter().position(|c| c == f.name()) {
                    Some(p) => source[p].clone(),
                    None => lit(datafusion::scalar::ScalarValue::Null),
                }
            };
            cast(e, f.data_type().clone()).alias(f.name())
        })
        .collect::<Vec<_>>();
    df.select(exprs).map_err(df_err)
}

/// `ds IN ('a', 'b') AND …` for the partition values present in the batches.
fn partition_predicate(batches: &[RecordBatch], partitions: &[String]) -> Option<String> {
    let mut parts = Vec::new();
    for p in partitions {
        let mut values = std::collections::BTreeSet::new();
        for b in batches {
            let array = b.column_by_name(p)?;
            for i in 0..array.len() {
                if array.is_null(i) {
                    values.insert("NULL".to_string());
                } else {
                    values.insert(format!(
                        "'{}'",
                        array_value_to_string(array, i).ok()?.replace('\'', "''")
                    ));
                }
            }
        }
        if values.is_empty() {
            return None;
        }
        let (nulls, literals): (Vec<String>, Vec<String>) =
            values.into_iter().partition(|v| v == "NULL");
        let mut alternatives = Vec::new();
        if !literals.is_empty() {
            alternatives.push(format!("{p} IN ({})", literals.join(", ")));
        }
        if !nulls.is_empty() {
            alternatives.push(format!("{p} IS NULL"));
        }
        parts.push(format!("({})", alternatives.join(" OR ")));
    }
    Some(parts.join(" AND "))
}

/// Source columns equated with target columns in ON: the MERGE key.
fn source_keys(on: &Expr, target: &str) -> Vec<Expr> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let mut keys = Vec::new();
    for conjunct in datafusion::logical_expr::utils::split_conjunction(on) {
        if let Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) = conjunct
        {
            let is_target = |e: &Expr| matches!(e, Expr::Column(c) if c.relation.as_ref().is_some_and(|r| r.table() == target));
            match (is_target(left), is_target(right)) {
                (true, false) if right.column_refs().len() == 1 => keys.push((**right).clone()),
                (false, true) if left.column_refs().len() == 1 => keys.push((**left).clone()),
                _ => {}
            }
        }
    }
    keys
}

/// Two source rows for one target key would make the result depend on which one
/// delta-rs happens to apply: an error that names the key, never a silent pick.
async fn check_unique_keys(source: &DataFrame, keys: &[Expr]) -> StageResult<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let dup = source
        .clone()
        .aggregate(keys.to_vec(), vec![count(lit(1)).alias("sqlplan_rows")])
        .and_then(|d| d.filter(col("sqlplan_rows").gt(lit(1))))
        .and_then(|d| d.limit(0, Some(1)))
        .map_err(df_err)?
        .collect()
        .await
        .map_err(df_err)?;
    let Some(batch) = dup.iter().find(|b| b.num_rows() > 0) else {
        return Ok(());
    };
    let key: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "{} = {}",
                k,
                array_value_to_string(batch.column(i), 0).unwrap_or_default()
            )
        })
        .collect();
    let n = array_value_to_string(batch.column(keys.len()), 0).unwrap_or_default();
    Err(format!(
        "the MERGE source has {n} rows for one target key ({}); deduplicate the source",
        key.join(", ")
    ))
}

/// An optimize filter (`ds = 'a' AND ds IN ('b')`) as delta-rs partition filters.
fn partition_filters(filter: &str) -> StageResult<Vec<(String, FilterOp, Vec<String>)>> {
    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(filter)
        .and_then(|mut p| p.parse_expr())
        .map_err(df_err)?;
    let mut out = Vec::new();
    collect_filters(&expr, &mut out)?;
    Ok(out)
}

fn collect_filters(
    expr: &SqlExpr,
    out: &mut Vec<(String, FilterOp, Vec<String>)>,
) -> StageResult<()> {
    use datafusion::sql::sqlparser::ast::BinaryOperator as B;
    let unsupported = || {
        format!(
            "optimize filter `{expr}`: use `col = 'v'`, comparisons, `col IN (…)` joined by AND"
        )
    };
    match expr {
        SqlExpr::Nested(e) => collect_filters(e, out),
        SqlExpr::BinaryOp {
            left,
            op: B::And,
            right,
        } => {
            collect_filters(left, out)?;
            collect_filters(right, out)
        }
        SqlExpr::BinaryOp { left, op, right } => {
            let op = match op {
                B::Eq => FilterOp::Eq,
                B::NotEq => FilterOp::Ne,
                B::Lt => FilterOp::Lt,
                B::LtEq => FilterOp::Le,
                B::Gt => FilterOp::Gt,
                B::GtEq => FilterOp::Ge,
                _ => return Err(unsupported()),
            };
            out.push((
                column_name(left).ok_or_else(unsupported)?,
                op,
                vec![literal(right).ok_or_else(unsupported)?],
            ));
            Ok(())
        }
        SqlExpr::InList {
            expr: e,
            list,
            negated,
        } => {
            let values = list
                .iter()
                .map(literal)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(unsupported)?;
            out.push((
                column_name(e).ok_or_else(unsupported)?,
                if *negated {
                    FilterOp::NotIn
                } else {
                    FilterOp::In
                },
                values,
            ));
            Ok(())
        }
        _ => Err(unsupported()),
    }
}

fn column_name(e: &SqlExpr) -> Option<String> {
    match e {
        SqlExpr::Identifier(i) => Some(i.value.to_lowercase()),
        SqlExpr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.to_lowercase()),
        _ => None,
    }
}

fn literal(e: &SqlExpr) -> Option<String> {
    use datafusion::sql::sqlparser::ast::Value;
    match e {
        SqlExpr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.clone()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// A materialized relation owns compact data. String views (also inside lists)
/// point into the buffers they were decoded or computed from — for a relation of a
/// few rows read out of a large table, whole Parquet pages — so they are copied into
/// buffers of their own (`gc`). Otherwise those buffers stay alive, count against the
/// spill threshold, and travel with every later batch (measured: a 301-row MERGE
/// source built from them took 125 s to merge instead of 0.5 s).
fn compact(batch: RecordBatch) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| has_views(f.data_type()))
    {
        return Ok(batch);
    }
    let columns = batch.columns().iter().map(compact_array).collect();
    RecordBatch::try_new(batch.schema(), columns)
}

fn has_views(t: &DataType) -> bool {
    match t {
        DataType::Utf8View | DataType::BinaryView => true,
        DataType::List(f) | DataType::LargeList(f) => has_views(f.data_type()),
        _ => false,
    }
}

fn compact_array(a: &ArrayRef) -> ArrayRef {
    use datafusion::arrow::array::{Array, AsArray, ListArray};
    use datafusion::arrow::buffer::OffsetBuffer;
    match a.data_type() {
        DataType::Utf8View => Arc::new(a.as_string_view().gc()),
        DataType::BinaryView => Arc::new(a.as_binary_view().gc()),
        DataType::List(field) if has_views(field.data_type()) => {
            let list = a.as_list::<i32>();
            let offsets = list.offsets();
            let first = offsets[0];
            let last = offsets[offsets.len() - 1];
            let values = list.values().slice(first as usize, (last - first) as usize);
            let offsets = OffsetBuffer::new(offsets.iter().map(|o| o - first).collect());
            Arc::new(ListArray::new(
                field.clone(),
                offsets,
                compact_array(&values),
                list.nulls().cloned(),
            ))
        }
        _ => a.clone(),
    }
}
