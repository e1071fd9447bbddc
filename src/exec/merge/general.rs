//! A MERGE on a cluster whose ON is more than key equalities (`t.id = s.id AND
//! t.month >= s.since`), or that has a `WHEN NOT MATCHED BY SOURCE` clause. No
//! key pass can choose its rows: every live row of the target is read on the
//! executors (the columns the ON and the clauses read, with file and position)
//! and meets the source in a join on the whole ON, partitioned by its
//! equalities (FULL with `NOT MATCHED BY SOURCE`, else LEFT from the source).
//! The outcome is applied as a MERGE by key applies it (`apply_on_cluster`).
//!
//! An equality of a target column with a source expression in the ON
//! partitions the join and is the key whose repeats in the source are refused,
//! as locally. An ON without one (`t.id > s.top - 8`) joins every source row
//! with every target row in one partition (the join of a constant), on one
//! executor; there two source rows may match one target row, and that is
//! refused as delta-rs refuses it locally (`one_match_per_row`).

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{DataType, Int64Type, UInt32Type, UInt64Type};
use datafusion::common::JoinType;
use datafusion::functions_aggregate::expr_fn::{count, max, min};
use datafusion::logical_expr::dml::{MergeIntoAction, MergeIntoClauseKind};
use datafusion::logical_expr::{col, lit, Expr};
use datafusion::prelude::DataFrame;
use deltalake::DeltaTable;

use super::super::changes::{candidates_from_log, Candidate};
use super::super::context::{df_err, Executor, StageResult};
use super::super::error::StageError;
use super::remote::Applied;
use super::vectors::{clauses_joined, referenced_columns, Joined, ACTION};
use super::{duplicate_error, duplicates, key_pairs, Merge};
use crate::delta::keys::{FILE, POSITION};
use crate::plan::{StagePlan, VectorOptions};
use crate::report::StageMetrics;

/// Marks the source's rows in a FULL join (NULL on a target row no source row
/// matched).
const SOURCE_ROW_PRESENT: &str = "__sqlplan_source_present";

/// A constant on both sides of a MERGE whose ON has no key equality: the join
/// on it puts every row in one partition.
const EVERY_ROW: &str = "__sqlplan_every_row";

impl Executor {
    /// Runs `merge` (its source `source`, not yet computed) on the cluster;
    /// `None` when the source is empty by plan (the process runs it).
    pub(super) async fn general_merge_on_cluster(
        &self,
        stage: &StagePlan,
        merge: &Merge,
        source: DataFrame,
        table: DeltaTable,
        options: &VectorOptions,
    ) -> StageResult<Option<StageMetrics>> {
        let remote = self
            .remote
            .as_ref()
            .ok_or("a MERGE on the cluster without a cluster")?;
        let by_source = merge
            .clauses
            .iter()
            .any(|c| c.kind.canonical() == MergeIntoClauseKind::NotMatchedBySource);
        let marked = source
            .with_column(SOURCE_ROW_PRESENT, lit(true))
            .map_err(df_err)?;
        let name = format!("{}__merge_source", stage.name);
        let Some((source, source_rows)) = self.in_scratch(remote, &name, marked).await? else {
            return Ok(None);
        };
        let pairs = key_pairs(&merge.on, &merge.target);
        let every_row = |df: DataFrame, alias: &str| match pairs.is_empty() {
            true => df
                .with_column(EVERY_ROW, lit(0u8))
                .and_then(|d| d.alias(alias)),
            false => df.alias(alias),
        };
        let source = every_row(source, &merge.source_alias).map_err(df_err)?;
        let keys: Vec<Expr> = pairs.iter().map(|(_, s)| s.clone()).collect();
        if let Some(duplicates) = duplicates(&source, &keys)? {
            duplicate_error(&self.collect(duplicates).await?, &keys)?;
        }

        // Every live row of every file, with what the ON and the clauses read.
        let snapshot = table.snapshot().map_err(df_err)?.clone();
        let table_schema = snapshot.snapshot().arrow_schema();
        let target_fields = merge.target_fields();
        let mut candidates = candidates_from_log(&table, |_, _| true)?;
        let referenced = read_columns(merge, &target_fields);
        let groups = self.ship(&candidates, |_| true);
        let rows = self.live_rows(&table, &table_schema, referenced, groups)?;
        let rows = every_row(rows, &merge.target).map_err(df_err)?;
        let join = if by_source {
            JoinType::Full
        } else {
            JoinType::Left
        };
        let mut on = merge.on.clone();
        if pairs.is_empty() {
            let column =
                |alias: &str| Expr::Column(datafusion::common::Column::new(Some(alias), EVERY_ROW));
            on = on.and(column(&merge.source_alias).eq(column(&merge.target)));
        }
        let joined = source.join_on(rows, join, [on]).map_err(df_err)?;
        let present = Expr::Column(datafusion::common::Column::new(
            Some(merge.source_alias.clone()),
            SOURCE_ROW_PRESENT,
        ))
        .is_not_null();
        let outcome = clauses_joined(merge, joined, &table_schema, Joined::Full(present))?;
        let applied = Applied {
            sort_by: pairs.iter().map(|(c, _)| c.clone()).collect(),
            matches_may_repeat: pairs.is_empty(),
        };
        let (counted, w) = self
            .apply_on_cluster(
                stage,
                merge,
                outcome,
                table,
                &mut candidates,
                options,
                applied,
            )
            .await?;
        Ok(Some(StageMetrics {
            literal_bounds: merge.literal_bounds.clone(),
            rows_out: Some(source_rows),
            rows_inserted: Some(counted.inserted),
            rows_updated: Some(counted.updated),
            rows_deleted: Some(counted.deleted),
            files_scanned: Some(candidates.len() as u64),
            key_pass: Some("full join".into()),
            ..w.metrics()
        }))
    }
}

impl Executor {
    /// Two source rows matching one target row would make the result depend on
    /// which one is applied: refused, naming the row, as delta-rs's merge
    /// refuses it locally; unless every match of the row is the same
    /// unconditional DELETE (deleting a row twice deletes it once).
    pub(super) async fn one_match_per_row(
        &self,
        merge: &Merge,
        positions: &DataFrame,
        candidates: &[Candidate],
    ) -> StageResult<()> {
        let unconditional_delete = merge.clauses.iter().position(|c| {
            c.kind.canonical() == MergeIntoClauseKind::Matched
                && c.predicate.is_none()
                && matches!(c.action, MergeIntoAction::Delete)
        });
        let mut repeated = positions
            .clone()
            .aggregate(
                vec![col(FILE), col(POSITION)],
                vec![
                    count(lit(1)).alias("n"),
                    min(col(ACTION)).alias("first"),
                    max(col(ACTION)).alias("last"),
                ],
            )
            .and_then(|d| d.filter(col("n").gt(lit(1i64))))
            .map_err(df_err)?;
        if let Some(i) = unconditional_delete {
            let action = lit(i as u32 + 1);
            let deletes_only = col("first").eq(action.clone()).and(col("last").eq(action));
            repeated = repeated.filter(!deletes_only).map_err(df_err)?;
        }
        // The first such row, by file and position: the same message every time.
        let first = vec![col(FILE).sort(true, false), col(POSITION).sort(true, false)];
        let repeated = repeated
            .sort(first)
            .and_then(|d| d.limit(0, Some(1)))
            .map_err(df_err)?;
        let batches = self.collect(repeated).await?;
        let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
            return Ok(());
        };
        let file = b.column(0).as_primitive::<UInt32Type>().value(0);
        let position = b.column(1).as_primitive::<UInt64Type>().value(0);
        let n = b.column(2).as_primitive::<Int64Type>().value(0);
        let path = candidates
            .get(file as usize)
            .map_or("?", |c| c.path.as_str());
        Err(StageError::DuplicateKey(format!(
            "the MERGE matched row {position} of {}'s file {path} with {n} source rows; \
             a target row may be changed by one source row only: narrow the ON",
            merge.target
        )))
    }
}

/// The target columns a general MERGE reads: those its ON and its clauses
/// read, and those an UPDATE keeps, in the target's order.
fn read_columns(merge: &Merge, target_fields: &BTreeMap<String, DataType>) -> Vec<String> {
    let on: BTreeSet<String> = merge
        .on
        .column_refs()
        .into_iter()
        .filter(|c| {
            c.relation
                .as_ref()
                .is_some_and(|r| r.table() == merge.target)
        })
        .map(|c| c.name.clone())
        .collect();
    let clauses: BTreeSet<String> = referenced_columns(merge, &[], target_fields)
        .into_iter()
        .collect();
    target_fields
        .keys()
        .filter(|c| on.contains(*c) || clauses.contains(*c))
        .cloned()
        .collect()
}
