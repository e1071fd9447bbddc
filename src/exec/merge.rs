//! MERGE: planned by DataFusion (names and types checked at plan time), executed by
//! delta-rs's merge builder, its source computed once and checked for duplicate keys.

use std::sync::Arc;

use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::dml::{MergeIntoAction, MergeIntoClauseKind};
use datafusion::logical_expr::{col, lit, Expr, LogicalPlan, WriteOp};
use datafusion::prelude::DataFrame;

use super::context::{df_err, Executor, StageResult};

use super::error::StageError;
use crate::delta;
use crate::plan::StagePlan;
use crate::report::StageMetrics;

impl Executor {
    pub(super) async fn merge(&self, stage: &StagePlan, sql: &str) -> StageResult<StageMetrics> {
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
                    return Err(StageError::Unsupported(format!(
                        "unsupported MERGE clause {kind:?} {action:?}"
                    )))
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
    Err(StageError::DuplicateKey(format!(
        "the MERGE source has {n} rows for one target key ({}); deduplicate the source",
        key.join(", ")
    )))
}
