//! Compaction by deleted rows: every file of a partition whose share of rows deleted
//! by deletion vectors is above a threshold is rewritten without them (with the
//! partition's small files), in one commit. delta-rs's optimize bins files by size
//! only: it leaves a file larger than its target size, or alone in its bin, with
//! its vector, so reads of such a partition would slow run after run.

use std::collections::{BTreeMap, HashMap};

use crate::delta::writer::FileWriter;
use deltalake::kernel::{Action, LogicalFileView};
use deltalake::protocol::DeltaOperation;
use deltalake::{DeltaTable, FilterOp};

use super::context::{df_err, Executor, StageResult};
use super::maintain::partition_filters;
use crate::delta::vectors::{self as dv, DataFile};
use crate::plan::StagePlan;
use crate::report::StageMetrics;

impl Executor {
    pub(super) async fn compact_deleted(
        &self,
        stage: &StagePlan,
        table: DeltaTable,
        share: f64,
        filter: Option<&str>,
        target_size: Option<u64>,
    ) -> StageResult<StageMetrics> {
        let target = stage.writes.clone().ok_or("maintenance without a table")?;
        let snapshot = table.snapshot().map_err(df_err)?.clone();
        let filters = match filter {
            Some(f) => partition_filters(f)?,
            None => Vec::new(),
        };
        let mut partitions: BTreeMap<String, Vec<LogicalFileView>> = BTreeMap::new();
        for view in snapshot.log_data().iter() {
            let values = view.partition_values_map();
            if selected(&filters, &values)? {
                let mut key: Vec<String> = values
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("")))
                    .collect();
                key.sort();
                partitions.entry(key.join("/")).or_default().push(view);
            }
        }
        let chosen: Vec<LogicalFileView> = partitions
            .into_values()
            .filter(|files| {
                let (rows, deleted) = dv::row_counts(files);
                rows > 0 && deleted as f64 > share * rows as f64
            })
            .flatten()
            .collect();
        if chosen.is_empty() {
            return Ok(StageMetrics {
                files_added: Some(0),
                files_removed: Some(0),
                ..Default::default()
            });
        }
        let paths: Vec<String> = chosen
            .iter()
            .filter(|f| f.deletion_vector_descriptor().is_some())
            .map(|f| f.path().to_string())
            .collect();
        let mut masks = dv::keep_masks(&table, &self.ctx.state(), &paths).await?;
        let mut writer = FileWriter::for_table(&table, target_size)?;
        let schema = writer.arrow_schema();
        let store = table.object_store();
        let mut actions: Vec<Action> = Vec::new();
        let mut purged = 0u64;
        for f in &chosen {
            let path = f.path().to_string();
            let kept = masks.remove(&path).map(|keep| {
                purged += keep.iter().filter(|k| !**k).count() as u64;
                dv::ranges((0..keep.len() as u64).filter(|p| keep[*p as usize]))
            });
            let file = DataFile {
                path,
                size: f.size() as u64,
            };
            let values: HashMap<String, Option<String>> = f.partition_values_map();
            for b in dv::live_rows(store.clone(), &file, &values, kept, &schema).await? {
                writer.write(b).await?;
            }
            actions.push(Action::Remove(f.remove_action(false)));
        }
        let mut adds = writer.flush().await?;
        let bytes: i64 = adds.iter().map(|a| a.size).sum();
        let added = adds.len() as u64;
        for a in &mut adds {
            a.data_change = false; // the same rows, rearranged
        }
        actions.extend(adds.into_iter().map(Action::Add));
        let operation = DeltaOperation::Optimize {
            predicate: filter.map(str::to_string),
            target_size: target_size.unwrap_or(0) as i64,
        };
        let version = self
            .commit_actions(stage, &target, table, actions, operation)
            .await?;
        Ok(StageMetrics {
            files_added: Some(added),
            files_removed: Some(chosen.len() as u64),
            bytes_written: Some(bytes.max(0) as u64),
            rows_deleted_by_vector: Some(purged),
            version,
            ..Default::default()
        })
    }
}

/// The partition values pass the optimize filter (`=`, `<>`, `IN`, `NOT IN`).
fn selected(
    filters: &[(String, FilterOp, Vec<String>)],
    values: &HashMap<String, Option<String>>,
) -> StageResult<bool> {
    for (column, op, literals) in filters {
        let value = values.get(column).cloned().flatten();
        let hit = value.as_ref().is_some_and(|v| literals.contains(v));
        let pass = match op {
            FilterOp::Eq | FilterOp::In => hit,
            FilterOp::Ne | FilterOp::NotIn => value.is_some() && !hit,
            _ => {
                return Err(super::error::StageError::Unsupported(format!(
                "optimize with `deleted_above`: filter `{column}` with `=`, `<>`, `IN` or `NOT IN`"
            )))
            }
        };
        if !pass {
            return Ok(false);
        }
    }
    Ok(true)
}
