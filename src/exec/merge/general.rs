//! A MERGE on a cluster whose ON is more than key equalities (`t.id = s.id AND
//! t.month >= s.since`), or that has a `WHEN NOT MATCHED BY SOURCE` clause. No
//! key pass can choose its rows: every live row of the target is read on the
//! executors (the columns the ON and the clauses read, with file and position)
//! and meets the source in a join on the whole ON, partitioned by its
//! equalities (FULL with `NOT MATCHED BY SOURCE`, else LEFT from the source).
//! The outcome is applied as a MERGE by key applies it (`apply_on_cluster`).
//!
//! The ON must hold at least one equality of a target column with a source
//! expression: it partitions the join and is the key whose repeats in the
//! source are refused, as locally. A MERGE without one runs in the process
//! (delta-rs's merge).

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::JoinType;
use datafusion::logical_expr::dml::MergeIntoClauseKind;
use datafusion::logical_expr::{lit, Expr};
use datafusion::prelude::DataFrame;
use deltalake::DeltaTable;

use super::super::changes::candidates_from_log;
use super::super::context::{df_err, Executor, StageResult};
use super::vectors::{clauses_joined, referenced_columns, Joined};
use super::{duplicate_error, duplicates, key_pairs, Merge};
use crate::plan::{StagePlan, VectorOptions};
use crate::report::StageMetrics;

/// Marks the source's rows in a FULL join (NULL on a target row no source row
/// matched).
const SOURCE_ROW_PRESENT: &str = "__sqlplan_source_present";

/// Whether a MERGE that is not by key alone can run on the executors: its ON
/// has a key equality to partition the join by.
pub(super) fn runs_on_cluster(merge: &Merge) -> bool {
    !key_pairs(&merge.on, &merge.target).is_empty()
}

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
        let source = source.alias(&merge.source_alias).map_err(df_err)?;
        let keys: Vec<Expr> = key_pairs(&merge.on, &merge.target)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
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
        let rows = self
            .live_rows(&table, &table_schema, referenced, groups)?
            .alias(&merge.target)
            .map_err(df_err)?;
        let join = if by_source {
            JoinType::Full
        } else {
            JoinType::Left
        };
        let joined = source
            .join_on(rows, join, [merge.on.clone()])
            .map_err(df_err)?;
        let present = Expr::Column(datafusion::common::Column::new(
            Some(merge.source_alias.clone()),
            SOURCE_ROW_PRESENT,
        ))
        .is_not_null();
        let outcome = clauses_joined(merge, joined, &table_schema, Joined::Full(present))?;
        let sort_by = key_pairs(&merge.on, &merge.target)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        let (counted, w) = self
            .apply_on_cluster(
                stage,
                merge,
                outcome,
                table,
                &mut candidates,
                options,
                sort_by,
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
