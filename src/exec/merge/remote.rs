//! MERGE into a table with deletion vectors on a cluster. The source is written
//! where it is computed (the scratch folder, with its keys cast to the target's
//! key types); the process learns only which partition values and key ranges it
//! covers, to choose the candidate files from the log. The key pass runs on the
//! executors (`KeyPassFiles`: each task matches a group of candidate files
//! against the source's keys), and so do the join of the source with the matched
//! rows and the clauses; the outcome is written to the scratch folder. From it
//! the executors write the new files and the vectors (`changes_on_cluster`):
//! the process receives counts by file and clause, the Add actions and the
//! vector descriptors, and makes the one commit, as a local MERGE does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::hash_utils::RandomState;
use datafusion::common::{JoinType, ScalarValue};
use datafusion::functions_aggregate::expr_fn::{max, min};
use datafusion::logical_expr::{cast as cast_expr, col, lit, Expr};
use datafusion::prelude::DataFrame;
use deltalake::DeltaTable;

use super::super::changes::{candidates_from_log, Candidate, Changes, Deleted, Written};
use super::super::context::{df_err, Executor, StageResult};
use super::super::error::StageError;
use super::vectors::{acts, clauses, merge_operation, referenced_columns, Act, ACTION};
use super::{duplicate_error, duplicates, source_keys, Merge};
use crate::cluster::sink::DataWriteSpec;
use crate::cluster::Remote;
use crate::delta::keys::{SourceKeys, FILE, POSITION};
use crate::delta::scan::keys::{KeyPassFiles, KeyPassSpec, SourceFile};
use crate::delta::writer::FileWriter;
use crate::plan::{StagePlan, VectorOptions};
use crate::report::StageMetrics;

/// The source's key columns as written (the i-th key cast to its target type).
fn key_column(i: usize) -> String {
    format!("__sqlplan_key_{i}")
}

/// A MERGE source the cluster wrote to the scratch folder.
pub(super) struct Source {
    /// Registered under this name; read as the statement's source alias.
    name: String,
    files: Vec<SourceFile>,
    rows: u64,
}

impl Source {
    /// Writes `source` with its keys where the cluster computes it; `None` for a
    /// source that is empty by plan (the local path handles it).
    pub(super) async fn write(
        exec: &Executor,
        remote: &Remote,
        stage: &StagePlan,
        merge: &Merge,
        source: DataFrame,
        keys: &[(String, Expr)],
        table: &DeltaTable,
    ) -> StageResult<Option<Source>> {
        let partitions = table
            .snapshot()
            .map_err(df_err)?
            .metadata()
            .partition_columns()
            .to_vec();
        let types = key_types(merge, keys)?;
        let mut keyed = source;
        for (i, ((_, e), t)) in keys.iter().zip(&types).enumerate() {
            keyed = keyed
                .with_column(&key_column(i), cast_expr(e.clone(), t.clone()))
                .map_err(df_err)?;
        }
        // Split by the key columns that are partition columns: a key pass task
        // then reads only the source files of its candidates' partitions.
        let split_by: Vec<String> = keys
            .iter()
            .enumerate()
            .filter(|(_, (c, _))| partitions.contains(c))
            .map(|(i, _)| key_column(i))
            .collect();
        let name = format!("{}__merge_source", stage.name);
        let Some(written) = remote
            .write_split(&name, keyed.logical_plan(), split_by)
            .await?
        else {
            return Ok(None);
        };
        exec.register_files(&name, &written.files).await?;
        Ok(Some(Source {
            name,
            rows: written.files.iter().map(|f| f.rows).sum(),
            files: written
                .files
                .into_iter()
                .map(|f| SourceFile {
                    url: f.url,
                    values: f.values,
                })
                .collect(),
        }))
    }
}

/// How a MERGE's outcome is applied on the cluster.
pub(super) struct Applied {
    /// The new files' order: the MERGE key's target columns.
    pub sort_by: Vec<String>,
    /// Whether two source rows may match one target row (an ON without a key
    /// equality): then checked, and a row two matches delete is deleted once.
    pub matches_may_repeat: bool,
}

/// What the clauses did, counted on the cluster.
pub(super) struct Counted {
    pub updated: u64,
    pub inserted: u64,
    pub deleted: u64,
}

/// What the clauses did, from the positions they delete counted by clause and
/// file, and the rows the executors wrote (new and updated rows).
fn counted(
    acts: &[Act],
    counts: BTreeMap<(u32, u32), u64>,
    rows_written: u64,
) -> StageResult<Counted> {
    let (mut updated, mut deleted) = (0, 0);
    for ((action, _), n) in counts {
        match (action as usize).checked_sub(1).and_then(|a| acts.get(a)) {
            Some(Act::Update) => updated += n,
            Some(Act::Delete) => deleted += n,
            _ => return Err("a MERGE position without a deleting clause".into()),
        }
    }
    let inserted = rows_written
        .checked_sub(updated)
        .ok_or("a MERGE wrote fewer rows than it updated")?;
    Ok(Counted {
        updated,
        inserted,
        deleted,
    })
}

/// The most source keys a key pass task holds as a hash set (about 40 bytes a
/// key: 200 MB a task at the default); `SQLPLAN_KEY_SET_LIMIT` sets it.
fn key_set_limit() -> u64 {
    std::env::var("SQLPLAN_KEY_SET_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000)
}

/// The target's types of the key columns.
fn key_types(merge: &Merge, keys: &[(String, Expr)]) -> StageResult<Vec<DataType>> {
    keys.iter()
        .map(|(c, _)| {
            Ok(merge
                .target_schema
                .field_with_name(c)
                .map_err(df_err)?
                .data_type()
                .clone())
        })
        .collect()
}

impl Executor {
    pub(super) async fn merge_on_cluster(
        &self,
        stage: &StagePlan,
        merge: Merge,
        source: Source,
        keys: Vec<(String, Expr)>,
        table: DeltaTable,
        options: &VectorOptions,
    ) -> StageResult<StageMetrics> {
        let snapshot = table.snapshot().map_err(df_err)?.clone();
        let partitions: Vec<String> = snapshot.metadata().partition_columns().to_vec();
        let target_fields = merge.target_fields();
        let source_df = self
            .ctx
            .table(source.name.as_str())
            .await
            .map_err(df_err)?
            .alias(&merge.source_alias)
            .map_err(df_err)?;
        // Keys as the join compares them: cast to the target's types (two source
        // keys may become one), named as the statement writes them.
        let cast_keys: Vec<Expr> = (0..keys.len()).map(|i| col(key_column(i))).collect();
        if let Some(duplicates) = duplicates(&source_df, &cast_keys)? {
            let key_exprs = source_keys(&merge.on, &merge.target);
            duplicate_error(&self.collect(duplicates).await?, &key_exprs)?;
        }

        // The candidate files, from the log and what the source's keys cover.
        let types = key_types(&merge, &keys)?;
        let summary = self
            .key_summary(&source_df, &keys, &types, &partitions)
            .await?;
        // The executors read the candidates' vectors; here only the changed files'.
        let mut candidates = candidates_from_log(&table, |f, p| summary.may_hold(f, p))?;

        // The key pass, the join and the clauses, on the executors.
        let names: Vec<String> = keys.iter().map(|(c, _)| c.clone()).collect();
        let spec = KeyPassSpec {
            table_url: table.table_url().clone(),
            source_files: source.files.clone(),
            source_keys: (0..keys.len()).map(key_column).collect(),
            split_keys: names
                .iter()
                .filter(|c| partitions.contains(c))
                .cloned()
                .collect(),
            keys: names.clone(),
            partitions: partitions.clone(),
            referenced: referenced_columns(&merge, &keys, &target_fields),
        };
        // A task holds the source's keys of its candidates' partitions as a hash
        // set. A source not split by partition with more keys than that can
        // hold meets the target's rows in a shuffle join by key instead: the pass
        // then returns every live row and the join below does the matching.
        let shuffle = spec.split_keys.is_empty() && source.rows > key_set_limit();
        let spec = match shuffle {
            true => KeyPassSpec {
                source_files: Vec::new(),
                source_keys: Vec::new(),
                keys: Vec::new(),
                ..spec
            },
            false => spec,
        };
        let schema = spec.matched_schema(&target_fields).map_err(df_err)?;
        let pass = KeyPassFiles {
            spec: Arc::new(spec),
            schema,
            groups: self.ship(&candidates, |_| true),
        };
        let matched = self
            .ctx
            .read_table(Arc::new(pass))
            .map_err(df_err)?
            .alias(&merge.target)
            .map_err(df_err)?;
        let left: Vec<String> = (0..keys.len()).map(key_column).collect();
        let left: Vec<&str> = left.iter().map(String::as_str).collect();
        let right: Vec<&str> = names.iter().map(String::as_str).collect();
        let joined = source_df
            .join(matched, JoinType::Left, &left, &right, None)
            .map_err(df_err)?;
        let table_schema = snapshot.snapshot().arrow_schema();
        let outcome = clauses(&merge, joined, &table_schema)?;
        let applied = Applied {
            sort_by: names,
            matches_may_repeat: false,
        };
        let (counted, w) = self
            .apply_on_cluster(
                stage,
                &merge,
                outcome,
                table,
                &mut candidates,
                options,
                applied,
            )
            .await?;
        Ok(StageMetrics {
            literal_bounds: merge.literal_bounds.clone(),
            rows_out: Some(source.rows),
            rows_inserted: Some(counted.inserted),
            rows_updated: Some(counted.updated),
            rows_deleted: Some(counted.deleted),
            files_scanned: Some(candidates.len() as u64),
            key_pass: Some(if shuffle { "shuffle join" } else { "key sets" }.into()),
            ..w.metrics()
        })
    }

    /// Applies a MERGE's `outcome` (each joined row's clause, the table's
    /// columns as it sets them, the matched row's file and position) on the
    /// cluster: written to the scratch folder where it is computed; from it the
    /// executors write the new files and the vectors, and count what the
    /// clauses did; one commit here.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn apply_on_cluster(
        &self,
        stage: &StagePlan,
        merge: &Merge,
        outcome: DataFrame,
        table: DeltaTable,
        candidates: &mut [Candidate],
        options: &VectorOptions,
        applied: Applied,
    ) -> StageResult<(Counted, Written)> {
        let remote = self
            .remote
            .as_ref()
            .ok_or("a MERGE on the cluster without a cluster")?;
        let name = format!("{}__merge_outcome", stage.name);
        let (outcome, _) = self
            .in_scratch(remote, &name, outcome)
            .await?
            .ok_or("a MERGE outcome was planned empty")?;
        let acts = acts(merge);
        let clauses_that = |wanted: &dyn Fn(Act) -> bool| -> Vec<Expr> {
            (0..acts.len())
                .filter(|&i| wanted(acts[i]))
                .map(|i| lit(i as u32 + 1))
                .collect()
        };
        let deleting = clauses_that(&|a| a != Act::Insert);
        let positions = outcome
            .clone()
            .filter(col(ACTION).in_list(deleting, false))
            .and_then(|d| d.select(vec![col(ACTION), col(FILE), col(POSITION)]))
            .map_err(df_err)?;
        let positions = match applied.matches_may_repeat {
            true => {
                self.one_match_per_row(merge, &positions, candidates)
                    .await?;
                positions.distinct().map_err(df_err)?
            }
            false => positions,
        };
        let sort_by = applied.sort_by;
        let writing = clauses_that(&|a| a != Act::Delete);
        let table_schema = table.snapshot().map_err(df_err)?.snapshot().arrow_schema();
        // Of the table's types: the outcome was read back with the session's own
        // (strings as views).
        let columns: Vec<Expr> = table_schema
            .fields()
            .iter()
            .map(|f| {
                let column = Expr::Column(datafusion::common::Column::from_name(f.name()));
                cast_expr(column, f.data_type().clone()).alias(f.name())
            })
            .collect();
        // `DataWriteExec` asks for its rows hashed by partition value (or key).
        let rows = outcome
            .filter(col(ACTION).in_list(writing, false))
            .and_then(|d| d.select(columns))
            .map_err(df_err)?;
        let spec = DataWriteSpec::for_table(&table, sort_by.clone())?;
        // Two independent chains of jobs, side by side on the cluster: the new
        // files; and the count of each file's lost rows, then their fates and
        // vectors (or rewrites).
        let write_new = async {
            remote
                .write_data(rows.logical_plan(), &spec)
                .await
                .map_err(StageError::from)
        };
        let change_old = async {
            let counts = self.count_positions(&positions, Some(ACTION)).await?;
            let mut losing: BTreeMap<u32, u64> = BTreeMap::new();
            for (&(_, file), n) in &counts {
                *losing.entry(file).or_default() += n;
            }
            let decided = self
                .decide_on_cluster(
                    &table,
                    candidates,
                    &positions,
                    losing,
                    options.rewrite_above,
                    sort_by,
                )
                .await?;
            Ok::<_, StageError>((counts, decided))
        };
        let ((added, rows_written), (counts, decided)) = tokio::try_join!(write_new, change_old)?;
        let counted = counted(&acts, counts, rows_written)?;
        let changes = Changes {
            deleted: Deleted::Decided(decided),
            writer: FileWriter::for_table(&table, None)?,
            added,
        };
        let operation = merge_operation(merge);
        let w = self
            .commit_changes(stage, &merge.target, table, candidates, changes, operation)
            .await?;
        Ok((counted, w))
    }

    /// `df`'s rows, computed where the run's queries run.
    pub(in crate::exec) async fn collect(&self, df: DataFrame) -> StageResult<Vec<RecordBatch>> {
        let (plan, task) = self.physical(df).await?;
        datafusion::physical_plan::collect(plan, task)
            .await
            .map_err(df_err)
    }

    /// The partition values and integer key ranges the source's keys cover (two
    /// small aggregates on the cluster), to choose candidate files as a local
    /// MERGE does; the keys themselves stay on the cluster.
    async fn key_summary(
        &self,
        source: &DataFrame,
        keys: &[(String, Expr)],
        types: &[DataType],
        partitions: &[String],
    ) -> StageResult<SourceKeys> {
        let mut partition_values = BTreeMap::new();
        let mut ranges = BTreeMap::new();
        for (i, ((c, _), t)) in keys.iter().zip(types).enumerate() {
            let column = col(key_column(i));
            if partitions.contains(c) {
                let values = source
                    .clone()
                    .select(vec![column])
                    .and_then(|d| d.distinct())
                    .map_err(df_err)?;
                let mut set = HashSet::new();
                for b in self.collect(values).await? {
                    for row in 0..b.num_rows() {
                        // As the target's type (the relation may read strings as
                        // views): compared with the log's typed partition values.
                        let v = ScalarValue::try_from_array(b.column(0), row)
                            .and_then(|v| v.cast_to(t))
                            .map_err(df_err)?;
                        if !v.is_null() {
                            set.insert(v);
                        }
                    }
                }
                partition_values.insert(c.clone(), (t.clone(), set));
            } else if t.is_integer() {
                let bounds = source
                    .clone()
                    .aggregate(vec![], vec![min(column.clone()), max(column)])
                    .map_err(df_err)?;
                let batches = self.collect(bounds).await?;
                let columns: Vec<&ArrayRef> =
                    batches.iter().flat_map(|b| b.columns().iter()).collect();
                if let Some(range) = crate::delta::keys::key_range(&columns) {
                    ranges.insert(c.clone(), range);
                }
            }
        }
        Ok(SourceKeys {
            rows: HashMap::with_hasher(RandomState::default()),
            partition_values,
            ranges,
            sorted: None,
        })
    }
}
