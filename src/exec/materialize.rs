//! A materialized relation: computed once, its checks applied, held in memory or
//! spilled to local Parquet; every reader scans the result.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::MemTable;
use datafusion::prelude::DataFrame;
use datafusion::sql::sqlparser::ast::Query;
use deltalake::protocol::SaveMode;

use super::context::{df_err, Executor, StageResult};
use super::error::StageError;
use super::expect::{check_column, quarantine_label, Checker};
use super::metrics::scan_stats;
use crate::delta;
use crate::plan::StagePlan;
use crate::report::StageMetrics;

impl Executor {
    /// Computed once; every reader scans the result: held in memory, or spilled to
    /// local Parquet once it grows past the spill threshold.
    pub(super) async fn materialize(
        &self,
        stage: &StagePlan,
        query: &Query,
    ) -> StageResult<StageMetrics> {
        use futures::StreamExt;
        let df = self.query(query).await?;
        let (df, literal_bounds) = self.bounded(df).await?;
        if let Some(remote) = &self.remote {
            let checker = (!stage.checks.is_empty()).then(|| Checker::new(&stage.checks));
            let (name, checked) = match &checker {
                Some(c) => (
                    format!("{}__checked", stage.name),
                    c.with_check_columns(df.clone(), &self.ctx.state())?,
                ),
                None => (stage.name.clone(), df.clone()),
            };
            if let Some(written) = remote.write(&name, checked.logical_plan()).await? {
                self.register_files(&name, &written.files).await?;
                let mut metrics = match checker {
                    Some(c) => {
                        let rows = written.files.iter().map(|f| f.rows).sum();
                        self.checked_on_cluster(stage, &name, rows, c, &df).await?
                    }
                    None => StageMetrics {
                        rows_out: Some(written.files.iter().map(|f| f.rows).sum()),
                        ..Default::default()
                    },
                };
                let scan = scan_stats(&written.plan);
                super::metrics::profile(&stage.name, &written.plan);
                metrics.files_scanned = scan.files;
                metrics.bytes_scanned = scan.bytes;
                metrics.spilled_bytes = Some(written.files.iter().map(|f| f.bytes).sum());
                metrics.literal_bounds = literal_bounds;
                self.materialized.lock().await.insert(stage.name.clone());
                return Ok(metrics);
            }
        }
        let width = df.schema().fields().len();
        let mut checker = (!stage.checks.is_empty()).then(|| Checker::new(&stage.checks));
        let df = match &checker {
            Some(c) => c.with_check_columns(df, &self.ctx.state())?,
            None => df,
        };
        let (plan, task) = self.physical(df).await?;
        // The physical schema: batches may differ from the logical one (view types,
        // nullability), and a MemTable must match its batches. Check columns are
        // removed from every batch.
        let schema = Arc::new(
            plan.schema()
                .project(&(0..width).collect::<Vec<_>>())
                .map_err(df_err)?,
        );
        let mut stream =
            datafusion::physical_plan::execute_stream(plan.clone(), task).map_err(df_err)?;
        let (mut held, mut held_bytes, mut rows) = (Vec::new(), 0usize, 0u64);
        let mut spill: Option<(
            std::path::PathBuf,
            datafusion::parquet::arrow::ArrowWriter<std::fs::File>,
        )> = None;
        while let Some(batch) = stream.next().await {
            let mut batch = batch.map_err(df_err)?;
            if let Some(c) = &mut checker {
                batch = c.split(batch)?;
            }
            let batch = compact(batch).map_err(df_err)?;
            rows += batch.num_rows() as u64;
            match &mut spill {
                Some((_, writer)) => writer.write(&batch).map_err(df_err)?,
                None => {
                    held_bytes += batch.get_array_memory_size();
                    held.push(batch);
                    // On a cluster every relation goes to the scratch folder, where
                    // the executors read it.
                    if held_bytes as u64 > self.spill_threshold || self.remote.is_some() {
                        let (path, mut writer) = self.spill_writer(&stage.name, schema.clone())?;
                        for b in held.drain(..) {
                            writer.write(&b).map_err(df_err)?;
                        }
                        spill = Some((path, writer));
                    }
                }
            }
        }
        let scan = scan_stats(&plan);
        super::metrics::profile(&stage.name, &plan);
        let mut checks = BTreeMap::new();
        let mut quarantined = None;
        if let Some(c) = &checker {
            if let Some(failure) = c.failure(&stage.name) {
                return Err(StageError::ChecksFailed(failure));
            }
            checks = c.counts();
            quarantined = Some(c.dropped.len() as u64);
            if !c.dropped.is_empty() {
                self.quarantine(stage, c).await?;
            }
        }
        if spill.is_none() && self.remote.is_some() {
            // An empty relation, for the cluster too.
            spill = Some(self.spill_writer(&stage.name, schema.clone())?);
        }
        let spilled_bytes = match spill {
            Some((path, writer)) => {
                writer.close().map_err(df_err)?;
                let bytes = std::fs::metadata(&path).map_err(df_err)?.len();
                let location = match &self.remote {
                    Some(remote) => remote.publish(&stage.name, &path).await?.to_string(),
                    None => path.to_string_lossy().into_owned(),
                };
                let options = datafusion::prelude::ParquetReadOptions::default();
                self.ctx
                    .register_parquet(stage.name.as_str(), location, options)
                    .await
                    .map_err(df_err)?;
                Some(bytes)
            }
            None => {
                let table = MemTable::try_new(schema, vec![held]).map_err(df_err)?;
                self.ctx
                    .register_table(stage.name.as_str(), Arc::new(table))
                    .map_err(df_err)?;
                None
            }
        };
        self.materialized.lock().await.insert(stage.name.clone());
        Ok(StageMetrics {
            checks,
            quarantined,
            rows_out: Some(rows),
            files_scanned: scan.files,
            bytes_scanned: scan.bytes,
            spilled_bytes,
            literal_bounds,
            ..Default::default()
        })
    }

    /// A checked relation the cluster wrote with its check columns (as `name`):
    /// only the rows failing a check come here, to be counted, quarantined or
    /// quoted exactly as a local run does; the relation is the written rows that
    /// pass every check, without the check columns.
    async fn checked_on_cluster(
        &self,
        stage: &StagePlan,
        name: &str,
        rows: u64,
        mut checker: Checker,
        unchecked: &DataFrame,
    ) -> StageResult<StageMetrics> {
        use datafusion::logical_expr::{not, Expr};
        let written = self.ctx.table(name).await.map_err(df_err)?;
        let column = |n: &str| Expr::Column(datafusion::common::Column::from_name(n));
        let all_pass = datafusion::logical_expr::utils::conjunction(
            (0..stage.checks.len()).map(|i| column(&check_column(i))),
        )
        .ok_or("a checked relation without checks")?;
        let rejected = self
            .collect(
                written
                    .clone()
                    .filter(not(all_pass.clone()))
                    .map_err(df_err)?,
            )
            .await?;
        let mut rejected_rows = 0u64;
        for batch in rejected {
            rejected_rows += batch.num_rows() as u64;
            checker.split(batch)?;
        }
        if let Some(failure) = checker.failure(&stage.name) {
            return Err(StageError::ChecksFailed(failure));
        }
        if !checker.dropped.is_empty() {
            self.quarantine(stage, &checker).await?;
        }
        let columns: Vec<Expr> = unchecked
            .schema()
            .fields()
            .iter()
            .map(|f| column(f.name()))
            .collect();
        let relation = written
            .clone()
            .filter(all_pass)
            .and_then(|d| d.select(columns))
            .map_err(df_err)?;
        self.ctx
            .register_table(stage.name.as_str(), relation.into_view())
            .map_err(df_err)?;
        Ok(StageMetrics {
            checks: checker.counts(),
            quarantined: Some(checker.dropped.len() as u64),
            rows_out: Some(rows.saturating_sub(rejected_rows)),
            ..Default::default()
        })
    }

    /// Registers the Parquet `files` (URL, rows, bytes) the cluster wrote as
    /// relation `name`: exactly those files (a lost task's file is not among them).
    pub(super) async fn register_files(
        &self,
        name: &str,
        files: &[crate::cluster::sink::WrittenFile],
    ) -> StageResult<()> {
        use datafusion::datasource::file_format::parquet::ParquetFormat;
        use datafusion::datasource::listing::{
            ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
        };
        let urls = files
            .iter()
            .map(|f| ListingTableUrl::parse(&f.url))
            .collect::<datafusion::common::Result<Vec<_>>>()
            .map_err(df_err)?;
        let first = urls
            .first()
            .ok_or("the cluster wrote no file for a relation")?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        // Every file has the columns of the one plan that wrote it.
        let schema = options
            .infer_schema(&self.ctx.state(), first)
            .await
            .map_err(df_err)?;
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(schema);
        let table = ListingTable::try_new(config).map_err(df_err)?;
        self.ctx
            .register_table(name, Arc::new(table))
            .map_err(df_err)?;
        Ok(())
    }

    /// Appends the rows a stage's checks dropped to its quarantine table (one commit;
    /// a resumed run that finds the commit in the log does not write them again).
    pub(super) async fn quarantine(&self, stage: &StagePlan, checker: &Checker) -> StageResult<()> {
        let target = stage
            .quarantine
            .clone()
            .ok_or("dropped rows without a quarantine table")?;
        let label = quarantine_label(&stage.name);
        if let Some(&version) = self.committed_earlier.get(&label) {
            let table = delta::open(&target, &self.location(&target)?, Some(version)).await?;
            self.committed(&target, table).await?;
            return Ok(());
        }
        let table = self.table(&target).await?;
        crate::delta::failpoint::writing(&target, &label);
        let table = table
            .write(vec![
                checker.quarantine_batch(self.tag.run_number, &stage.name)
            ])
            .with_save_mode(SaveMode::Append)
            .with_writer_properties(delta::writer_properties())
            .with_commit_properties(self.tag.commit_properties(&label))
            .await;
        let table = match table {
            Ok(table) => table,
            Err(error) => match self.landed(Some(&target), &label).await {
                Some(version) => {
                    delta::open(&target, &self.location(&target)?, Some(version)).await?
                }
                None => return Err(df_err(error)),
            },
        };
        self.committed(&target, table).await?;
        Ok(())
    }

    pub(super) fn spill_writer(
        &self,
        name: &str,
        schema: datafusion::arrow::datatypes::SchemaRef,
    ) -> StageResult<(
        std::path::PathBuf,
        datafusion::parquet::arrow::ArrowWriter<std::fs::File>,
    )> {
        if self.spill_dir.get().is_none() {
            let dir = tempfile::Builder::new()
                .prefix("sqlplan-spill")
                .tempdir()
                .map_err(|e| StageError::LocalFile {
                    doing: "cannot create a spill directory".into(),
                    source: e,
                })?;
            // Two stages spilling at once: the loser's directory is dropped (removed).
            let _ = self.spill_dir.set(dir);
        }
        let dir = self.spill_dir.get().expect("set above");
        let path = dir.path().join(format!("{name}.parquet"));
        let file = std::fs::File::create(&path).map_err(|e| StageError::LocalFile {
            doing: format!("cannot spill to {}", path.display()),
            source: e,
        })?;
        let writer =
            datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None).map_err(df_err)?;
        Ok((path, writer))
    }
}

/// A materialized relation owns compact data. String views (also inside lists)
/// point into the buffers they were decoded or computed from — for a relation of a
/// few rows read out of a large table, whole Parquet pages — so they are copied into
/// buffers of their own (`gc`). Otherwise those buffers stay alive, count against the
/// spill threshold, and travel with every later batch (measured: a 301-row MERGE
/// source built from them took 125 s to merge instead of 0.5 s).
fn compact(batch: RecordBatch) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| has_views(f.data_type()))
    {
        return Ok(batch);
    }
    let columns = batch.columns().iter().map(compact_array).collect();
    RecordBatch::try_new(batch.schema(), columns)
}

fn has_views(t: &DataType) -> bool {
    match t {
        DataType::Utf8View | DataType::BinaryView => true,
        DataType::List(f) | DataType::LargeList(f) => has_views(f.data_type()),
        _ => false,
    }
}

fn compact_array(a: &ArrayRef) -> ArrayRef {
    use datafusion::arrow::array::{Array, AsArray, ListArray};
    use datafusion::arrow::buffer::OffsetBuffer;
    match a.data_type() {
        DataType::Utf8View => Arc::new(a.as_string_view().gc()),
        DataType::BinaryView => Arc::new(a.as_binary_view().gc()),
        DataType::List(field) if has_views(field.data_type()) => {
            let list = a.as_list::<i32>();
            let offsets = list.offsets();
            let first = offsets[0];
            let last = offsets[offsets.len() - 1];
            let values = list.values().slice(first as usize, (last - first) as usize);
            let offsets = OffsetBuffer::new(offsets.iter().map(|o| o - first).collect());
            Arc::new(ListArray::new(
                field.clone(),
                offsets,
                compact_array(&values),
                list.nulls().cloned(),
            ))
        }
        _ => a.clone(),
    }
}
