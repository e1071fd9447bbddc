//! Reading a Delta table as sqlplan does: DataFusion's Parquet scan over exactly the
//! snapshot's files, each file's deletion vector given to the reader as a row
//! selection, so filters stay pushed into the reader: row groups pruned by
//! statistics, filter columns decoded first and the other columns only for the rows
//! that pass. delta-rs 1.1's scan turns both off as soon as one selected file has a
//! vector (it applies the vector after the reader, so the reader must see every
//! row), and every read of a table the summary pipeline MERGEs into then decoded all
//! of it: `existing` went from 12 s to 55–65 s.
//!
//! The provider (`DeltaFiles`) holds the snapshot's file list in the log's own terms
//! (paths, sizes, partition values as strings, vector descriptors), and its scan
//! node (`exec::DeltaFilesExec`) reads the vectors itself when it runs. So both can
//! be shipped to a cluster (`crate::cluster`): executors read the files and apply
//! the vectors, with nothing but the table's URL to find them.
//!
//! Used for tables with at least one vector, and for every table a run sends to a
//! cluster; a local run keeps delta-rs's provider for the others (it also skips
//! files by the log's statistics).

pub mod exec;
pub mod keys;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result, ScalarValue, ToDFSchema};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use deltalake::kernel::DeletionVectorDescriptor;
use deltalake::DeltaTable;
use serde::{Deserialize, Serialize};

pub use exec::DeltaFilesExec;

use super::error::{Error, Result as DeltaResult};
use super::partition;

/// The provider a run reads `table` through: sqlplan's own scan when the table has
/// deletion vectors or the run goes to a cluster (`shipped`), else delta-rs's.
pub async fn provider(table: &DeltaTable, shipped: bool) -> DeltaResult<Arc<dyn TableProvider>> {
    let delta = table.table_provider().await.map_err(Error::from)?;
    let snapshot = table.snapshot().map_err(Error::from)?;
    let has_vectors = snapshot
        .log_data()
        .iter()
        .any(|f| f.deletion_vector_descriptor().is_some());
    if !(shipped || has_vectors) {
        return Ok(delta);
    }
    Ok(Arc::new(DeltaFiles {
        table_url: table.table_url().clone(),
        schema: delta.schema(),
        partitions: snapshot.metadata().partition_columns().to_vec(),
        files: Arc::new(files_of(snapshot)),
        version: table.version().map(|v| v as i64),
    }))
}

/// A snapshot's data files, as a scan needs them.
fn files_of(snapshot: &deltalake::table::state::DeltaTableState) -> Vec<DataFile> {
    snapshot
        .log_data()
        .iter()
        .map(|f| DataFile {
            path: f.path().to_string(),
            size: f.size().max(0) as u64,
            partition: f.partition_values_map().into_iter().collect(),
            vector: f.deletion_vector_descriptor(),
        })
        .collect()
}

/// The data files of the table at `table_url` as of `version`, read from its log
/// (a cluster's scheduler rebuilds a scan from the version the client names).
pub async fn files_at(table_url: &url::Url, version: i64) -> DeltaResult<Vec<DataFile>> {
    let table = deltalake::DeltaTableBuilder::from_url(table_url.clone())?
        .with_storage_options(crate::delta::stores::options())
        .with_version(version as u64)
        .load()
        .await?;
    Ok(files_of(table.snapshot()?))
}

/// One data file of a snapshot, as a scan needs it, in the log's own terms (so it
/// crosses to a cluster as JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DataFile {
    /// Relative to the table root, decoded (as `LogicalFileView::path`).
    pub path: String,
    pub size: u64,
    /// Partition values as the log writes them (strings; None for NULL).
    pub partition: BTreeMap<String, Option<String>>,
    pub vector: Option<DeletionVectorDescriptor>,
}

/// A snapshot of a table: its files, read as described above.
#[derive(Debug)]
pub struct DeltaFiles {
    pub table_url: url::Url,
    /// As delta-rs's provider has it (what the plan was bound to).
    pub schema: SchemaRef,
    pub partitions: Vec<String>,
    pub files: Arc<Vec<DataFile>>,
    /// The table version `files` are of (none: a table without a commit yet).
    pub version: Option<i64>,
}

fn df_error(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

impl DeltaFiles {
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
pub fn partition_values<'a>(
    fields: &[FieldRef],
    raw: impl Fn(&str) -> Option<&'a Option<String>>,
) -> Result<Vec<ScalarValue>> {
    fields
        .iter()
        .map(|f| {
            let raw = raw(f.name()).and_then(|v| v.as_deref());
            partition::value(raw, f.data_type()).map_err(df_error)
        })
        .collect()
}

#[async_trait]
impl TableProvider for DeltaFiles {
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
        let (data_fields, partition_fields) = self.scan_fields();
        let filters: Vec<Expr> = filters.iter().cloned().map(unnormalize_col).collect();

        // Files whose partition values pass the partition-only filters.
        let values = self
            .files
            .iter()
            .map(|f| partition_values(&partition_fields, |c| f.partition.get(c)))
            .collect::<Result<Vec<_>>>()?;
        let keep = partition_pass(state, &partition_fields, &values, &filters)?;
        let selected: Vec<DataFile> = self
            .files
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(f, _)| f.clone())
            .collect();

        let scan_schema: Vec<FieldRef> = data_fields
            .iter()
            .chain(&partition_fields)
            .cloned()
            .collect();
        let scan_df_schema = Schema::new(scan_schema.clone()).to_dfschema()?;
        let predicate = conjunction(filters)
            .map(|p| state.create_physical_expr(p, &scan_df_schema))
            .transpose()?;
        // The requested columns, by their position among the scan's columns.
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let projection = wanted
            .iter()
            .map(|i| {
                let name = self.schema.field(*i).name();
                scan_schema
                    .iter()
                    .position(|f| f.name() == name)
                    .ok_or_else(|| df_error(format!("column {name} is not scanned")))
            })
            .collect::<Result<Vec<_>>>()?;
        let groups = split(selected, state.config_options().execution.target_partitions);
        let reader = exec::Reader::from(&state.config_options().execution.parquet);
        Ok(Arc::new(DeltaFilesExec::try_new(
            self.table_url.clone(),
            Arc::new(Schema::new(data_fields)),
            partition_fields,
            groups,
            projection,
            predicate,
            limit,
            reader,
        )?))
    }
}

/// The files spread over `n` groups (scanned in parallel).
fn split(files: Vec<DataFile>, n: usize) -> Vec<Vec<DataFile>> {
    let n = n.max(1).min(files.len().max(1));
    let mut groups: Vec<Vec<DataFile>> = (0..n).map(|_| Vec::new()).collect();
    for (i, f) in files.into_iter().enumerate() {
        groups[i % n].push(f);
    }
    groups
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
