//! INSERT (append), INSERT OVERWRITE (replace the partitions produced) and DELETE.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::{cast, lit, Expr};
use datafusion::prelude::DataFrame;
use datafusion::sql::sqlparser::ast::ExprWithAlias as SQLExprWithAlias;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Query};
use deltalake::kernel::Add;
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;

use super::context::{df_err, Executor, StageResult};
use super::error::StageError;
use super::metrics::{collect_with_scan_metrics, metric};
use crate::delta;
use crate::plan::{StageKind, StagePlan};
use crate::report::StageMetrics;

impl Executor {
    pub(super) async fn insert(
        &self,
        stage: &StagePlan,
        source: &Query,
        columns: &[String],
    ) -> StageResult<StageMetrics> {
        let target = stage.writes.clone().ok_or("INSERT without a target")?;
        let table = self.table(&target).await?;
        let df = self.query(source).await?;
        let (df, literal_bounds) = self.bounded(df).await?;
        let df = conform(df, &table, columns)?;
        if let Some(remote) = &self.remote {
            let overwrite = stage.kind() == StageKind::InsertOverwrite;
            return self
                .insert_on_cluster(stage, remote, &target, table, df, overwrite)
                .await
                .map(|m| StageMetrics {
                    literal_bounds,
                    ..m
                });
        }
        let (plan, task) = self.physical(df).await?;
        let (batches, scan) = collect_with_scan_metrics(plan, task).await?;
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
        if stage.kind() == StageKind::InsertOverwrite {
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
        let m = delta::commit::last_commit_metrics(&table).await;
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

    /// INSERT on a cluster: the executors write the new data files where the rows
    /// are computed and return their Add actions; this process commits them with
    /// the run's transaction, as a local INSERT commits. An overwrite removes in
    /// the same commit the files of the partitions the new files hold (every
    /// file of an unpartitioned table), as delta-rs's replace-where write does
    /// locally.
    async fn insert_on_cluster(
        &self,
        stage: &StagePlan,
        remote: &crate::cluster::Remote,
        target: &str,
        table: DeltaTable,
        df: DataFrame,
        overwrite: bool,
    ) -> StageResult<StageMetrics> {
        use deltalake::kernel::Action;
        let snapshot = table.snapshot().map_err(df_err)?;
        let partitions = snapshot.metadata().partition_columns().to_vec();
        let schema = snapshot.snapshot().arrow_schema();
        let spec = crate::cluster::sink::DataWriteSpec::for_table(&table, Vec::new())?;
        let (adds, rows) = remote.write_data(df.logical_plan(), &spec).await?;
        let (files, bytes) = (
            adds.len() as u64,
            adds.iter().map(|a| a.size.max(0) as u64).sum(),
        );
        let mut actions: Vec<Action> = Vec::new();
        let (mut mode, mut predicate) = (SaveMode::Append, None);
        if overwrite {
            let produced = Produced::of(&adds, &partitions, &schema)?;
            if !partitions.is_empty() && produced.is_empty() {
                // As locally: no partition produced, none replaced.
                return Ok(StageMetrics {
                    rows_out: Some(0),
                    ..Default::default()
                });
            }
            let failed = std::cell::RefCell::new(None);
            let replaced = super::changes::candidates_from_log(&table, |_, values| {
                produced.holds(values).unwrap_or_else(|e| {
                    failed.borrow_mut().get_or_insert(e);
                    false
                })
            })?;
            if let Some(e) = failed.into_inner() {
                return Err(e);
            }
            actions.extend(
                replaced
                    .iter()
                    .map(|c| Action::Remove(c.view.remove_action(true))),
            );
            (mode, predicate) = (SaveMode::Overwrite, produced.predicate());
        }
        let files_removed = actions.len() as u64;
        let operation = deltalake::protocol::DeltaOperation::Write {
            mode,
            partition_by: (!partitions.is_empty()).then_some(partitions),
            predicate,
        };
        actions.extend(adds.into_iter().map(Action::Add));
        let version = self
            .commit_actions(stage, target, table, actions, operation)
            .await?;
        Ok(StageMetrics {
            rows_out: Some(rows),
            rows_inserted: Some(rows),
            files_added: Some(files),
            files_removed: Some(files_removed),
            bytes_written: Some(bytes),
            version,
            ..Default::default()
        })
    }

    pub(super) async fn delete(
        &self,
        stage: &StagePlan,
        selection: Option<&SqlExpr>,
    ) -> StageResult<StageMetrics> {
        let target = stage.writes.clone().ok_or("DELETE without a target")?;
        let table = self.table(&target).await?;
        let vectors = self
            .plan
            .tables
            .iter()
            .find(|t| t.name == target)
            .and_then(|t| t.deletion_vectors.clone());
        let predicate = match selection {
            Some(selection) => Some(self.predicate_on(&target, selection).await?),
            None => None,
        };
        if let Some(options) = vectors.filter(|_| delta::vectors::enabled(&table)) {
            return self
                .delete_with_vectors(stage, &target, table, predicate, options.rewrite_above)
                .await;
        }
        if self.remote.is_some() {
            // On the executors, every file that loses a row rewritten.
            let options = crate::plan::VectorOptions::copy_on_write();
            return self
                .delete_with_vectors(stage, &target, table, predicate, options.rewrite_above)
                .await;
        }
        let mut op = table
            .delete()
            .with_session_state(Arc::new(self.ctx.state()))
            .with_commit_properties(self.props(stage));
        if let Some(predicate) = predicate {
            op = op.with_predicate(predicate);
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

    /// A DELETE's WHERE, parsed at compile time, bound to the target's columns; the
    /// columns unqualified, as delta-rs resolves them against its own schema.
    async fn predicate_on(&self, target: &str, selection: &SqlExpr) -> StageResult<Expr> {
        let df = self.ctx.table(target).await.map_err(df_err)?;
        let expr = self
            .ctx
            .state()
            .create_logical_expr_from_sql_expr(
                SQLExprWithAlias {
                    expr: selection.clone(),
                    alias: None,
                },
                df.schema(),
            )
            .map_err(df_err)?;
        Ok(unnormalize_col(expr))
    }
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
        return Err(StageError::Unsupported(format!(
            "the query has {} columns, the table {}",
            source.len(),
            target.fields().len()
        )));
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
    let mut columns = Vec::new();
    for p in partitions {
        let mut values = BTreeSet::new();
        for b in batches {
            let array = b.column_by_name(p)?;
            for i in 0..array.len() {
                values.insert(match array.is_null(i) {
                    true => None,
                    false => Some(array_value_to_string(array, i).ok()?),
                });
            }
        }
        columns.push((p.as_str(), values));
    }
    predicate_of(&columns)
}

/// `ds IN ('a', 'b') AND (x IN (…) OR x IS NULL)`: each column among its values
/// (None: NULL); None where a column has no value.
fn predicate_of(columns: &[(&str, BTreeSet<Option<String>>)]) -> Option<String> {
    let mut parts = Vec::new();
    for (p, values) in columns {
        if values.is_empty() {
            return None;
        }
        let literals: Vec<String> = values
            .iter()
            .flatten()
            .map(|v| format!("'{}'", v.replace('\'', "''")))
            .collect();
        let mut alternatives = Vec::new();
        if !literals.is_empty() {
            alternatives.push(format!("{p} IN ({})", literals.join(", ")));
        }
        if values.contains(&None) {
            alternatives.push(format!("{p} IS NULL"));
        }
        parts.push(format!("({})", alternatives.join(" OR ")));
    }
    Some(parts.join(" AND "))
}

/// The partitions new files hold, as typed values (two writers may print one
/// value two ways in the log: a timestamp with or without its fraction).
struct Produced {
    partitions: Vec<(String, DataType)>,
    tuples: HashSet<Vec<ScalarValue>>,
    /// Each column's values as the new files' log entries print them.
    printed: Vec<BTreeSet<Option<String>>>,
}

impl Produced {
    fn of(adds: &[Add], partitions: &[String], schema: &Schema) -> StageResult<Produced> {
        let partitions: Vec<(String, DataType)> = partitions
            .iter()
            .map(|p| {
                Ok((
                    p.clone(),
                    schema
                        .field_with_name(p)
                        .map_err(df_err)?
                        .data_type()
                        .clone(),
                ))
            })
            .collect::<StageResult<_>>()?;
        let mut produced = Produced {
            tuples: HashSet::new(),
            printed: vec![BTreeSet::new(); partitions.len()],
            partitions,
        };
        for add in adds {
            produced
                .tuples
                .insert(produced.typed(&add.partition_values)?);
            for (i, (p, _)) in produced.partitions.iter().enumerate() {
                produced.printed[i].insert(add.partition_values.get(p).cloned().flatten());
            }
        }
        Ok(produced)
    }

    fn typed(&self, values: &HashMap<String, Option<String>>) -> StageResult<Vec<ScalarValue>> {
        self.partitions
            .iter()
            .map(|(p, t)| {
                let raw = values.get(p).and_then(|v| v.as_deref());
                Ok(crate::delta::partition::value(raw, t)?)
            })
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.tuples.is_empty()
    }

    /// Whether a file with these partition values is in a produced partition
    /// (every file, for an unpartitioned table).
    fn holds(&self, values: &HashMap<String, Option<String>>) -> StageResult<bool> {
        Ok(self.partitions.is_empty() || self.tuples.contains(&self.typed(values)?))
    }

    /// The replaced partitions, as the commit records them.
    fn predicate(&self) -> Option<String> {
        let columns: Vec<(&str, BTreeSet<Option<String>>)> = self
            .partitions
            .iter()
            .zip(&self.printed)
            .map(|((p, _), v)| (p.as_str(), v.clone()))
            .collect();
        predicate_of(&columns).filter(|_| !columns.is_empty())
    }
}
