//! New data files of a Delta table written where a MERGE's or INSERT's rows are
//! computed: a data `Sink` (`sink.rs`) is planned as a `DataWriteExec`, whose
//! tasks each write their share (a partition value in one task, in key order)
//! and return the Add actions; the sqlplan process commits them.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::Distribution;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;

use super::sink::keyed_by;

/// What a `DataWriteExec` task returns: the Add actions of the files it wrote
/// (a JSON array) and its rows.
pub static ADDED: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("adds", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
    ]))
});

/// Where a data `Sink` writes: new data files of a Delta table.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DataWriteSpec {
    pub table_url: url::Url,
    pub partitions: Vec<String>,
    /// Each task writes its rows in this order (the MERGE key), so a new file's
    /// key statistics let later reads skip its row groups.
    pub sort_by: Vec<String>,
    /// The table's NOT NULL columns: a NULL in one fails the write, as a local
    /// write fails (the rows' own schema may call every column nullable).
    #[serde(default)]
    pub not_null: Vec<String>,
    /// Each task writes the rows it computed, without a shuffle (a rewrite of
    /// the files a task read: the rows keep their files' order, and no task gets
    /// a whole partition of the table).
    #[serde(default)]
    pub as_read: bool,
}

impl DataWriteSpec {
    /// New files of `table` (its partitions and NOT NULL columns), each task's
    /// rows in `sort_by` order.
    pub fn for_table(
        table: &deltalake::DeltaTable,
        sort_by: Vec<String>,
    ) -> crate::delta::error::Result<DataWriteSpec> {
        let snapshot = table.snapshot().map_err(crate::delta::Error::from)?;
        Ok(DataWriteSpec {
            table_url: table.table_url().clone(),
            partitions: snapshot.metadata().partition_columns().to_vec(),
            sort_by,
            not_null: snapshot
                .snapshot()
                .arrow_schema()
                .fields()
                .iter()
                .filter(|f| !f.is_nullable())
                .map(|f| f.name().clone())
                .collect(),
            as_read: false,
        })
    }
}

/// The physical node: each partition of `input` written as new data files.
#[derive(Debug)]
pub struct DataWriteExec {
    pub input: Arc<dyn ExecutionPlan>,
    pub spec: Arc<DataWriteSpec>,
    properties: Arc<PlanProperties>,
}

impl DataWriteExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: Arc<DataWriteSpec>) -> DataWriteExec {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(ADDED.clone()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        DataWriteExec {
            input,
            spec,
            properties,
        }
    }
}

impl DisplayAs for DataWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "DataWriteExec: {}", self.spec.table_url)
    }
}

impl ExecutionPlan for DataWriteExec {
    fn name(&self) -> &str {
        "DataWriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    /// Each partition value (each key, for an unpartitioned table) in one task, so
    /// a run adds one file per partition value, as a local run does.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        if self.spec.as_read {
            return vec![Distribution::UnspecifiedDistribution];
        }
        let columns = if self.spec.partitions.is_empty() {
            &self.spec.sort_by
        } else {
            &self.spec.partitions
        };
        vec![keyed_by(columns, &self.input)]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("DataWriteExec has one child".into()))?;
        Ok(Arc::new(DataWriteExec::new(input, self.spec.clone())))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let spec = self.spec.clone();
        let written = futures::stream::once(async move { write_data(input, &spec).await });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            ADDED.clone(),
            written.boxed(),
        )))
    }
}

/// One task's rows, sorted by the spec's columns, written as new data files (a
/// file per partition value, as delta-rs's writer lays them out).
async fn write_data(input: SendableRecordBatchStream, spec: &DataWriteSpec) -> Result<RecordBatch> {
    use futures::TryStreamExt;
    let schema = input.schema();
    let batches: Vec<RecordBatch> = input.try_collect().await?;
    let rows = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
    let count = rows.num_rows() as u64;
    let mut adds = Vec::new();
    if count > 0 {
        for c in &spec.not_null {
            let nulls = rows.column(rows.schema().index_of(c)?).null_count();
            if nulls > 0 {
                return Err(DataFusionError::Execution(format!(
                    "{nulls} rows to write into {} have NULL in its NOT NULL column `{c}`",
                    spec.table_url
                )));
            }
        }
        let rows = sorted(rows, &spec.sort_by)?;
        let external = |e: deltalake::DeltaTableError| DataFusionError::External(Box::new(e));
        let mut writer = deltalake::writer::RecordBatchWriter::try_new(
            spec.table_url.as_str(),
            schema.clone(),
            Some(spec.partitions.clone()),
            None,
        )
        .map_err(external)?
        .with_writer_properties(crate::delta::writer_properties());
        use deltalake::writer::DeltaWriter;
        writer.write(rows).await.map_err(external)?;
        adds = writer.flush().await.map_err(external)?;
    }
    let json = serde_json::to_string(&adds).map_err(|e| DataFusionError::External(e.into()))?;
    Ok(RecordBatch::try_new(
        ADDED.clone(),
        vec![
            Arc::new(StringArray::from(vec![json])),
            Arc::new(UInt64Array::from(vec![count])),
        ],
    )?)
}

/// `rows` in ascending order of `columns` (nulls last), as a local MERGE writes.
fn sorted(rows: RecordBatch, columns: &[String]) -> Result<RecordBatch> {
    use datafusion::arrow::compute::{lexsort_to_indices, take_record_batch, SortColumn};
    if columns.is_empty() {
        return Ok(rows);
    }
    let sort: Vec<SortColumn> = columns
        .iter()
        .map(|c| {
            Ok(SortColumn {
                values: rows.column(rows.schema().index_of(c)?).clone(),
                options: Some(datafusion::arrow::compute::SortOptions {
                    descending: false,
                    nulls_first: false,
                }),
            })
        })
        .collect::<Result<_>>()?;
    let indices = lexsort_to_indices(&sort, None)?;
    Ok(take_record_batch(&rows, &indices)?)
}

/// The Add actions and rows a data `Sink`'s tasks returned.
pub fn added(batches: &[RecordBatch]) -> Result<(Vec<deltalake::kernel::Add>, u64)> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::UInt64Type;
    let (mut adds, mut rows) = (Vec::new(), 0);
    for b in batches {
        let (json, count) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_primitive::<UInt64Type>(),
        );
        for i in 0..b.num_rows() {
            let task: Vec<deltalake::kernel::Add> = serde_json::from_str(json.value(i))
                .map_err(|e| DataFusionError::External(e.into()))?;
            adds.extend(task);
            rows += count.value(i);
        }
    }
    Ok((adds, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::datasource::memory::MemorySourceConfig;

    /// New rows with NULL in a NOT NULL column fail on the executor, before any
    /// file is written, as a local write fails.
    #[tokio::test]
    async fn a_null_in_a_not_null_column_fails_the_write() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let rows = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
        )
        .unwrap();
        let input = MemorySourceConfig::try_new_exec(&[vec![rows]], schema, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = DataWriteSpec {
            table_url: url::Url::from_directory_path(dir.path()).unwrap(),
            partitions: Vec::new(),
            sort_by: vec!["id".into()],
            not_null: vec!["id".into()],
            as_read: false,
        };
        let exec = DataWriteExec::new(input, Arc::new(spec));
        let out =
            datafusion::physical_plan::collect(Arc::new(exec), Arc::new(TaskContext::default()))
                .await;
        let message = out.unwrap_err().to_string();
        assert!(message.contains("NOT NULL column `id`"), "{message}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }
}
