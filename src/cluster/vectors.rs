//! Deletion vectors written where a MERGE's or DELETE's deleted positions are:
//! a vectors `Sink` (`sink.rs`) is planned as a `VectorWriteExec`, whose input
//! (a file index and a position a row, hashed by file) gives each task every
//! position of its files. A task unions each file's new positions with its old
//! vector, writes its files' vectors as one vector file and returns their
//! descriptors. The sqlplan process chose each file's fate beforehand from
//! counts alone (remove, rewrite or vector); it receives a descriptor per file,
//! never a position, and commits them.
//!
//! A file to be rewritten gets its vector too, written to the scratch folder
//! (never committed): the rewrite's tasks read it to leave those rows out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{AsArray, RecordBatch, StringArray, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};
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
use deltalake::kernel::DeletionVectorDescriptor;
use deltalake::logstore::object_store::ObjectStoreExt as _;
use deltalake::ObjectStore;
use futures::StreamExt;
use roaring::RoaringTreemap;

use super::sink::keyed_by;
use crate::delta::keys::{FILE, POSITION};
use crate::delta::stores;
use crate::delta::vectors::{VectorFile, VectorReader};

/// What a `VectorWriteExec` task returns, a row per file it gave a vector: the
/// file's index, its descriptor (JSON) and the bytes of the vector file that
/// holds it (the same for every file of one task's vector file).
pub static VECTORS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("file", DataType::UInt32, false),
        Field::new("descriptor", DataType::Utf8, false),
        Field::new("vector_file_bytes", DataType::UInt64, false),
    ]))
});

/// A data file that loses rows, as it crosses to the executors.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Losing {
    /// Its index among the statement's candidates (the positions' file column).
    pub index: u32,
    /// Relative to the table root, decoded.
    pub path: String,
    /// Physical rows.
    pub rows: u64,
    /// Its vector in the table's log, if any.
    pub vector: Option<DeletionVectorDescriptor>,
    /// How many positions it loses, as the process counted them: a task checks it.
    pub deleted: u64,
    /// Rewritten: its vector goes to the scratch folder, not beside the data.
    pub rewrite: bool,
}

/// Where a vectors `Sink` writes: the files that get a vector, their table, and
/// the scratch folder for rewrites' vectors.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VectorWriteSpec {
    pub table_url: url::Url,
    pub scratch: url::Url,
    pub files: Vec<Losing>,
}

/// A vector the executors wrote: its data file's index, descriptor, and the
/// bytes of the file it is in.
#[derive(Clone, Debug)]
pub struct WrittenVector {
    pub index: u32,
    pub descriptor: DeletionVectorDescriptor,
    pub file_bytes: u64,
}

/// The physical node: each task writes the vectors of the files whose positions
/// it holds.
#[derive(Debug)]
pub struct VectorWriteExec {
    pub input: Arc<dyn ExecutionPlan>,
    pub spec: Arc<VectorWriteSpec>,
    properties: Arc<PlanProperties>,
}

impl VectorWriteExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: Arc<VectorWriteSpec>) -> VectorWriteExec {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(VECTORS.clone()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        VectorWriteExec {
            input,
            spec,
            properties,
        }
    }
}

impl DisplayAs for VectorWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "VectorWriteExec: {} files of {}",
            self.spec.files.len(),
            self.spec.table_url
        )
    }
}

impl ExecutionPlan for VectorWriteExec {
    fn name(&self) -> &str {
        "VectorWriteExec"
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

    /// Every position of a file in one task: a file's vector is written once.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![keyed_by(&[FILE.to_string()], &self.input)]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("VectorWriteExec has one child".into()))?;
        Ok(Arc::new(VectorWriteExec::new(input, self.spec.clone())))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let spec = self.spec.clone();
        let written =
            futures::stream::once(async move { write_vectors(input, &spec, &context).await });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            VECTORS.clone(),
            written.boxed(),
        )))
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// One task's positions, by file (positions of files the spec does not name,
/// which the process removes whole, are passed over).
async fn positions_by_file(
    mut input: SendableRecordBatchStream,
    spec: &VectorWriteSpec,
) -> Result<BTreeMap<u32, RoaringTreemap>> {
    let named: std::collections::HashSet<u32> = spec.files.iter().map(|f| f.index).collect();
    let mut by_file: BTreeMap<u32, RoaringTreemap> = BTreeMap::new();
    while let Some(batch) = input.next().await {
        let batch = batch?;
        let file = batch
            .column(batch.schema().index_of(FILE)?)
            .as_primitive::<UInt32Type>()
            .clone();
        let position = batch
            .column(batch.schema().index_of(POSITION)?)
            .as_primitive::<UInt64Type>()
            .clone();
        for i in 0..batch.num_rows() {
            let f = file.value(i);
            if named.contains(&f) {
                by_file.entry(f).or_default().insert(position.value(i));
            }
        }
    }
    Ok(by_file)
}

/// The union of a file's old vector and its new positions, after checking the
/// new positions against what the process counted and the file's rows.
async fn union(
    file: &Losing,
    new: RoaringTreemap,
    reader: &mut VectorReader,
) -> Result<RoaringTreemap> {
    let wrong = |what: String| {
        DataFusionError::Execution(format!("deletion vector of {}: {what}", file.path))
    };
    if new.len() != file.deleted {
        return Err(wrong(format!(
            "{} positions were counted and {} are here",
            file.deleted,
            new.len()
        )));
    }
    if let Some(p) = new.max().filter(|&p| p >= file.rows) {
        return Err(wrong(format!(
            "position {p} is past its {} rows",
            file.rows
        )));
    }
    let Some(descriptor) = &file.vector else {
        return Ok(new);
    };
    let old = reader.bitmap(descriptor).await.map_err(external)?;
    if !(&old & &new).is_empty() {
        return Err(wrong("a new position is already deleted".into()));
    }
    Ok(old | new)
}

/// Writes the vectors of the files whose positions this task holds: one vector
/// file beside the data (a name no other task or attempt uses) and one in the
/// scratch folder for files to be rewritten.
async fn write_vectors(
    input: SendableRecordBatchStream,
    spec: &VectorWriteSpec,
    context: &TaskContext,
) -> Result<RecordBatch> {
    let by_file = positions_by_file(input, spec).await?;
    let files: HashMap<u32, &Losing> = spec.files.iter().map(|f| (f.index, f)).collect();
    let root = stores::task_store(&spec.table_url, context)?;
    let mut reader = VectorReader::new(root.clone(), &spec.table_url);
    let (mut committed, mut scratch) = (VectorFile::default(), VectorFile::default());
    let mut index_of: HashMap<String, u32> = HashMap::new();
    for (index, new) in by_file {
        let file = files[&index];
        let gone = union(file, new, &mut reader).await?;
        let into = if file.rewrite {
            &mut scratch
        } else {
            &mut committed
        };
        into.add(&file.path, gone.iter());
        index_of.insert(file.path.clone(), index);
    }
    let table_path = deltalake::Path::from_url_path(spec.table_url.path()).map_err(external)?;
    let table_store: Arc<dyn ObjectStore> = Arc::new(
        deltalake::logstore::object_store::prefix::PrefixStore::new(root.clone(), table_path),
    );
    let (descriptors, bytes) = committed
        .write(table_store.as_ref())
        .await
        .map_err(external)?;
    let mut written = vec![(descriptors.into_iter().collect::<Vec<_>>(), bytes)];
    if !scratch.is_empty() {
        let name = format!("rewrite-{}.bin", uuid::Uuid::new_v4());
        let url = spec.scratch.join(&name).map_err(external)?;
        let (bytes, descriptors) = scratch.encode_at(&url).map_err(external)?;
        let size = bytes.len() as u64;
        let path = deltalake::Path::from_url_path(url.path()).map_err(external)?;
        root.put(&path, bytes.into()).await.map_err(external)?;
        written.push((descriptors, size));
    }
    let out: Vec<WrittenVector> = written
        .into_iter()
        .flat_map(|(descriptors, file_bytes)| {
            descriptors
                .into_iter()
                .map(move |(path, descriptor)| (path, descriptor, file_bytes))
        })
        .map(|(path, descriptor, file_bytes)| WrittenVector {
            index: index_of[&path],
            descriptor,
            file_bytes,
        })
        .collect();
    let descriptors = out
        .iter()
        .map(|w| serde_json::to_string(&w.descriptor).map_err(external))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(
        VECTORS.clone(),
        vec![
            Arc::new(UInt32Array::from_iter_values(out.iter().map(|w| w.index))),
            Arc::new(StringArray::from(descriptors)),
            Arc::new(UInt64Array::from_iter_values(
                out.iter().map(|w| w.file_bytes),
            )),
        ],
    )?)
}

/// The vectors a vectors `Sink`'s tasks wrote.
pub fn written_vectors(batches: &[RecordBatch]) -> Result<Vec<WrittenVector>> {
    let mut out = Vec::new();
    for b in batches {
        let (file, descriptor, bytes) = (
            b.column(0).as_primitive::<UInt32Type>(),
            b.column(1).as_string::<i32>(),
            b.column(2).as_primitive::<UInt64Type>(),
        );
        for i in 0..b.num_rows() {
            out.push(WrittenVector {
                index: file.value(i),
                descriptor: serde_json::from_str(descriptor.value(i)).map_err(external)?,
                file_bytes: bytes.value(i),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::datasource::memory::MemorySourceConfig;
    use deltalake::logstore::object_store::local::LocalFileSystem;

    /// Positions of three files: two the process gave a vector (one with an old
    /// vector, one to be rewritten), one it removes whole (not in the spec).
    fn positions() -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![
            Field::new(FILE, DataType::UInt32, false),
            Field::new(POSITION, DataType::UInt64, false),
        ]));
        let rows = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(UInt32Array::from(vec![0, 1, 2, 0])),
                Arc::new(UInt64Array::from(vec![5, 2, 7, 0])),
            ],
        )
        .unwrap();
        MemorySourceConfig::try_new_exec(&[vec![rows]], schema, None).unwrap()
    }

    async fn run(spec: VectorWriteSpec) -> Result<Vec<WrittenVector>> {
        let exec = VectorWriteExec::new(positions(), Arc::new(spec));
        let out =
            datafusion::physical_plan::collect(Arc::new(exec), Arc::new(TaskContext::default()))
                .await?;
        written_vectors(&out)
    }

    fn spec(
        table: &std::path::Path,
        old: DeletionVectorDescriptor,
        a_loses: u64,
    ) -> VectorWriteSpec {
        VectorWriteSpec {
            table_url: url::Url::from_directory_path(table).unwrap(),
            scratch: url::Url::from_directory_path(table.join("_scratch")).unwrap(),
            files: vec![
                Losing {
                    index: 0,
                    path: "m=1/a.parquet".into(),
                    rows: 10,
                    vector: Some(old),
                    deleted: a_loses,
                    rewrite: false,
                },
                Losing {
                    index: 1,
                    path: "b.parquet".into(),
                    rows: 4,
                    vector: None,
                    deleted: 1,
                    rewrite: true,
                },
            ],
        }
    }

    /// A file's vector is the union of its old one and its new positions,
    /// beside the data; a file to be rewritten gets its vector in the scratch
    /// folder; a removed file gets none.
    #[tokio::test]
    async fn vectors_unite_old_and_new_positions_and_rewrites_go_to_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let table = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let mut old = VectorFile::default();
        old.add("m=1/a.parquet", [1, 3]);
        let (old, _) = old.write(&table).await.unwrap();
        let old = old["m=1/a.parquet"].clone();
        let written = run(spec(dir.path(), old, 2)).await.unwrap();
        let root: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        let table_url = url::Url::from_directory_path(dir.path()).unwrap();
        let mut reader = VectorReader::new(root, &table_url);
        let mut found = BTreeMap::new();
        for w in &written {
            let positions = reader.deleted(&w.descriptor).await.unwrap();
            found.insert(w.index, (positions, w.descriptor.storage_type));
            assert!(w.file_bytes > 0);
        }
        use deltalake::kernel::StorageType;
        assert_eq!(
            found,
            BTreeMap::from([
                (0, (vec![0, 1, 3, 5], StorageType::UuidRelativePath)),
                (1, (vec![2], StorageType::AbsolutePath)),
            ])
        );
        let scratch = std::fs::read_dir(dir.path().join("_scratch")).unwrap();
        assert_eq!(scratch.count(), 1, "one rewrite vector file");
    }

    /// A task that finds another number of positions than the process counted
    /// (which chose the file's fate from that count) fails instead of writing.
    #[tokio::test]
    async fn positions_that_differ_from_the_count_fail_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let table = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let mut old = VectorFile::default();
        old.add("m=1/a.parquet", [1]);
        let (old, _) = old.write(&table).await.unwrap();
        let old = old["m=1/a.parquet"].clone();
        let message = run(spec(dir.path(), old, 3)).await.unwrap_err().to_string();
        assert!(
            message.contains("3 positions were counted and 2 are here"),
            "{message}"
        );
    }
}
