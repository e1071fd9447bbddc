//! Writing new data files on every core: delta-rs's `RecordBatchWriter` encodes
//! Parquet on the task that calls it, so one writer is one core. A `FileWriter`
//! runs one writer per lane on its own task and hands each lane whole partitions
//! (a partition goes to the lane with the fewest rows when it is first seen), so a
//! partition still gets one file per run and the lanes encode side by side.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use deltalake::kernel::Add;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::delta::error::{Error, Result};

/// Most lanes a writer uses, whatever the cores.
const MAX_LANES: usize = 4;
/// Batches a lane may have waiting before `write` waits for it.
const LANE_QUEUE: usize = 2;

struct Lane {
    batches: mpsc::Sender<RecordBatch>,
    task: JoinHandle<Result<Vec<Add>>>,
    rows: usize,
}

/// Writes rows into new data files of one table, a lane per core.
pub struct FileWriter {
    schema: SchemaRef,
    partition_columns: Vec<String>,
    lanes: Vec<Lane>,
    /// Partition key → lane.
    assigned: HashMap<String, usize>,
}

impl FileWriter {
    /// A writer for `table` with sqlplan's Parquet properties; `target_size` rolls a
    /// partition's file over at that many bytes. An unpartitioned table gets one lane.
    pub fn for_table(table: &DeltaTable, target_size: Option<u64>) -> Result<Self> {
        let partition_columns = table
            .snapshot()
            .map_err(Error::from)?
            .metadata()
            .partition_columns()
            .to_vec();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let lanes = if partition_columns.is_empty() {
            1
        } else {
            cores.clamp(1, MAX_LANES)
        };
        let mut schema = None;
        let mut spawned = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            let mut writer = RecordBatchWriter::for_table(table)
                .map_err(Error::from)?
                .with_writer_properties(super::writer_properties());
            if let Some(size) = target_size {
                writer = writer.with_target_file_size(size);
            }
            schema.get_or_insert_with(|| writer.arrow_schema());
            spawned.push(Lane::spawn(writer));
        }
        Ok(FileWriter {
            schema: schema.ok_or_else(|| Error::table("a writer needs a lane"))?,
            partition_columns,
            lanes: spawned,
            assigned: HashMap::new(),
        })
    }

    /// The schema written batches must have (partition columns included).
    pub fn arrow_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Hands `batch`'s rows to the lanes of their partitions.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.lanes.len() == 1 {
            return self.send(0, batch).await;
        }
        let keys = self.partition_keys(&batch)?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.lanes.len()];
        for (row, key) in keys.into_iter().enumerate() {
            let lane = match self.assigned.get(&key) {
                Some(&lane) => lane,
                None => {
                    let lane = self.least_loaded();
                    self.assigned.insert(key, lane);
                    lane
                }
            };
            rows[lane].push(row as u32);
            self.lanes[lane].rows += 1;
        }
        for (lane, indices) in rows.into_iter().enumerate() {
            if indices.len() == batch.num_rows() {
                return self.send(lane, batch).await;
            }
            if !indices.is_empty() {
                let part =
                    take_record_batch(&batch, &UInt32Array::from(indices)).map_err(Error::from)?;
                self.send(lane, part).await?;
            }
        }
        Ok(())
    }

    /// Closes the files and returns their Add actions (every lane's).
    pub async fn flush(self) -> Result<Vec<Add>> {
        let mut adds = Vec::new();
        for lane in self.lanes {
            drop(lane.batches);
            adds.extend(lane.task.await.map_err(Error::from)??);
        }
        Ok(adds)
    }

    async fn send(&mut self, lane: usize, batch: RecordBatch) -> Result<()> {
        if self.lanes[lane].batches.send(batch).await.is_ok() {
            return Ok(());
        }
        // The lane's task ended early: its error says why.
        let lane = self.lanes.remove(lane);
        drop(lane.batches);
        match lane.task.await.map_err(Error::from)? {
            Err(e) => Err(e),
            Ok(_) => Err(Error::table("a file writer stopped taking rows")),
        }
    }

    fn least_loaded(&self) -> usize {
        (0..self.lanes.len())
            .min_by_key(|&i| self.lanes[i].rows)
            .unwrap_or(0)
    }

    /// Each row's partition values as one string (NULL distinct from any value).
    fn partition_keys(&self, batch: &RecordBatch) -> Result<Vec<String>> {
        let mut keys = vec![String::new(); batch.num_rows()];
        for name in &self.partition_columns {
            let column = batch.column_by_name(name).ok_or_else(|| {
                Error::table(format!(
                    "the rows to write have no partition column `{name}`"
                ))
            })?;
            let text = cast(column, &DataType::Utf8).map_err(Error::from)?;
            let text = text
                .as_any()
                .downcast_ref::<datafusion::arrow::array::StringArray>()
                .ok_or_else(|| Error::table("a partition value is not text"))?;
            for (row, key) in keys.iter_mut().enumerate() {
                if text.is_null(row) {
                    key.push('\u{0}');
                } else {
                    key.push('\u{1}');
                    key.push_str(text.value(row));
                }
                key.push('\u{2}');
            }
        }
        Ok(keys)
    }
}

impl Lane {
    fn spawn(mut writer: RecordBatchWriter) -> Lane {
        let (batches, mut incoming) = mpsc::channel::<RecordBatch>(LANE_QUEUE);
        let task = tokio::spawn(async move {
            while let Some(batch) = incoming.recv().await {
                writer.write(batch).await.map_err(Error::from)?;
            }
            writer.flush().await.map_err(Error::from)
        });
        Lane {
            batches,
            task,
            rows: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_row_is_written_once_and_a_partition_gets_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("part", DataType::Utf8, true),
        ]);
        let location = dir.path().join("t").to_string_lossy().to_string();
        let table = crate::delta::create("t", &location, &schema, &["part".to_string()], false)
            .await
            .unwrap();
        let mut writer = FileWriter::for_table(&table, None).unwrap();
        let schema = writer.arrow_schema();
        // Each batch spans every partition (NULL included), as key-ordered MERGE rows do.
        let parts = [Some("a"), Some("b"), None, Some("c"), Some("d")];
        let mut written = 0i64;
        for batch in 0..6i64 {
            let keys: Vec<i64> = (0..50).map(|i| batch * 50 + i).collect();
            let part: Vec<Option<&str>> = (0..50).map(|i| parts[i % parts.len()]).collect();
            let rows = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(keys)),
                    Arc::new(StringArray::from(part)),
                ],
            )
            .unwrap();
            written += rows.num_rows() as i64;
            writer.write(rows).await.unwrap();
        }
        let adds = writer.flush().await.unwrap();
        let mut partitions: Vec<Option<String>> = adds
            .iter()
            .map(|a| a.partition_values.get("part").cloned().flatten())
            .collect();
        partitions.sort();
        assert_eq!(
            partitions,
            vec![
                None,
                Some("a".to_string()),
                Some("b".to_string()),
                Some("c".to_string()),
                Some("d".to_string())
            ]
        );
        let rows: i64 = adds
            .iter()
            .map(|a| {
                let stats: serde_json::Value =
                    serde_json::from_str(a.stats.as_deref().unwrap()).unwrap();
                stats["numRecords"].as_i64().unwrap()
            })
            .sum();
        assert_eq!(rows, written);
    }
}
