//! Rows written where they are computed. On a cluster a relation's query is
//! wrapped in a `Sink` node: the scheduler plans it as a `ScratchWriteExec` (the
//! planner its session is built with, `QueryPlanner`), and each task of the
//! query's last stage writes its own partition as one Parquet file in the scratch
//! folder. A MERGE's new rows go to a `Sink` too, planned as a `DataWriteExec`
//! that writes new data files of the table and returns their Add actions, and
//! the positions a MERGE or DELETE deletes to a `Sink` planned as a
//! `VectorWriteExec` (`vectors.rs`), which returns vector descriptors. The sqlplan process receives one row per file (its URL,
//! rows and bytes), never the relation's rows, and registers exactly those files:
//! a file a lost task left behind is never read.

use std::cmp::Ordering;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef, DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::parquet::arrow::async_writer::AsyncArrowWriter;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::Distribution;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use deltalake::logstore::object_store::buffered::BufWriter;
use futures::StreamExt;

pub use super::data::{added, DataWriteExec, DataWriteSpec, ADDED};
pub use super::vectors::{
    written_vectors, Losing, VectorWriteExec, VectorWriteSpec, WrittenVector, VECTORS,
};

/// What a task returns for the file it wrote: its URL, rows and bytes.
pub static WRITTEN: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("values", DataType::Utf8, true),
    ]))
});

/// Where a scratch `Sink` writes: a relation's folder (a URL ending in `/`), and
/// the columns whose values split each task's rows into files of their own (a
/// MERGE source by its partition keys, so a key pass task reads only the files of
/// its partitions).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, serde::Serialize, serde::Deserialize)]
pub struct ScratchSpec {
    pub folder: String,
    pub split_by: Vec<String>,
}

/// A file a scratch `Sink` task wrote: its URL, rows, bytes, and the values of
/// the split columns its rows share (`split_values`), if split.
#[derive(Clone, Debug, PartialEq)]
pub struct WrittenFile {
    pub url: String,
    pub rows: u64,
    pub bytes: u64,
    pub values: Option<String>,
}

/// Where a `Sink` writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, serde::Serialize, serde::Deserialize)]
pub enum Target {
    /// A relation's Parquet files in a scratch folder; each task returns its
    /// files' rows (`WRITTEN`).
    Scratch(ScratchSpec),
    /// New data files of a Delta table (`DataWriteSpec` as JSON); each task
    /// returns its Add actions (`ADDED`). Nothing is committed.
    Data(String),
    /// Deletion vectors of a table's files (`VectorWriteSpec` as JSON) from the
    /// positions they lose; each task returns their descriptors (`VECTORS`).
    Vectors(String),
}

/// The logical node: `input`'s rows written where they are computed, each task
/// its own files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sink {
    pub input: LogicalPlan,
    pub target: Target,
    schema: DFSchemaRef,
}

impl Sink {
    /// `input` written to the scratch `folder`, each task's rows split into files
    /// by the values of `split_by`, as a plan the cluster runs.
    pub fn scratch(
        input: LogicalPlan,
        folder: &url::Url,
        split_by: Vec<String>,
    ) -> Result<LogicalPlan> {
        let spec = ScratchSpec {
            folder: folder.to_string(),
            split_by,
        };
        Sink::plan(input, Target::Scratch(spec))
    }

    /// `input` (the table's columns) written as new data files of a table.
    pub fn data(input: LogicalPlan, spec: &DataWriteSpec) -> Result<LogicalPlan> {
        let spec = serde_json::to_string(spec).map_err(|e| DataFusionError::External(e.into()))?;
        Sink::plan(input, Target::Data(spec))
    }

    /// The vectors of the files `spec` names, from `input`'s positions (the
    /// file index and position columns of `delta::keys`).
    pub fn vectors(input: LogicalPlan, spec: &VectorWriteSpec) -> Result<LogicalPlan> {
        let spec = serde_json::to_string(spec).map_err(|e| DataFusionError::External(e.into()))?;
        Sink::plan(input, Target::Vectors(spec))
    }

    fn plan(input: LogicalPlan, target: Target) -> Result<LogicalPlan> {
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(Sink::new(input, target)?),
        }))
    }

    pub fn new(input: LogicalPlan, target: Target) -> Result<Sink> {
        let returns = match target {
            Target::Scratch(_) => WRITTEN.as_ref(),
            Target::Data(_) => ADDED.as_ref(),
            Target::Vectors(_) => VECTORS.as_ref(),
        };
        let schema = Arc::new(DFSchema::try_from(returns.clone())?);
        Ok(Sink {
            input,
            target,
            schema,
        })
    }

    /// The physical node that writes `input` as this sink says.
    fn exec(&self, input: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let external = |e: Box<dyn std::error::Error + Send + Sync>| DataFusionError::External(e);
        Ok(match &self.target {
            Target::Scratch(spec) => {
                url::Url::parse(&spec.folder).map_err(|e| external(e.into()))?;
                Arc::new(ScratchWriteExec::new(input, Arc::new(spec.clone())))
            }
            Target::Data(spec) => Arc::new(DataWriteExec::new(
                input,
                Arc::new(serde_json::from_str(spec).map_err(|e| external(e.into()))?),
            )),
            Target::Vectors(spec) => Arc::new(VectorWriteExec::new(
                input,
                Arc::new(serde_json::from_str(spec).map_err(|e| external(e.into()))?),
            )),
        })
    }
}

impl PartialOrd for Sink {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.target.partial_cmp(&other.target) {
            Some(Ordering::Equal) => self.input.partial_cmp(&other.input),
            order => order,
        }
    }
}

impl UserDefinedLogicalNodeCore for Sink {
    fn name(&self) -> &str {
        "Sink"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Sink: {:?}", self.target)
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let [input] = <[LogicalPlan; 1]>::try_from(inputs)
            .map_err(|_| DataFusionError::Internal("Sink has one input".into()))?;
        Sink::new(input, self.target.clone())
    }
}

/// The physical node: each partition of `input` written as one Parquet file (one
/// per value of the split columns).
#[derive(Debug)]
pub struct ScratchWriteExec {
    pub input: Arc<dyn ExecutionPlan>,
    pub spec: Arc<ScratchSpec>,
    properties: Arc<PlanProperties>,
}

impl ScratchWriteExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: Arc<ScratchSpec>) -> ScratchWriteExec {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(WRITTEN.clone()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        ScratchWriteExec {
            input,
            spec,
            properties,
        }
    }
}

impl DisplayAs for ScratchWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "ScratchWriteExec: {:?}", self.spec)
    }
}

impl ExecutionPlan for ScratchWriteExec {
    fn name(&self) -> &str {
        "ScratchWriteExec"
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

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("ScratchWriteExec has one child".into()))?;
        Ok(Arc::new(ScratchWriteExec::new(input, self.spec.clone())))
    }

    /// Rows split by the values of their split columns, so each value's rows are
    /// written by one task, in one file.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![keyed_by(&self.spec.split_by, &self.input)]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let spec = self.spec.clone();
        let written = futures::stream::once(async move {
            write_partition(input, &spec, partition, &context).await
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            WRITTEN.clone(),
            written.boxed(),
        )))
    }
}

/// Rows partitioned by the values of `columns` (any distribution without them).
pub(super) fn keyed_by(columns: &[String], input: &Arc<dyn ExecutionPlan>) -> Distribution {
    let schema = input.schema();
    let exprs: Result<Vec<Arc<dyn PhysicalExpr>>> = columns
        .iter()
        .map(|c| {
            let column =
                datafusion::physical_expr::expressions::Column::new_with_schema(c, &schema)?;
            Ok(Arc::new(column) as Arc<dyn PhysicalExpr>)
        })
        .collect();
    match exprs {
        Ok(exprs) if !exprs.is_empty() => Distribution::KeyPartitioned(exprs),
        _ => Distribution::UnspecifiedDistribution,
    }
}

/// A file being written by a task.
struct Open {
    url: url::Url,
    writer: AsyncArrowWriter<BufWriter>,
    rows: u64,
}

/// Writes one partition's rows to files of its own (names no other task or
/// attempt uses), one per value of the split columns, and returns a row per file.
/// An empty partition writes nothing, except the first, so even an empty relation
/// has one file with its columns.
async fn write_partition(
    mut input: SendableRecordBatchStream,
    spec: &ScratchSpec,
    partition: usize,
    context: &TaskContext,
) -> Result<RecordBatch> {
    let external = |e: Box<dyn std::error::Error + Send + Sync>| DataFusionError::External(e);
    let folder = url::Url::parse(&spec.folder).map_err(|e| external(e.into()))?;
    let store = crate::delta::stores::task_store(&folder, context)?;
    let schema = input.schema();
    let split: Vec<usize> = spec
        .split_by
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<std::result::Result<_, _>>()?;
    let open = || -> Result<Open> {
        let name = format!("part-{partition:05}-{}.parquet", uuid::Uuid::new_v4());
        let url = folder.join(&name).map_err(|e| external(e.into()))?;
        let path = deltalake::Path::from_url_path(url.path()).map_err(|e| external(e.into()))?;
        let writer =
            AsyncArrowWriter::try_new(BufWriter::new(store.clone(), path), schema.clone(), None)?;
        Ok(Open {
            url,
            writer,
            rows: 0,
        })
    };
    let mut files: std::collections::BTreeMap<String, Open> = Default::default();
    while let Some(batch) = input.next().await {
        let batch = batch?;
        for (values, rows) in split_rows(&batch, &split)? {
            let file = match files.entry(values) {
                std::collections::btree_map::Entry::Occupied(f) => f.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(open()?),
            };
            file.rows += rows.num_rows() as u64;
            file.writer.write(&rows).await?;
        }
    }
    if files.is_empty() && partition == 0 {
        files.insert(String::new(), open()?);
    }
    let (mut urls, mut rows, mut bytes, mut values) = (vec![], vec![], vec![], vec![]);
    for (value, mut f) in files {
        f.writer.finish().await?;
        urls.push(f.url.to_string());
        rows.push(f.rows);
        bytes.push(f.writer.bytes_written() as u64);
        values.push((!split.is_empty() && f.rows > 0).then_some(value));
    }
    Ok(RecordBatch::try_new(
        WRITTEN.clone(),
        vec![
            Arc::new(StringArray::from(urls)),
            Arc::new(UInt64Array::from(rows)),
            Arc::new(UInt64Array::from(bytes)),
            Arc::new(StringArray::from(values)),
        ],
    )?)
}

/// `batch`'s non-empty groups of rows by the values of the `split` columns (one
/// group, unnamed, without split columns).
fn split_rows(batch: &RecordBatch, split: &[usize]) -> Result<Vec<(String, RecordBatch)>> {
    use datafusion::arrow::compute::take_record_batch;
    use datafusion::common::ScalarValue;
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    if split.is_empty() {
        return Ok(vec![(String::new(), batch.clone())]);
    }
    let mut groups: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for row in 0..batch.num_rows() {
        let values = split
            .iter()
            .map(|&c| ScalarValue::try_from_array(batch.column(c), row))
            .collect::<Result<Vec<_>>>()?;
        groups
            .entry(crate::delta::scan::keys::split_values(&values))
            .or_default()
            .push(row as u32);
    }
    groups
        .into_iter()
        .map(|(values, rows)| {
            let rows = datafusion::arrow::array::UInt32Array::from(rows);
            Ok((values, take_record_batch(batch, &rows)?))
        })
        .collect()
}

/// Plans `Sink` nodes (the scheduler's physical planner has it).
#[derive(Debug, Default)]
pub struct ScratchPlanner;

#[async_trait::async_trait]
impl ExtensionPlanner for ScratchPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let [input] = physical_inputs else {
            return Ok(None);
        };
        match node.as_any().downcast_ref::<Sink>() {
            Some(sink) => sink.exec(input.clone()).map(Some),
            None => Ok(None),
        }
    }
}

/// The scheduler's query planner: DataFusion's, with sqlplan's nodes.
#[derive(Debug, Default)]
pub struct QueryPlanner;

#[async_trait::async_trait]
impl datafusion::execution::context::QueryPlanner for QueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn datafusion::catalog::Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(ScratchPlanner)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}

/// The files a scratch `Sink` plan's results name, with their rows and bytes.
pub fn written(batches: &[RecordBatch]) -> Result<Vec<WrittenFile>> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::UInt64Type;
    let mut files = Vec::new();
    for b in batches {
        let (file, rows, bytes, values) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_primitive::<UInt64Type>(),
            b.column(2).as_primitive::<UInt64Type>(),
            b.column(3).as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            files.push(WrittenFile {
                url: file.value(i).to_string(),
                rows: rows.value(i),
                bytes: bytes.value(i),
                values: values.is_valid(i).then(|| values.value(i).to_string()),
            });
        }
    }
    Ok(files)
}
