//! Reading a table whose files have deletion vectors: DataFusion's Parquet scan over
//! the snapshot's files, each file's vector given to the reader as a row selection
//! (`ParquetRowSelection`), so filters stay pushed into the reader: row groups
//! pruned by statistics, filter columns decoded first and the other columns only for
//! the rows that pass. delta-rs 1.1's scan turns both off as soon as one selected
//! file has a vector (it applies the vector after the reader, so the reader must see
//! every row), and every read of a table the summary pipeline MERGEs into then
//! decoded all of it: `existing` went from 12 s to 55–65 s.
//!
//! Used for local tables with at least one vector; others keep delta-rs's provider.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result, ScalarValue, ToDFSchema};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use deltalake::parquet::arrow::arrow_reader::RowSelection;
use deltalake::DeltaTable;

use super::vectors;

/// The provider a run reads `table` through.
pub async fn provider(table: &DeltaTable) -> std::result::Result<Arc<dyn TableProvider>, String> {
    let delta = table.table_provider().await.map_err(|e| e.to_string())?;
    let local = table.table_url().scheme() == "file";
    let has_vectors = table.snapshot().is_ok_and(|s| {
        s.log_data()
            .iter()
            .any(|f| f.deletion_vector_descriptor().is_some())
    });
    if !(local && has_vectors) {
        return Ok(delta);
    }
    let partitions = table
        .snapshot()
        .map_err(|e| e.to_string())?
        .metadata()
        .partition_columns()
        .to_vec();
    Ok(Arc::new(VectorScan {
        table: table.clone(),
        schema: delta.schema(),
        partitions,
    }))
}

/// A snapshot of a table with deletion vectors, read as described above.
#[derive(Debug)]
pub struct VectorScan {
    table: DeltaTable,
    /// As delta-rs's provider has it (what the plan was bound to).
    schema: SchemaRef,
    partitions: Vec<String>,
}

fn df_error(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

impl VectorScan {
    /// Data columns, then partition columns: the scan's own column order.
    fn scan_fields(&self) -> (Vec<FieldRef>, Vec<FieldRef>) {
        self.schema
            .fields()
            .iter()
            .cloned()
            .partition(|f| !self.partitions.contains(f.name()))
    }
}

/// A file's partition values (as the log has them), typed as `fields` say.
pub fn partition_values(
    fields: &[FieldRef],
    raw: &HashMap<String, Option<String>>,
) -> Result<Vec<ScalarValue>> {
    fields
        .iter()
        .map(|f| typed(raw.get(f.name()).cloned().flatten(), f.data_type()))
        .collect()
}

fn typed(value: Option<String>, data_type: &DataType) -> Result<ScalarValue> {
    match (value, data_type) {
        (v, DataType::Dictionary(key, inner)) => Ok(ScalarValue::Dictionary(
            key.clone(),
            Box::new(typed(v, inner)?),
        )),
        (Some(v), t) => ScalarValue::try_from_string(v, t),
        (None, t) => ScalarValue::try_from(t),
    }
}

#[async_trait]
impl TableProvider for VectorScan {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Inexact: DataFusion keeps its own filter above the scan, so a filter the
    /// reader cannot use (or uses only to prune) is still applied.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snapshot = self.table.snapshot().map_err(df_error)?;
        let (data_fields, partition_fields) = self.scan_fields();
        let filters: Vec<Expr> = filters.iter().cloned().map(unnormalize_col).collect();

        // Files whose partition values pass the partition-only filters.
        let files: Vec<_> = snapshot.log_data().iter().collect();
        let values = files
            .iter()
            .map(|f| partition_values(&partition_fields, &f.partition_values_map()))
            .collect::<Result<Vec<_>>>()?;
        let keep = partition_pass(state, &partition_fields, &values, &filters)?;
        let selected: Vec<usize> = (0..files.len()).filter(|i| keep[*i]).collect();

        let with_vectors: Vec<String> = selected
            .iter()
            .filter(|i| files[**i].deletion_vector_descriptor().is_some())
            .map(|i| files[*i].path().to_string())
            .collect();
        let mut masks = vectors::keep_masks(&self.table, state, &with_vectors)
            .await
            .map_err(df_error)?;
        let root = self
            .table
            .table_url()
            .to_file_path()
            .map_err(|_| df_error("not a local table"))?;
        let mut group = Vec::with_capacity(selected.len());
        for i in selected {
            let f = &files[i];
            let path = root.join(f.path().as_ref());
            let location = deltalake::Path::from_absolute_path(&path).map_err(df_error)?;
            let mut file = PartitionedFile::new(location.to_string(), f.size() as u64)
                .with_partition_values(values[i].clone());
            if let Some(keep) = masks.remove(f.path().as_ref()) {
                file = file.with_extension(
                    datafusion::datasource::physical_plan::parquet::ParquetRowSelection::new(
                        selection(&keep),
                    ),
                );
            }
            group.push(file);
        }

        let file_schema = Arc::new(Schema::new(data_fields.clone()));
        let table_schema = datafusion::datasource::table_schema::TableSchema::builder(file_schema)
            .with_table_partition_cols(partition_fields.clone())
            .build();
        let scan_schema: Vec<FieldRef> = data_fields
            .iter()
            .chain(&partition_fields)
            .cloned()
            .collect();
        let scan_df_schema = Schema::new(scan_schema.clone()).to_dfschema()?;
        let mut options = datafusion::config::TableParquetOptions::default();
        options.global = state.config_options().execution.parquet.clone();
        let mut source = ParquetSource::new(table_schema).with_table_parquet_options(options);
        if let Some(predicate) = conjunction(filters) {
            source = source.with_predicate(state.create_physical_expr(predicate, &scan_df_schema)?);
        }
        // The requested columns, by their position among the scan's columns.
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let indices = wanted
            .iter()
            .map(|i| {
                let name = self.schema.field(*i).name();
                scan_schema
                    .iter()
                    .position(|f| f.name() == name)
                    .ok_or_else(|| df_error(format!("column {name} is not scanned")))
            })
            .collect::<Result<Vec<_>>>()?;
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(split(
                    group,
                    state.config_options().execution.target_partitions,
                ))
                .with_projection_indices(Some(indices))?
                .with_limit(limit)
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The files spread over `n` groups (scanned in parallel).
fn split(files: Vec<PartitionedFile>, n: usize) -> Vec<FileGroup> {
    let n = n.max(1).min(files.len().max(1));
    let mut groups: Vec<Vec<PartitionedFile>> = (0..n).map(|_| Vec::new()).collect();
    for (i, f) in files.into_iter().enumerate() {
        groups[i % n].push(f);
    }
    groups.into_iter().map(FileGroup::new).collect()
}

/// A keep mask (true: live) as a row selection over the whole file.
fn selection(keep: &[bool]) -> RowSelection {
    let live = vectors::ranges(
        keep.iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(i, _)| i as u64),
    );
    RowSelection::from_consecutive_ranges(live.into_iter(), keep.len())
}

/// Per file: do its partition values pass every filter that reads only partition
/// columns? (NULL counts as not passing, as in a WHERE.)
pub fn partition_pass(
    state: &dyn Session,
    fields: &[FieldRef],
    values: &[Vec<ScalarValue>],
    filters: &[Expr],
) -> Result<Vec<bool>> {
    let mut keep = vec![true; values.len()];
    let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
    let partition_only: Vec<&Expr> = filters
        .iter()
        .filter(|f| {
            let refs = f.column_refs();
            !refs.is_empty() && refs.iter().all(|c| names.contains(&c.name.as_str()))
        })
        .collect();
    if partition_only.is_empty() || values.is_empty() {
        return Ok(keep);
    }
    let schema = Arc::new(Schema::new(
        fields
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let columns = (0..fields.len())
        .map(|c| ScalarValue::iter_to_array(values.iter().map(|v| v[c].clone())))
        .collect::<Result<Vec<ArrayRef>>>()?;
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    for f in partition_only {
        let expr = state.create_physical_expr(f.clone(), &df_schema)?;
        let result = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
        let passed = result
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| df_error("a partition filter is not boolean"))?;
        for (i, k) in keep.iter_mut().enumerate() {
            *k &= passed.is_valid(i) && passed.value(i);
        }
    }
    Ok(keep)
}
