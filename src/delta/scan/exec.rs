//! `DeltaFilesExec`: the scan node of `DeltaFiles`. It carries its files (with their
//! vector descriptors and partition values, as the rows of its input), the
//! pushed-down predicate and the projection; when a partition runs, it reads that
//! partition's vectors and runs
//! DataFusion's Parquet scan over its files with each vector as a row selection.
//! Nothing in it refers to the process that planned it, so a cluster's executor
//! runs it as it is (`crate::cluster::codec` ships it).

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Result;
use datafusion::config::{ParquetOptions, TableParquetOptions};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{Count, Metric, MetricValue, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use deltalake::parquet::arrow::arrow_reader::RowSelection;
use deltalake::{ObjectMeta, Path};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::{df_error, partition_values, DataFile};
use crate::delta::{partition, stores, vectors};

/// How the Parquet reader treats the pushed-down predicate (the session's settings
/// where the scan was planned; an executor's own defaults differ).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reader {
    pub pushdown_filters: bool,
    pub reorder_filters: bool,
    pub force_filter_selections: bool,
}

impl From<&ParquetOptions> for Reader {
    fn from(o: &ParquetOptions) -> Self {
        Reader {
            pushdown_filters: o.pushdown_filters,
            reorder_filters: o.reorder_filters,
            force_filter_selections: o.force_filter_selections,
        }
    }
}

/// The scan of a snapshot's files; see the module.
#[derive(Debug)]
pub struct DeltaFilesExec {
    pub table_url: url::Url,
    /// The data files' columns (partition columns are not in the files).
    pub file_schema: SchemaRef,
    pub partition_fields: Vec<FieldRef>,
    /// The file groups, scanned in parallel, as data: an in-memory source with
    /// a partition per group, holding one row with the group's files (JSON). A
    /// cluster hands each of its tasks a slice of a stage's partitions and
    /// restricts the stage's leaves to that slice (Ballista 55,
    /// `restrict_plan_to_partitions`), but leaves a node it does not know as it
    /// is: the task's partition 0 would then scan group 0 whatever its slice,
    /// reading some groups twice and others never. An in-memory source is
    /// restricted with the slice, so a task also receives only its own files.
    pub partitions: Arc<dyn ExecutionPlan>,
    /// Files in all groups, and those with a deletion vector (for the plan's
    /// display and the run's scan metrics).
    pub files: usize,
    pub with_vectors: usize,
    /// Output columns by position among the data columns, then partition columns.
    pub projection: Vec<usize>,
    /// Over the data columns, then partition columns.
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
    pub limit: Option<usize>,
    pub reader: Reader,
    properties: Arc<PlanProperties>,
    /// The Parquet scans run so far: their metrics are this node's.
    ran: Arc<Mutex<Vec<Arc<dyn ExecutionPlan>>>>,
}

impl DeltaFilesExec {
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        table_url: url::Url,
        file_schema: SchemaRef,
        partition_fields: Vec<FieldRef>,
        groups: Vec<Vec<DataFile>>,
        projection: Vec<usize>,
        predicate: Option<Arc<dyn PhysicalExpr>>,
        limit: Option<usize>,
        reader: Reader,
    ) -> Result<Self> {
        let all: Vec<FieldRef> = file_schema
            .fields()
            .iter()
            .chain(&partition_fields)
            .cloned()
            .collect();
        let output = projection
            .iter()
            .map(|i| {
                all.get(*i)
                    .cloned()
                    .ok_or_else(|| df_error(format!("no scan column {i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let partitions = group_files(&groups)?;
        Ok(DeltaFilesExec {
            table_url,
            file_schema,
            partition_fields,
            files: groups.iter().map(Vec::len).sum(),
            with_vectors: groups
                .iter()
                .flatten()
                .filter(|f| f.vector.is_some())
                .count(),
            projection,
            predicate,
            limit,
            reader,
            properties: properties(Arc::new(Schema::new(output)), &partitions),
            partitions,
            ran: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The same scan, its partitions given by `partitions` (see the field).
    pub fn with_partitions(mut self, partitions: Arc<dyn ExecutionPlan>) -> Self {
        self.properties = properties(self.properties.eq_properties.schema().clone(), &partitions);
        self.partitions = partitions;
        self
    }

    /// The same scan with these file counts (as encoded for a cluster).
    pub fn with_counts(mut self, files: usize, with_vectors: usize) -> Self {
        self.files = files;
        self.with_vectors = with_vectors;
        self
    }

    /// A copy that runs as this one (its scans count in this node's metrics).
    fn clone_plan(&self) -> Self {
        DeltaFilesExec {
            table_url: self.table_url.clone(),
            file_schema: self.file_schema.clone(),
            partition_fields: self.partition_fields.clone(),
            files: self.files,
            with_vectors: self.with_vectors,
            projection: self.projection.clone(),
            predicate: self.predicate.clone(),
            limit: self.limit,
            reader: self.reader,
            properties: self.properties.clone(),
            partitions: self.partitions.clone(),
            ran: self.ran.clone(),
        }
    }

    /// Files this scan reads.
    pub fn file_count(&self) -> usize {
        self.files
    }

    /// The table root with a trailing slash (what vector paths are relative to).
    fn root(&self) -> url::Url {
        let mut root = self.table_url.clone();
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        root
    }

    /// DataFusion's Parquet scan of one group's files, their vectors read.
    async fn parquet_scan(
        &self,
        group: &[DataFile],
        context: &TaskContext,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let root = self.root();
        let store_url = ObjectStoreUrl::parse(stores::root(&root).as_str())?;
        let store = context.runtime_env().object_store(&store_url)?;
        let root_path = Path::from_url_path(root.path()).map_err(df_error)?;
        let mut vectors = vectors::VectorReader::new(store.clone(), &root);
        let mut files = Vec::new();
        for f in group {
            let location = partition::file_path(&root_path, &f.path).map_err(df_error)?;
            let values = partition_values(&self.partition_fields, |c| f.partition.get(c))?;
            // From the object's metadata: `PartitionedFile::new` would encode the path again.
            let mut file = PartitionedFile::new_from_meta(ObjectMeta {
                location: location.clone(),
                last_modified: chrono::DateTime::UNIX_EPOCH,
                size: f.size,
                e_tag: None,
                version: None,
            })
            .with_partition_values(values);
            if let Some(descriptor) = &f.vector {
                let deleted = vectors.deleted(descriptor).await.map_err(df_error)?;
                let rows = vectors::parquet_row_count(&store, &location, f.size)
                    .await
                    .map_err(df_error)?;
                file = file.with_extension(ParquetRowSelection::new(live(&deleted, rows)));
            }
            files.push(file);
        }
        let table_schema =
            datafusion::datasource::table_schema::TableSchema::builder(self.file_schema.clone())
                .with_table_partition_cols(self.partition_fields.clone())
                .build();
        let mut options = TableParquetOptions::default();
        options.global = context.session_config().options().execution.parquet.clone();
        options.global.pushdown_filters = self.reader.pushdown_filters;
        options.global.reorder_filters = self.reader.reorder_filters;
        options.global.force_filter_selections = self.reader.force_filter_selections;
        let mut source = ParquetSource::new(table_schema).with_table_parquet_options(options);
        if let Some(predicate) = &self.predicate {
            source = source.with_predicate(predicate.clone());
        }
        let config = FileScanConfigBuilder::new(store_url, Arc::new(source))
            .with_file_groups(vec![FileGroup::new(files)])
            .with_projection_indices(Some(self.projection.clone()))?
            .with_limit(self.limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The plan properties of a scan with `output` columns and `partitions`' count.
fn properties(output: SchemaRef, partitions: &Arc<dyn ExecutionPlan>) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(output),
        Partitioning::UnknownPartitioning(partitions.output_partitioning().partition_count()),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}

/// An in-memory source with a partition per group, holding one row: the group's
/// files as JSON.
pub(super) fn group_files<T: Serialize>(groups: &[Vec<T>]) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "files",
        DataType::Utf8,
        false,
    )]));
    let empty: [Vec<T>; 1] = [Vec::new()];
    let groups = if groups.is_empty() {
        &empty[..]
    } else {
        groups
    };
    let partitions = groups
        .iter()
        .map(|g| {
            let json = serde_json::to_string(g).map_err(df_error)?;
            let column = Arc::new(StringArray::from(vec![json])) as ArrayRef;
            Ok(vec![RecordBatch::try_new(schema.clone(), vec![column])?])
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(MemorySourceConfig::try_new_exec(&partitions, schema, None)?)
}

/// The groups partition `partition` of `partitions` holds.
pub(super) async fn groups_of<T: serde::de::DeserializeOwned>(
    partitions: &Arc<dyn ExecutionPlan>,
    partition: usize,
    context: &Arc<TaskContext>,
) -> Result<Vec<Vec<T>>> {
    let batches: Vec<RecordBatch> = partitions
        .execute(partition, context.clone())?
        .try_collect()
        .await?;
    let mut groups = Vec::new();
    for batch in &batches {
        let column = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| df_error("scan partitions are not file groups"))?;
        for json in column.iter().flatten() {
            groups.push(serde_json::from_str(json).map_err(df_error)?);
        }
    }
    Ok(groups)
}

/// The rows a vector leaves, as a selection over the whole file.
fn live(deleted: &[u64], rows: usize) -> RowSelection {
    let mut ranges = Vec::new();
    let mut start = 0usize;
    for &d in deleted {
        let d = d as usize;
        if d > start {
            ranges.push(start..d);
        }
        start = d + 1;
    }
    if start < rows {
        ranges.push(start..rows);
    }
    RowSelection::from_consecutive_ranges(ranges.into_iter(), rows)
}

impl DisplayAs for DeltaFilesExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "DeltaFilesExec: table={}, files={}, with_vectors={}, groups={}",
            self.table_url,
            self.files,
            self.with_vectors,
            self.partitions.output_partitioning().partition_count()
        )?;
        if let Some(p) = &self.predicate {
            write!(f, ", predicate={p}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for DeltaFilesExec {
    fn name(&self) -> &str {
        "DeltaFilesExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.partitions]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        match &self.predicate {
            Some(p) => f(p),
            None => Ok(TreeNodeRecursion::Continue),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            Ok([partitions]) => Ok(Arc::new(self.clone_plan().with_partitions(partitions))),
            Err(_) => Err(df_error("DeltaFilesExec has one child")),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let this = self.clone_plan();
        let ran = self.ran.clone();
        let schema = self.schema();
        let stream = futures::stream::once(async move {
            let groups = groups_of(&this.partitions, partition, &context).await?;
            let mut streams = Vec::new();
            for group in groups {
                let scan = this.parquet_scan(&group, &context).await?;
                ran.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(scan.clone());
                streams.push(scan.execute(0, context.clone())?);
            }
            Ok::<_, datafusion::error::DataFusionError>(futures::stream::iter(streams).flatten())
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.boxed(),
        )))
    }

    /// A fixed set (a cluster compares every task's metrics with the first's): the
    /// rows and Parquet bytes of the scans run so far.
    fn metrics(&self) -> Option<MetricsSet> {
        let ran = self.ran.lock().unwrap_or_else(|e| e.into_inner());
        let sum = |name: &str| -> usize {
            ran.iter()
                .filter_map(|s| s.metrics()?.sum_by_name(name))
                .map(|v| v.as_usize())
                .sum()
        };
        let mut set = MetricsSet::new();
        for name in ["output_rows", "bytes_scanned"] {
            let count = Count::new();
            count.add(sum(name));
            set.push(Arc::new(Metric::new(
                MetricValue::Count {
                    name: name.to_string().into(),
                    count,
                },
                None,
            )));
        }
        Some(set)
    }
}
