//! MERGE and DELETE on a table with vectors, on a cluster: the candidates as
//! they cross to the executors, the row counts the log does not give, and
//! DELETE's pass (every live row of the kept files, the predicate tested on the
//! executors, only positions back). What they changed is committed by
//! `changes::commit_changes`, as locally.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Schema;
use datafusion::logical_expr::Expr;
use deltalake::DeltaTable;

use super::changes::{delete_operation, with_vectors, Candidate, Changes};
use super::context::{df_err, Executor, StageResult};
use crate::delta::scan::keys::{Candidate as Shipped, KeyPassFiles, KeyPassSpec};
use crate::delta::vectors::VectorFile;
use crate::plan::StagePlan;
use crate::report::StageMetrics;

impl Executor {
    /// The candidates `which` keeps, as they cross to a cluster, in as many groups
    /// as the session's target partitions: a key pass task per group.
    pub(super) fn ship(
        &self,
        candidates: &[Candidate],
        which: impl Fn(usize) -> bool,
    ) -> Vec<Vec<Shipped>> {
        let shipped: Vec<Shipped> = candidates
            .iter()
            .enumerate()
            .filter(|(i, _)| which(*i))
            .map(|(i, c)| Shipped {
                index: i as u32,
                path: c.path.clone(),
                size: c.view.size().max(0) as u64,
                rows: c.view.num_records(),
                partition: c.partition.clone(),
                vector: c.view.deletion_vector_descriptor(),
            })
            .collect();
        self.in_groups(shipped)
    }

    /// `shipped` in as many groups as the session's target partitions.
    fn in_groups(&self, shipped: Vec<Shipped>) -> Vec<Vec<Shipped>> {
        let n = self.ctx.state().config().target_partitions().max(1);
        let per_group = shipped.len().div_ceil(n).max(1);
        shipped.chunks(per_group).map(<[Shipped]>::to_vec).collect()
    }

    /// Every live row of the files in `groups` (a task a group), read on the
    /// executors: the `referenced` columns (partition values from the log), the
    /// file and the position.
    fn live_rows(
        &self,
        table: &DeltaTable,
        schema: &Schema,
        referenced: Vec<String>,
        groups: Vec<Vec<Shipped>>,
    ) -> StageResult<datafusion::prelude::DataFrame> {
        let snapshot = table.snapshot().map_err(df_err)?;
        let spec = KeyPassSpec {
            table_url: table.table_url().clone(),
            source_files: Vec::new(),
            source_keys: Vec::new(),
            split_keys: Vec::new(),
            keys: Vec::new(),
            partitions: snapshot.metadata().partition_columns().to_vec(),
            referenced,
        };
        let types = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        let pass = KeyPassFiles {
            schema: spec.matched_schema(&types).map_err(df_err)?,
            spec: Arc::new(spec),
            groups,
        };
        self.ctx.read_table(Arc::new(pass)).map_err(df_err)
    }

    /// Rewrites on the executors: each task reads a group of the files to
    /// rewrite, leaves out the rows `rewrites` names (a file's old and new
    /// deleted positions, shipped as vectors in one scratch file) and writes the
    /// rest as new files of the table, in `sort_by` order; only their Add actions
    /// come back. No row of a rewritten file passes through this process.
    pub(super) async fn rewrite_on_cluster(
        &self,
        remote: &crate::cluster::Remote,
        table: &DeltaTable,
        candidates: &[Candidate],
        rewrites: Vec<(usize, BTreeSet<u64>)>,
        sort_by: Vec<String>,
    ) -> StageResult<Vec<deltalake::kernel::Add>> {
        use crate::cluster::sink::DataWriteSpec;
        use datafusion::common::Column;
        use datafusion::logical_expr::{cast, Expr};
        if rewrites.is_empty() {
            return Ok(Vec::new());
        }
        let mut vectors = VectorFile::default();
        for (i, gone) in &rewrites {
            vectors.add(&candidates[*i].path, gone.iter().copied());
        }
        let name = format!("rewrite-{}.bin", uuid::Uuid::new_v4());
        let at = remote
            .scratch
            .join(&name)
            .map_err(crate::delta::Error::from)?;
        let (bytes, descriptors) = vectors.encode_at(&at)?;
        remote.put(&name, bytes).await?;
        let descriptors: HashMap<String, _> = descriptors.into_iter().collect();
        let shipped = rewrites
            .iter()
            .map(|(i, _)| {
                let c = &candidates[*i];
                Ok(Shipped {
                    index: *i as u32,
                    path: c.path.clone(),
                    size: c.view.size().max(0) as u64,
                    rows: Some(c.rows),
                    partition: c.partition.clone(),
                    vector: Some(
                        descriptors
                            .get(&c.path)
                            .cloned()
                            .ok_or("a rewrite's vector went missing")?,
                    ),
                })
            })
            .collect::<StageResult<Vec<_>>>()?;
        let snapshot = table.snapshot().map_err(df_err)?;
        let schema = snapshot.snapshot().arrow_schema();
        let every = schema.fields().iter().map(|f| f.name().clone()).collect();
        let live = self.live_rows(table, &schema, every, self.in_groups(shipped))?;
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                let column = Expr::Column(Column::from_name(f.name()));
                cast(column, f.data_type().clone()).alias(f.name())
            })
            .collect::<Vec<_>>();
        let rows = live.select(columns).map_err(df_err)?;
        let spec = DataWriteSpec {
            as_read: true,
            ..DataWriteSpec::for_table(table, sort_by)?
        };
        let (adds, _) = remote.write_data(rows.logical_plan(), &spec).await?;
        Ok(adds)
    }

    /// The physical row count of each candidate with deleted positions whose log
    /// entry does not say (a local key pass counts them as it reads).
    pub(super) async fn count_rows(
        &self,
        table: &DeltaTable,
        candidates: &mut [Candidate],
        deleted: &BTreeMap<u32, Vec<u64>>,
    ) -> StageResult<()> {
        let store = table.object_store();
        for &i in deleted.keys() {
            let c = &mut candidates[i as usize];
            if c.view.num_records().is_none() {
                let location =
                    crate::delta::partition::file_path(&deltalake::Path::default(), &c.path)?;
                c.rows = crate::delta::vectors::parquet_row_count(
                    &store,
                    &location,
                    c.view.size().max(0) as u64,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// DELETE on a table with vectors on a cluster: the files the partition pass
    /// `kept` are read on the executors (every live row, with the columns the
    /// predicate reads), the predicate is tested there, and only the positions it
    /// holds for come here, for the vectors and the commit.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn delete_on_cluster(
        &self,
        stage: &StagePlan,
        target: &str,
        table: DeltaTable,
        condition: Option<Expr>,
        mut candidates: Vec<Candidate>,
        kept: Vec<bool>,
        schema: &Schema,
        rewrite_above: f64,
    ) -> StageResult<StageMetrics> {
        use crate::delta::keys::{FILE, POSITION};
        use datafusion::arrow::datatypes::{UInt32Type, UInt64Type};
        use datafusion::logical_expr::col;
        let refs = condition
            .as_ref()
            .map(|c| c.column_refs())
            .unwrap_or_default();
        let referenced = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| refs.iter().any(|r| &r.name == n))
            .collect();
        let groups = self.ship(&candidates, |i| kept[i]);
        let rows = self.live_rows(&table, schema, referenced, groups)?;
        let hit = match condition {
            Some(c) => rows.filter(c).map_err(df_err)?,
            None => rows,
        };
        let positions = self
            .collect(hit.select(vec![col(FILE), col(POSITION)]).map_err(df_err)?)
            .await?;
        let mut deleted: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let mut rows_deleted = 0u64;
        for b in &positions {
            let file = b.column(0).as_primitive::<UInt32Type>();
            let position = b.column(1).as_primitive::<UInt64Type>();
            for i in 0..b.num_rows() {
                deleted
                    .entry(file.value(i))
                    .or_default()
                    .push(position.value(i));
                rows_deleted += 1;
            }
        }
        let changed: Vec<usize> = deleted.keys().map(|&i| i as usize).collect();
        with_vectors(&table, &mut candidates, &changed).await?;
        self.count_rows(&table, &mut candidates, &deleted).await?;
        let changes = Changes::deleting(&table, deleted, rewrite_above)?;
        let w = self
            .commit_changes(
                stage,
                target,
                table,
                &candidates,
                changes,
                delete_operation(stage),
            )
            .await?;
        Ok(StageMetrics {
            rows_deleted: Some(rows_deleted),
            files_scanned: Some(kept.iter().filter(|k| **k).count() as u64),
            ..w.metrics()
        })
    }
}
