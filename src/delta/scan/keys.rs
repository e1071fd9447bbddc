//! The key pass of a MERGE as a scan a cluster runs. `KeyPassFiles` is a
//! provider whose rows are the live rows of a table's candidate files whose key
//! is among the MERGE source's keys (`delta::keys::Matcher`), each with the
//! target columns the MERGE reads, its file (the candidate's index) and its
//! position. Its node `KeyPassExec` reads a group of candidate files per
//! partition: each task reads the source's keys from the relation the cluster
//! wrote (Parquet files in the scratch folder), the files' existing vectors, and
//! matches; no key and no target row passes through the sqlplan process.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use deltalake::kernel::DeletionVectorDescriptor;
use deltalake::ObjectStore;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::df_error;
use super::exec::{group_files, groups_of};
use crate::delta::keys::{MatchFile, Matcher, SourceKeys, FILE, MATCHED_SOURCE_ROW, POSITION};
use crate::delta::vectors::{deleted_rows, DataFile, VectorReader};
use crate::delta::{partition, stores};

/// A candidate file as it crosses to an executor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Candidate {
    /// Its index among the MERGE's candidates (the matched rows' file column).
    pub index: u32,
    /// Relative to the table root, decoded.
    pub path: String,
    pub size: u64,
    /// Physical rows, when the log says.
    pub rows: Option<usize>,
    pub partition: HashMap<String, Option<String>>,
    pub vector: Option<DeletionVectorDescriptor>,
}

/// One row's values of the split columns, as one string (each value as its
/// `ScalarValue` prints it, so typed values compare by their text).
pub fn split_values(values: &[datafusion::common::ScalarValue]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// A file of a MERGE source in the scratch folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceFile {
    pub url: String,
    /// The values of the split keys all its rows have (`split_values`);
    /// none: any.
    pub values: Option<String>,
}

/// What every task of a key pass needs besides its files. Without keys (a
/// DELETE's pass) every live row is returned, with `referenced` (the columns its
/// predicate reads), for the cluster to test.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyPassSpec {
    pub table_url: url::Url,
    /// The source relation's files and, in key order, the columns that hold its
    /// keys (already of the target key columns' types).
    pub source_files: Vec<SourceFile>,
    pub source_keys: Vec<String>,
    /// The key columns that are partition columns, whose values each source file
    /// holds one of (`SourceFile::values`): a task reads only the files of its
    /// candidates' partitions.
    pub split_keys: Vec<String>,
    /// The target's key columns and partition columns.
    pub keys: Vec<String>,
    pub partitions: Vec<String>,
    /// Target columns the matched rows carry (keys included), in table order.
    pub referenced: Vec<String>,
}

impl KeyPassSpec {
    /// The matched rows' schema: `referenced` with `types`, then the file,
    /// position and source row.
    pub fn matched_schema(&self, types: &BTreeMap<String, DataType>) -> Result<SchemaRef> {
        let fields = self
            .referenced
            .iter()
            .map(|c| {
                let t = types
                    .get(c)
                    .ok_or_else(|| df_error(format!("the target has no column `{c}`")))?;
                Ok(Field::new(c, t.clone(), true))
            })
            .chain([
                Ok(Field::new(FILE, DataType::UInt32, false)),
                Ok(Field::new(POSITION, DataType::UInt64, false)),
                Ok(Field::new(MATCHED_SOURCE_ROW, DataType::UInt64, false)),
            ])
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The matcher a task runs on `files`: the keys of the source files that can
    /// hold their partitions' keys.
    async fn matcher(
        &self,
        schema: &SchemaRef,
        files: &[Candidate],
        context: &TaskContext,
    ) -> Result<Matcher> {
        let target_fields: BTreeMap<String, DataType> = self
            .referenced
            .iter()
            .map(|c| Ok((c.clone(), schema.field_with_name(c)?.data_type().clone())))
            .collect::<Result<_>>()?;
        let key_types: Vec<DataType> = self
            .keys
            .iter()
            .map(|k| {
                target_fields
                    .get(k)
                    .cloned()
                    .ok_or_else(|| df_error(format!("key `{k}` is not among the columns read")))
            })
            .collect::<Result<_>>()?;
        let converter = RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())?;
        let wanted = self.source_files_for(files, &target_fields)?;
        let keyed = self.source_keys(&wanted, &key_types, context).await?;
        let lookup = SourceKeys::new(&converter, &keyed, &self.keys, &key_types, &self.partitions)
            .map_err(df_error)?;
        Ok(Matcher {
            read: self
                .referenced
                .iter()
                .filter(|c| !self.partitions.contains(c))
                .cloned()
                .collect(),
            lookup,
            converter,
            keys: self.keys.clone(),
            key_types,
            referenced: self.referenced.clone(),
            target_fields,
            matched_schema: schema.clone(),
        })
    }

    /// The source's key columns, cast to the key types, with a source row column
    /// (unused here: matched rows join back to the source by key).
    #[allow(deprecated)] // ParquetObjectReader, as `vectors::read_rows` uses it
    async fn source_keys(
        &self,
        source_files: &[&SourceFile],
        key_types: &[DataType],
        context: &TaskContext,
    ) -> Result<Vec<RecordBatch>> {
        use datafusion::parquet::arrow::async_reader::ParquetObjectReader;
        use datafusion::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
        let mut keyed = Vec::new();
        for source in source_files {
            let file = &source.url;
            let url = url::Url::parse(file).map_err(df_error)?;
            let store = stores::task_store(&url, context)?;
            let path = deltalake::Path::from_url_path(url.path()).map_err(df_error)?;
            let reader = ParquetObjectReader::new(store, path);
            let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
            let roots: Vec<usize> = self
                .source_keys
                .iter()
                .map(|k| {
                    builder
                        .schema()
                        .index_of(k)
                        .map_err(|e| df_error(format!("source relation {file}: {e}")))
                })
                .collect::<Result<_>>()?;
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots.clone());
            let batches: Vec<RecordBatch> =
                builder.with_projection(mask).build()?.try_collect().await?;
            for b in batches {
                // The projected batch holds the key columns in file order.
                let mut columns: Vec<ArrayRef> = Vec::new();
                for (k, t) in self.source_keys.iter().zip(key_types) {
                    let column = b
                        .column_by_name(k)
                        .ok_or_else(|| df_error(format!("source relation {file} has no `{k}`")))?;
                    columns.push(datafusion::arrow::compute::cast(column, t)?);
                }
                columns.push(Arc::new(UInt64Array::from(vec![0u64; b.num_rows()])));
                let fields: Vec<Field> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Field::new(format!("k{i}"), c.data_type().clone(), true))
                    .collect();
                keyed.push(RecordBatch::try_new(
                    Arc::new(Schema::new(fields)),
                    columns,
                )?);
            }
        }
        Ok(keyed)
    }
}

impl KeyPassSpec {
    /// The source files whose split values some of `files`' partitions have (all
    /// of them when the source is not split).
    fn source_files_for(
        &self,
        files: &[Candidate],
        types: &BTreeMap<String, DataType>,
    ) -> Result<Vec<&SourceFile>> {
        if self.split_keys.is_empty() {
            return Ok(self.source_files.iter().collect());
        }
        let mut wanted = std::collections::HashSet::new();
        for c in files {
            let values = self
                .split_keys
                .iter()
                .map(|k| {
                    let raw = c.partition.get(k).and_then(|v| v.as_deref());
                    partition::value(raw, &types[k]).map_err(df_error)
                })
                .collect::<Result<Vec<_>>>()?;
            wanted.insert(split_values(&values));
        }
        Ok(self
            .source_files
            .iter()
            .filter(|f| f.values.as_ref().is_none_or(|v| wanted.contains(v)))
            .collect())
    }
}

/// The provider: matched rows of the candidate files, in groups.
#[derive(Debug)]
pub struct KeyPassFiles {
    pub spec: Arc<KeyPassSpec>,
    /// The matched rows' schema (`KeyPassSpec::matched_schema`).
    pub schema: SchemaRef,
    pub groups: Vec<Vec<Candidate>>,
}

#[async_trait]
impl TableProvider for KeyPassFiles {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let exec: Arc<dyn ExecutionPlan> = Arc::new(KeyPassExec::new(
            self.spec.clone(),
            self.schema.clone(),
            group_files(&self.groups)?,
        ));
        let Some(projection) = projection else {
            return Ok(exec);
        };
        use datafusion::physical_expr::expressions::Column;
        use datafusion::physical_plan::projection::ProjectionExec;
        let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = projection
            .iter()
            .map(|&i| {
                let name = self.schema.field(i).name().clone();
                (
                    Arc::new(Column::new(&name, i)) as Arc<dyn PhysicalExpr>,
                    name,
                )
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(exprs, exec)?))
    }
}

/// The node: a group of candidate files per partition, matched by each task.
#[derive(Debug)]
pub struct KeyPassExec {
    pub spec: Arc<KeyPassSpec>,
    /// An in-memory source with a partition per group (the group's files as JSON).
    pub groups: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl KeyPassExec {
    pub fn new(
        spec: Arc<KeyPassSpec>,
        schema: SchemaRef,
        groups: Arc<dyn ExecutionPlan>,
    ) -> KeyPassExec {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(groups.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        KeyPassExec {
            spec,
            groups,
            properties,
        }
    }
}

impl DisplayAs for KeyPassExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "KeyPassExec: table={}, keys={:?}, groups={}",
            self.spec.table_url,
            self.spec.keys,
            self.groups.output_partitioning().partition_count()
        )
    }
}

impl ExecutionPlan for KeyPassExec {
    fn name(&self) -> &str {
        "KeyPassExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.groups]
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
        let [groups] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("KeyPassExec has one child".into()))?;
        Ok(Arc::new(KeyPassExec::new(
            self.spec.clone(),
            self.schema(),
            groups,
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let spec = self.spec.clone();
        let schema = self.schema();
        let groups = self.groups.clone();
        let task_schema = schema.clone();
        let matched = futures::stream::once(async move {
            let groups: Vec<Vec<Candidate>> = groups_of(&groups, partition, &context).await?;
            let batches = match_files(&spec, &task_schema, groups.concat(), &context).await?;
            Ok::<_, DataFusionError>(futures::stream::iter(batches.into_iter().map(Ok)))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            matched.boxed(),
        )))
    }
}

/// One task's work: the matched rows of its candidate files.
async fn match_files(
    spec: &KeyPassSpec,
    schema: &SchemaRef,
    files: Vec<Candidate>,
    context: &TaskContext,
) -> Result<Vec<RecordBatch>> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let matcher = match spec.keys.is_empty() {
        true => None,
        false => Some(Arc::new(spec.matcher(schema, &files, context).await?)),
    };
    let root = stores::task_store(&spec.table_url, context)?;
    let table_path = deltalake::Path::from_url_path(spec.table_url.path()).map_err(df_error)?;
    let table_store: Arc<dyn ObjectStore> = Arc::new(
        deltalake::logstore::object_store::prefix::PrefixStore::new(root.clone(), table_path),
    );
    let mut vectors = VectorReader::new(root, &spec.table_url);
    let mut matched = Vec::new();
    for c in files {
        let keep = match &c.vector {
            Some(d) => Some(Arc::new(
                deleted_rows(&mut vectors, &table_store, &c.path, c.size, c.rows, d)
                    .await
                    .map_err(df_error)?,
            )),
            None => None,
        };
        let file = MatchFile {
            index: c.index,
            file: DataFile {
                path: c.path,
                size: c.size,
            },
            partition: c.partition,
            keep,
        };
        let batches = match &matcher {
            Some(m) => m.clone().scan(table_store.clone(), file).await.map(|m| m.2),
            None => live_rows(spec, schema, table_store.clone(), file).await,
        };
        matched.extend(batches.map_err(df_error)?);
    }
    Ok(matched)
}

/// Every live row of a file: `spec.referenced` (partition columns from the log's
/// values), its file and position.
async fn live_rows(
    spec: &KeyPassSpec,
    schema: &SchemaRef,
    store: Arc<dyn ObjectStore>,
    f: MatchFile,
) -> crate::delta::error::Result<Vec<RecordBatch>> {
    use datafusion::arrow::array::{AsArray, UInt32Array};
    use datafusion::arrow::datatypes::Int64Type;
    let read: Vec<String> = spec
        .referenced
        .iter()
        .filter(|c| !spec.partitions.contains(c))
        .cloned()
        .collect();
    let (batches, _) =
        crate::delta::vectors::read_rows(store, &f.file, &read, crate::delta::vectors::Rows::All)
            .await?;
    let mut out = Vec::new();
    for b in &batches {
        let positions = b
            .column_by_name(crate::delta::vectors::ROW_NUMBER)
            .ok_or_else(|| crate::delta::Error::table("a DELETE read rows without row numbers"))?
            .as_primitive::<Int64Type>();
        let live: Vec<u32> = (0..b.num_rows())
            .filter(|&i| {
                let p = positions.value(i) as usize;
                f.keep.as_ref().is_none_or(|k| k.is_live(p as u64))
            })
            .map(|i| i as u32)
            .collect();
        if live.is_empty() {
            continue;
        }
        let idx = UInt32Array::from(live);
        let mut columns = spec
            .referenced
            .iter()
            .map(|c| {
                let t = schema.field_with_name(c)?.data_type().clone();
                let a = crate::delta::vectors::column_of(b, c, &t, &f.partition)?;
                Ok(datafusion::arrow::compute::take(&a, &idx, None)?)
            })
            .collect::<crate::delta::error::Result<Vec<ArrayRef>>>()?;
        let taken = datafusion::arrow::compute::take(positions, &idx, None)?;
        columns.push(Arc::new(UInt32Array::from(vec![f.index; idx.len()])));
        columns.push(datafusion::arrow::compute::cast(&taken, &DataType::UInt64)?);
        columns.push(Arc::new(UInt64Array::from(vec![0u64; idx.len()])));
        out.push(RecordBatch::try_new(schema.clone(), columns)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::common::ScalarValue;

    fn candidate(index: u32, p: Option<&str>) -> Candidate {
        Candidate {
            index,
            path: format!("f{index}.parquet"),
            size: 1,
            rows: Some(1),
            partition: HashMap::from([("p".to_string(), p.map(str::to_string))]),
            vector: None,
        }
    }

    /// A source split by a partition key: a task reads the files of its
    /// candidates' partition values (compared typed, here dates written by the
    /// sink and read from the log as text) and the unsplit ones, nothing else.
    #[test]
    fn a_task_reads_only_the_source_files_of_its_partitions() {
        let day = |s: &str| {
            let v = ScalarValue::Utf8(Some(s.to_string()))
                .cast_to(&DataType::Date32)
                .unwrap();
            Some(split_values(&[v]))
        };
        let file = |url: &str, values: Option<String>| SourceFile {
            url: url.to_string(),
            values,
        };
        let spec = KeyPassSpec {
            table_url: url::Url::parse("s3://b/t/").unwrap(),
            source_files: vec![
                file("june", day("2025-06-01")),
                file("july", day("2025-07-01")),
                file("empty", None),
            ],
            source_keys: vec!["k0".into(), "k1".into()],
            split_keys: vec!["p".into()],
            keys: vec!["id".into(), "p".into()],
            partitions: vec!["p".into()],
            referenced: vec!["id".into(), "p".into()],
        };
        let types = BTreeMap::from([
            ("id".to_string(), DataType::Int64),
            ("p".to_string(), DataType::Date32),
        ]);
        let read = |files: &[Candidate]| -> Vec<String> {
            spec.source_files_for(files, &types)
                .unwrap()
                .iter()
                .map(|f| f.url.clone())
                .collect()
        };
        assert_eq!(read(&[candidate(0, Some("2025-07-01"))]), ["july", "empty"]);
        assert_eq!(
            read(&[
                candidate(0, Some("2025-06-01")),
                candidate(1, Some("2025-07-01"))
            ]),
            ["june", "july", "empty"]
        );
        assert_eq!(read(&[candidate(0, None)]), ["empty"]);
        let unsplit = KeyPassSpec {
            split_keys: Vec::new(),
            ..spec.clone()
        };
        assert_eq!(
            unsplit
                .source_files_for(&[candidate(0, None)], &types)
                .unwrap()
                .len(),
            3
        );
    }
}
