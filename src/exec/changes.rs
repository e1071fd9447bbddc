//! Writing what a statement changed in a table with deletion vectors (MERGE and
//! DELETE): per data file with deleted positions, remove it (every live row gone),
//! rewrite it without them (more than `rewrite_above` of its live rows gone), or give
//! it a vector (the union of its old one and the new positions); files without
//! deleted positions are not touched. One commit with the new files, the vectors and
//! the run's transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{FieldRef, Int64Type, Schema, SchemaRef};
use datafusion::common::ToDFSchema;
use datafusion::execution::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, Add, DeletionVectorDescriptor, LogicalFileView};
use deltalake::protocol::DeltaOperation;
use deltalake::DeltaTable;

use super::context::{df_err, Executor, StageResult};
use crate::delta::vectors::{self as dv, DataFile, VectorFile};
use crate::delta::writer::FileWriter;
use crate::plan::{StagePlan, Work};
use crate::report::StageMetrics;

/// A data file a statement may change, with its existing vector.
pub(super) struct Candidate {
    pub view: LogicalFileView,
    pub path: String,
    pub partition: HashMap<String, Option<String>>,
    /// The rows its existing vector deletes, if it has one.
    pub keep: Option<Arc<dv::Deleted>>,
    /// Physical rows (known once the file was read).
    pub rows: usize,
}

impl Candidate {
    pub fn file(&self) -> DataFile {
        DataFile {
            path: self.path.clone(),
            size: self.view.size() as u64,
        }
    }
}

/// The files of `table` that `wanted` accepts (by their log entry and partition
/// values), with their vectors.
pub(super) async fn candidates(
    table: &DeltaTable,
    wanted: impl Fn(&LogicalFileView, &HashMap<String, Option<String>>) -> bool,
) -> StageResult<Vec<Candidate>> {
    let mut candidates = candidates_from_log(table, wanted)?;
    let all: Vec<usize> = (0..candidates.len()).collect();
    with_vectors(table, &mut candidates, &all).await?;
    Ok(candidates)
}

/// The files `wanted` accepts, from the log alone: their existing vectors are not
/// read (on a cluster the executors read them).
pub(super) fn candidates_from_log(
    table: &DeltaTable,
    wanted: impl Fn(&LogicalFileView, &HashMap<String, Option<String>>) -> bool,
) -> StageResult<Vec<Candidate>> {
    let snapshot = table.snapshot().map_err(df_err)?;
    let mut candidates: Vec<Candidate> = Vec::new();
    for view in snapshot.log_data().iter() {
        let partition = view.partition_values_map();
        if wanted(&view, &partition) {
            candidates.push(Candidate {
                path: view.path().to_string(),
                partition,
                keep: None,
                rows: view.num_records().unwrap_or(0),
                view,
            });
        }
    }
    Ok(candidates)
}

/// Reads the existing vectors of the candidates at `which` (indices) as keep masks.
async fn with_vectors(
    table: &DeltaTable,
    candidates: &mut [Candidate],
    which: &[usize],
) -> StageResult<()> {
    let views: Vec<&LogicalFileView> = which.iter().map(|&i| &candidates[i].view).collect();
    let mut masks = dv::keep_masks(table, &views).await?;
    for &i in which {
        let c = &mut candidates[i];
        c.keep = masks.remove(&c.path).map(Arc::new);
    }
    Ok(())
}

/// What happens to a data file that loses rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fate {
    /// Every live row is gone: the file is removed.
    Remove,
    /// More than `rewrite_above` of its live rows are gone: rewritten without them.
    Rewrite,
    /// Given a vector: the union of its old one and the new positions.
    Vector,
}

impl Fate {
    /// The fate of a file that loses `deleted` of its `live` rows.
    pub fn of(deleted: u64, live: u64, rewrite_above: f64) -> Fate {
        if deleted >= live {
            Fate::Remove
        } else if deleted as f64 > rewrite_above * live as f64 {
            Fate::Rewrite
        } else {
            Fate::Vector
        }
    }
}

/// What a MERGE or DELETE deleted.
pub(super) enum Deleted {
    /// Positions known in this process (a local run), by candidate index: the
    /// vectors and rewrites are written here.
    Positions {
        positions: BTreeMap<u32, Vec<u64>>,
        rewrite_above: f64,
    },
    /// Decided and written on a cluster.
    Decided(Decided),
}

/// Each changed file's fate, with its vector or its rewrite written.
#[derive(Default)]
pub(super) struct Decided {
    /// Candidate index → its fate and how many rows it loses.
    pub fates: BTreeMap<u32, (Fate, u64)>,
    /// The new vectors of the files whose fate is `Vector`.
    pub vectors: HashMap<u32, DeletionVectorDescriptor>,
    pub vector_bytes: u64,
    /// The files that replace the rewritten ones.
    pub rewritten: Vec<Add>,
}

impl Decided {
    /// The rows the changed files lose.
    pub fn rows(&self) -> u64 {
        self.fates.values().map(|(_, n)| n).sum()
    }
}

/// What a MERGE or DELETE changed, for `commit_changes` to write and commit.
pub(super) struct Changes {
    pub deleted: Deleted,
    /// Holds the rows written in this process (a local MERGE's new and updated
    /// rows); rewrites of a local run go here too.
    pub writer: FileWriter,
    /// Files written elsewhere (a cluster's executors).
    pub added: Vec<Add>,
}

impl Changes {
    /// A DELETE's: deleted rows only, no new rows.
    pub fn deleting(table: &DeltaTable, deleted: Deleted) -> StageResult<Changes> {
        Ok(Changes {
            deleted,
            writer: FileWriter::for_table(table, None)?,
            added: Vec::new(),
        })
    }
}

/// What `commit_changes` wrote.
pub(super) struct Written {
    files_added: u64,
    removed: u64,
    rewritten: u64,
    with_vectors: u64,
    rows_by_vector: u64,
    bytes: u64,
    version: Option<i64>,
}

impl Written {
    pub fn metrics(&self) -> StageMetrics {
        StageMetrics {
            files_added: Some(self.files_added),
            files_removed: Some(self.removed + self.rewritten),
            bytes_written: Some(self.bytes),
            files_with_vectors: Some(self.with_vectors),
            files_rewritten: Some(self.rewritten),
            rows_deleted_by_vector: Some(self.rows_by_vector),
            version: self.version,
            ..Default::default()
        }
    }
}

/// Decides each file's fate from the positions it loses and writes the vectors
/// (one file beside the data) and the rewrites (into `writer`) here.
async fn decide_here(
    table: &DeltaTable,
    candidates: &[Candidate],
    mut positions: BTreeMap<u32, Vec<u64>>,
    rewrite_above: f64,
    writer: &mut FileWriter,
) -> StageResult<Decided> {
    let store = table.object_store();
    let writer_schema = writer.arrow_schema();
    let mut decided = Decided::default();
    let mut vectors = VectorFile::default();
    for (&i, positions) in &mut positions {
        let c = &candidates[i as usize];
        positions.sort_unstable();
        positions.dedup();
        let already: Vec<u64> = c
            .keep
            .as_ref()
            .map(|k| k.positions().collect())
            .unwrap_or_default();
        let live = (c.rows - already.len()) as u64;
        let fate = Fate::of(positions.len() as u64, live, rewrite_above);
        decided.fates.insert(i, (fate, positions.len() as u64));
        let gone: BTreeSet<u64> = already.iter().chain(positions.iter()).copied().collect();
        match fate {
            Fate::Remove => {}
            Fate::Vector => vectors.add(&c.path, gone),
            Fate::Rewrite => {
                let kept = dv::ranges((0..c.rows as u64).filter(|p| !gone.contains(p)));
                let rows = dv::live_rows(
                    store.clone(),
                    &c.file(),
                    &c.partition,
                    Some(kept),
                    &writer_schema,
                )
                .await?;
                for b in rows {
                    writer.write(b).await?;
                }
            }
        }
    }
    let (descriptors, bytes) = vectors.write(store.as_ref()).await?;
    decided.vector_bytes = bytes;
    for (&i, (fate, _)) in &decided.fates {
        if *fate == Fate::Vector {
            let path = &candidates[i as usize].path;
            let descriptor = descriptors
                .get(path)
                .cloned()
                .ok_or("a deletion vector went missing")?;
            decided.vectors.insert(i, descriptor);
        }
    }
    Ok(decided)
}

impl Executor {
    /// Commits `actions` (sqlplan's own, not a delta-rs operation's) on the table's
    /// current snapshot with the stage's commit properties; later stages read the
    /// new version.
    pub(super) async fn commit_actions(
        &self,
        stage: &StagePlan,
        target: &str,
        table: DeltaTable,
        actions: Vec<Action>,
        operation: DeltaOperation,
    ) -> StageResult<Option<i64>> {
        let snapshot = table.snapshot().map_err(df_err)?.clone();
        let commit = CommitBuilder::from(self.props(stage))
            .with_actions(actions)
            .build(Some(&snapshot), table.log_store(), operation)
            .await
            .map_err(df_err)?;
        let mut table = table;
        table
            .update_incremental(Some(commit.version()))
            .await
            .map_err(df_err)?;
        self.committed(target, table).await
    }

    /// Deletes what `changes` says and commits, with the files it added: one
    /// commit of the removed, rewritten and new files and the new vectors.
    pub(super) async fn commit_changes(
        &self,
        stage: &StagePlan,
        target: &str,
        table: DeltaTable,
        candidates: &[Candidate],
        changes: Changes,
        operation: DeltaOperation,
    ) -> StageResult<Written> {
        let Changes {
            deleted,
            mut writer,
            added,
        } = changes;
        let decided = match deleted {
            Deleted::Positions {
                positions,
                rewrite_above,
            } => decide_here(&table, candidates, positions, rewrite_above, &mut writer).await?,
            Deleted::Decided(decided) => decided,
        };
        let mut actions: Vec<Action> = Vec::new();
        let count = |wanted: Fate| decided.fates.values().filter(|(f, _)| *f == wanted).count();
        let mut rows_by_vector = 0u64;
        for (&i, &(fate, deleted)) in &decided.fates {
            let c = &candidates[i as usize];
            actions.push(Action::Remove(c.view.remove_action(true)));
            if fate == Fate::Vector {
                rows_by_vector += deleted;
                #[allow(deprecated)] // the Add of a file view, to give it a new vector
                let add = c.view.add_action();
                let descriptor = decided
                    .vectors
                    .get(&i)
                    .cloned()
                    .ok_or("a deletion vector went missing")?;
                actions.push(Action::Add(dv::with_vector(add, descriptor, c.rows)?));
            }
        }
        let mut adds = writer.flush().await?;
        adds.extend(decided.rewritten.iter().cloned());
        adds.extend(added);
        let data_bytes: i64 = adds.iter().map(|a| a.size).sum();
        let files_added = adds.len() as u64;
        actions.extend(adds.into_iter().map(Action::Add));
        let version = self
            .commit_actions(stage, target, table, actions, operation)
            .await?;
        Ok(Written {
            files_added,
            removed: count(Fate::Remove) as u64,
            rewritten: count(Fate::Rewrite) as u64,
            with_vectors: count(Fate::Vector) as u64,
            rows_by_vector,
            bytes: data_bytes.max(0) as u64 + decided.vector_bytes,
            version,
        })
    }
}

impl Executor {
    /// DELETE on a table with deletion vectors: the rows the predicate holds for
    /// (read: its columns and each row's position, in the files its partition
    /// conjuncts leave) are deleted by vector, or their files rewritten or removed.
    pub(super) async fn delete_with_vectors(
        &self,
        stage: &StagePlan,
        target: &str,
        table: DeltaTable,
        predicate: Option<Expr>,
        rewrite_above: f64,
    ) -> StageResult<StageMetrics> {
        let state = self.ctx.state();
        let df = self.ctx.table(target).await.map_err(df_err)?;
        let schema = df.schema().as_arrow().clone();
        let condition = predicate
            .map(|p| simplified(&state, p, &schema))
            .transpose()
            .map_err(df_err)?;
        let partitions: Vec<String> = table
            .snapshot()
            .map_err(df_err)?
            .metadata()
            .partition_columns()
            .to_vec();
        if self.remote.is_some() {
            // The executors read the files' vectors; here only the changed files'.
            let candidates = candidates_from_log(&table, |_, _| true)?;
            let kept = partition_pass(&state, &schema, &partitions, &candidates, &condition)?;
            return self
                .delete_on_cluster(
                    stage,
                    target,
                    table,
                    condition,
                    candidates,
                    kept,
                    &schema,
                    rewrite_above,
                )
                .await;
        }
        let mut candidates = candidates(&table, |_, _| true).await?;
        let kept = partition_pass(&state, &schema, &partitions, &candidates, &condition)?;
        let test = RowTest::new(&state, condition.as_ref(), &schema, &partitions)?;
        let store = table.object_store();
        let mut deleted: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let (mut rows_deleted, mut scanned) = (0u64, 0u64);
        for (i, c) in candidates.iter_mut().enumerate() {
            if !kept[i] {
                continue;
            }
            scanned += 1;
            let positions = test.matching(store.clone(), c).await?;
            rows_deleted += positions.len() as u64;
            if !positions.is_empty() {
                deleted.insert(i as u32, positions);
            }
        }
        let deleted = Deleted::Positions {
            positions: deleted,
            rewrite_above,
        };
        let changes = Changes::deleting(&table, deleted)?;
        let operation = delete_operation(stage);
        let w = self
            .commit_changes(stage, target, table, &candidates, changes, operation)
            .await?;
        Ok(StageMetrics {
            rows_deleted: Some(rows_deleted),
            files_scanned: Some(scanned),
            ..w.metrics()
        })
    }
}

/// The operation a DELETE's commit records: its predicate as written in the stage.
pub(super) fn delete_operation(stage: &StagePlan) -> DeltaOperation {
    let predicate = match &stage.work {
        Work::Delete { selection } => selection.as_ref().map(ToString::to_string),
        _ => None,
    };
    DeltaOperation::Delete { predicate }
}

/// Which candidate files the predicate's conjuncts on partition columns leave.
fn partition_pass(
    state: &SessionState,
    schema: &Schema,
    partitions: &[String],
    candidates: &[Candidate],
    condition: &Option<Expr>,
) -> StageResult<Vec<bool>> {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| partitions.contains(f.name()))
        .cloned()
        .collect();
    let values = candidates
        .iter()
        .map(|c| crate::delta::scan::partition_values(&fields, |k| c.partition.get(k)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(df_err)?;
    crate::delta::scan::partition_pass(state, &fields, &values, condition.as_slice())
        .map_err(df_err)
}

/// A DELETE's predicate, ready to test the rows of one data file: the columns it
/// reads (data columns from the file, partition columns from the log's values) and
/// its physical form; none deletes every row.
struct RowTest {
    used: Vec<FieldRef>,
    schema: SchemaRef,
    physical: Option<Arc<dyn PhysicalExpr>>,
    /// The data columns read from each file.
    read: Vec<String>,
}

impl RowTest {
    fn new(
        state: &SessionState,
        condition: Option<&Expr>,
        schema: &Schema,
        partitions: &[String],
    ) -> StageResult<RowTest> {
        let used: Vec<FieldRef> = match condition {
            Some(c) => {
                let refs = c.column_refs();
                schema
                    .fields()
                    .iter()
                    .filter(|f| refs.iter().any(|r| &r.name == f.name()))
                    .cloned()
                    .collect()
            }
            None => Vec::new(),
        };
        let used_schema = Arc::new(Schema::new(used.clone()));
        let physical = match condition {
            Some(c) => {
                let df_schema = used_schema.clone().to_dfschema().map_err(df_err)?;
                Some(
                    state
                        .create_physical_expr(c.clone(), &df_schema)
                        .map_err(df_err)?,
                )
            }
            None => None,
        };
        let read = used
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !partitions.contains(n))
            .collect();
        Ok(RowTest {
            used,
            schema: used_schema,
            physical,
            read,
        })
    }

    /// The positions of the live rows of `c` the predicate holds for; reads the
    /// file, so `c.rows` is its physical row count afterwards.
    async fn matching(
        &self,
        store: Arc<dyn deltalake::ObjectStore>,
        c: &mut Candidate,
    ) -> StageResult<Vec<u64>> {
        let (batches, rows) = dv::read_rows(store, &c.file(), &self.read, dv::Rows::All).await?;
        c.rows = rows;
        let mut out = Vec::new();
        for b in &batches {
            let hit = self.evaluate(b, c)?;
            let positions = b
                .column_by_name(dv::ROW_NUMBER)
                .ok_or("no row numbers")?
                .as_primitive::<Int64Type>();
            for r in 0..b.num_rows() {
                let p = positions.value(r) as u64;
                let live = c.keep.as_ref().is_none_or(|k| k.is_live(p));
                let matches = hit.as_ref().is_none_or(|h| h.is_valid(r) && h.value(r));
                if live && matches {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// The predicate on the rows of `b` (partition columns filled from the log).
    fn evaluate(&self, b: &RecordBatch, c: &Candidate) -> StageResult<Option<BooleanArray>> {
        let Some(physical) = &self.physical else {
            return Ok(None);
        };
        let columns = self
            .used
            .iter()
            .map(|f| dv::column_of(b, f.name(), f.data_type(), &c.partition))
            .collect::<Result<Vec<_>, crate::delta::Error>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
        let input = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)
            .map_err(df_err)?;
        let hit = physical
            .evaluate(&input)
            .and_then(|v| v.into_array(input.num_rows()))
            .map_err(df_err)?;
        Ok(Some(hit.as_boolean().clone()))
    }
}

/// `expr` over `schema` as a physical plan would evaluate it: coerced and
/// simplified (functions such as `arrow_cast` exist only to be simplified away;
/// `SessionState::create_physical_expr` only coerces).
fn simplified(
    state: &datafusion::execution::SessionState,
    expr: datafusion::logical_expr::Expr,
    schema: &datafusion::arrow::datatypes::Schema,
) -> datafusion::common::Result<datafusion::logical_expr::Expr> {
    use datafusion::common::ToDFSchema;
    use datafusion::logical_expr::simplify::SimplifyContext;
    use datafusion::optimizer::simplify_expressions::ExprSimplifier;
    let df_schema = Arc::new(schema.clone().to_dfschema()?);
    let context = SimplifyContext::builder()
        .with_schema(df_schema.clone())
        .with_config_options(state.config_options().clone())
        .with_query_execution_start_time(state.execution_props().query_execution_start_time)
        .build();
    let simplifier = ExprSimplifier::new(context);
    simplifier.simplify(simplifier.coerce(expr, &df_schema)?)
}
