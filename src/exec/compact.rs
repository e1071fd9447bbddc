//! Compaction by deleted rows: every file of a partition whose share of rows deleted
//! by deletion vectors is above a threshold is rewritten without them (with the
//! partition's small files), in one commit. delta-rs's optimize bins files by size
//! only: it leaves a file larger than its target size, or alone in its bin, with
//! its vector, so reads of such a partition would slow run after run.

use std::collections::{BTreeMap, HashMap};

use crate::delta::partition;
use crate::delta::writer::FileWriter;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use deltalake::kernel::{Action, LogicalFileView};
use deltalake::protocol::DeltaOperation;
use deltalake::{DeltaTable, FilterOp};

use super::context::{df_err, Executor, StageResult};
use super::error::StageError;
use super::maintain::{partition_filters, PartitionFilter};
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
        let filters = partition_filters(stage)?;
        let schema = snapshot.snapshot().arrow_schema();
        let mut partitions: BTreeMap<String, Vec<LogicalFileView>> = BTreeMap::new();
        for view in snapshot.log_data().iter() {
            let values = view.partition_values_map();
            if selected(&filters, &values, &schema)? {
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
        let mut masks = dv::keep_masks(&table, &chosen.iter().collect::<Vec<_>>()).await?;
        let mut writer = FileWriter::for_table(&table, target_size)?;
        let schema = writer.arrow_schema();
        let store = table.object_store();
        let mut actions: Vec<Action> = Vec::new();
        let mut purged = 0u64;
        for f in &chosen {
            let path = f.path().to_string();
            let kept = masks.remove(&path).map(|deleted| {
                purged += deleted.count();
                dv::ranges((0..deleted.rows as u64).filter(|p| deleted.is_live(*p)))
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

/// The partition values pass the optimize filter (`=`, `<>`, `IN`, `NOT IN`),
/// compared typed: the filter's literals and the log's strings both read as the
/// column's type.
fn selected(
    filters: &[PartitionFilter],
    values: &HashMap<String, Option<String>>,
    schema: &SchemaRef,
) -> StageResult<bool> {
    for (column, op, literals) in filters {
        let data_type = schema
            .field_with_name(column)
            .map_err(|_| {
                StageError::Unsupported(format!(
                    "optimize filter: `{column}` is not a column of the table"
                ))
            })?
            .data_type();
        let value = partition::value(values.get(column).and_then(|v| v.as_deref()), data_type)?;
        // A literal as SQL would cast it (`1.5` for a DECIMAL(10, 2), a date for a
        // timestamp); the log's string by the protocol's serialization.
        let literals = literals
            .iter()
            .map(|l| {
                ScalarValue::try_from_string(l.clone(), data_type).map_err(|e| {
                    StageError::Unsupported(format!("optimize filter: `{column}` = `{l}`: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hit = !value.is_null() && literals.contains(&value);
        let pass = match op {
            FilterOp::Eq | FilterOp::In => hit,
            FilterOp::Ne | FilterOp::NotIn => !value.is_null() && !hit,
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
