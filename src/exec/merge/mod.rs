//! MERGE: planned by DataFusion (names and types checked at plan time), its source
//! computed once and checked for duplicate keys, then written one of two ways:
//! copy-on-write by delta-rs's merge builder (`cow`), or, on a table with
//! deletion vectors, by sqlplan's own writer that marks the changed rows deleted and
//! appends their new versions (`vectors`). On a cluster the executors do it:
//! a MERGE by key with its key pass (`remote`), any other by a join on its
//! whole ON (`general`).

mod cow;
mod general;
mod keys;
mod remote;
mod vectors;

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::dml::MergeIntoClause;
use datafusion::logical_expr::{col, lit, Expr, LogicalPlan, WriteOp};
use datafusion::prelude::DataFrame;
use datafusion::sql::sqlparser::ast::Statement;

use super::context::{df_err, Executor, StageResult};
use super::error::StageError;
use crate::plan::{StagePlan, VectorOptions};
use crate::report::StageMetrics;

/// A MERGE statement with its source computed.
pub(super) struct Merge {
    /// The target table (expressions qualify its columns with this name).
    pub target: String,
    pub source_alias: String,
    pub on: Expr,
    pub clauses: Vec<MergeIntoClause>,
    /// The target's columns as the statement was planned against them.
    pub target_schema: SchemaRef,
    pub source_schema: SchemaRef,
    pub source: Vec<RecordBatch>,
    pub literal_bounds: Vec<String>,
}

impl Merge {
    /// The target's columns and their types, by name.
    fn target_fields(
        &self,
    ) -> std::collections::BTreeMap<String, datafusion::arrow::datatypes::DataType> {
        self.target_schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect()
    }

    fn source_rows(&self) -> u64 {
        self.source.iter().map(|b| b.num_rows() as u64).sum()
    }

    fn source_frame(&self, exec: &Executor) -> StageResult<DataFrame> {
        frame(
            exec,
            self.source_schema.clone(),
            self.source.clone(),
            &self.source_alias,
        )
    }
}

/// In-memory batches as a relation named `alias`.
fn frame(
    exec: &Executor,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    alias: &str,
) -> StageResult<DataFrame> {
    let mem = MemTable::try_new(schema, vec![batches]).map_err(df_err)?;
    exec.ctx
        .read_table(Arc::new(mem))
        .map_err(df_err)?
        .alias(alias)
        .map_err(df_err)
}

impl Executor {
    pub(super) async fn merge(
        &self,
        stage: &StagePlan,
        statement: &Statement,
    ) -> StageResult<StageMetrics> {
        let (mut merge, source_df) = self.plan_merge(statement).await?;
        let table = self.table(&merge.target).await?;
        let options = self
            .plan
            .tables
            .iter()
            .find(|t| t.name == merge.target)
            .and_then(|t| t.deletion_vectors.clone());
        let options = options.filter(|_| crate::delta::vectors::enabled(&table));
        let keys = vectors::key_columns(&merge);
        // On a cluster, a MERGE runs on the executors: with vectors where the
        // table has them, else copy-on-write (every changed file rewritten).
        if let Some(remote) = &self.remote {
            let on_cluster = options.clone().unwrap_or_else(VectorOptions::copy_on_write);
            if let Some(keys) = &keys {
                let source = remote::Source::write(
                    self,
                    remote,
                    stage,
                    &merge,
                    source_df.clone(),
                    keys,
                    &table,
                )
                .await?;
                if let Some(source) = source {
                    return self
                        .merge_on_cluster(stage, merge, source, keys.clone(), table, &on_cluster)
                        .await;
                }
            } else {
                let metrics = self
                    .general_merge_on_cluster(
                        stage,
                        &merge,
                        source_df.clone(),
                        table.clone(),
                        &on_cluster,
                    )
                    .await?;
                if let Some(metrics) = metrics {
                    return Ok(metrics);
                }
            }
        }
        let with_vectors = options.zip(keys);
        self.compute_source(&mut merge, source_df).await?;
        let source = merge.source_frame(self)?;
        let keys = source_keys(&merge.on, &merge.target);
        if let Some(duplicates) = duplicates(&source, &keys)? {
            duplicate_error(&duplicates.collect().await.map_err(df_err)?, &keys)?;
        }
        match with_vectors {
            Some((options, keys)) => {
                self.merge_with_vectors(stage, merge, keys, table, &options)
                    .await
            }
            None => self.merge_copy_on_write(stage, merge, source, table).await,
        }
    }

    /// Computes the source, once, in this process.
    async fn compute_source(&self, merge: &mut Merge, source: DataFrame) -> StageResult<()> {
        let (physical, task) = self.physical(source).await?;
        merge.source_schema = physical.schema();
        merge.source = datafusion::physical_plan::collect(physical, task)
            .await
            .map_err(df_err)?;
        Ok(())
    }

    /// Plans the statement: its parts and its source (with literal key bounds),
    /// not yet computed.
    async fn plan_merge(&self, statement: &Statement) -> StageResult<(Merge, DataFrame)> {
        let state = self.ctx.state();
        let LogicalPlan::Dml(dml) = self.plan_statement(statement.clone()).await? else {
            return Err("not a MERGE".into());
        };
        let WriteOp::MergeInto(op) = dml.op else {
            return Err("not a MERGE".into());
        };
        let source_alias = dml
            .input
            .schema()
            .iter()
            .next()
            .and_then(|(q, _)| q.cloned())
            .map(|q| q.table().to_string())
            .ok_or_else(|| {
                StageError::Unsupported(
                    "the MERGE source has no name: give it an alias (`USING (…) AS s`)".to_string(),
                )
            })?;
        let source = DataFrame::new(state, (*dml.input).clone());
        let (source, literal_bounds) = self.bounded(source).await?;
        let merge = Merge {
            target: dml.table_name.table().to_string(),
            source_alias,
            on: op.on,
            clauses: op.clauses,
            target_schema: dml.target.schema().clone(),
            source_schema: Arc::new(source.schema().as_arrow().clone()),
            source: Vec::new(),
            literal_bounds,
        };
        Ok((merge, source))
    }
}

/// Source columns equated with target columns in ON: the MERGE key.
fn source_keys(on: &Expr, target: &str) -> Vec<Expr> {
    key_pairs(on, target).into_iter().map(|(_, s)| s).collect()
}

/// `target.column = <source expression>` conjuncts of ON, as (target column,
/// source expression).
fn key_pairs(on: &Expr, target: &str) -> Vec<(String, Expr)> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let mut keys = Vec::new();
    for conjunct in datafusion::logical_expr::utils::split_conjunction(on) {
        if let Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) = conjunct
        {
            match (target_column(left, target), target_column(right, target)) {
                (Some(t), None) if is_source_side(right, target) => {
                    keys.push((t, (**right).clone()))
                }
                (None, Some(t)) if is_source_side(left, target) => keys.push((t, (**left).clone())),
                _ => {}
            }
        }
    }
    keys
}

fn target_column(e: &Expr, target: &str) -> Option<String> {
    match e {
        Expr::Column(c) if c.relation.as_ref().is_some_and(|r| r.table() == target) => {
            Some(c.name.clone())
        }
        _ => None,
    }
}

/// An expression of one source column (and no target column).
fn is_source_side(e: &Expr, target: &str) -> bool {
    let refs = e.column_refs();
    refs.len() == 1
        && refs
            .iter()
            .all(|c| c.relation.as_ref().is_none_or(|r| r.table() != target))
}

/// Two source rows for one target key would make the result depend on which one
/// happens to be applied: an error that names the key, never a silent pick. A row
/// with a NULL key matches no target row (NULL = NULL is not true), so such rows
/// may repeat. The query for one repeated key (none without keys).
fn duplicates(source: &DataFrame, keys: &[Expr]) -> StageResult<Option<DataFrame>> {
    let Some(all_set) =
        datafusion::logical_expr::utils::conjunction(keys.iter().map(|k| k.clone().is_not_null()))
    else {
        return Ok(None);
    };
    source
        .clone()
        .filter(all_set)
        .and_then(|d| d.aggregate(keys.to_vec(), vec![count(lit(1)).alias("sqlplan_rows")]))
        .and_then(|d| d.filter(col("sqlplan_rows").gt(lit(1))))
        .and_then(|d| d.limit(0, Some(1)))
        .map(Some)
        .map_err(df_err)
}

/// The error naming a repeated key, if `dup` (the result of `duplicates`) holds one.
fn duplicate_error(dup: &[RecordBatch], keys: &[Expr]) -> StageResult<()> {
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
    Err(StageError::DuplicateKey(format!(
        "the MERGE source has {n} rows for one target key ({}); deduplicate the source",
        key.join(", ")
    )))
}
