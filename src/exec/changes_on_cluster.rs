//! MERGE and DELETE on a table with vectors, on a cluster: the candidates as
//! they cross to the executors, DELETE's pass (every live row of the kept
//! files, the predicate tested on the executors, the positions written to the
//! scratch folder), and what the positions delete: counted by file on the
//! cluster, each file's fate decided here from the counts and the log, the
//! vectors and the rewrites written by the executors. Only counts, vector
//! descriptors and Add actions come here; `changes::commit_changes` commits
//! them, as locally.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Int64Type, Schema, UInt32Type};
use datafusion::logical_expr::{col, lit, Expr};
use datafusion::prelude::DataFrame;
use deltalake::kernel::DeletionVectorDescriptor;
use deltalake::DeltaTable;

use super::changes::{delete_operation, Candidate, Changes, Decided, Deleted, Fate};
use super::context::{df_err, Executor, StageResult};
use crate::cluster::sink::{Losing, VectorWriteSpec};
use crate::delta::keys::{FILE, POSITION};
use crate::delta::scan::keys::{Candidate as Shipped, KeyPassFiles, KeyPassSpec};
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
    pub(super) fn live_rows(
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
    /// rewrite, leaves out the rows their `rewrites` vectors delete (a file's
    /// old and new deleted positions, written to the scratch folder by the
    /// executors) and writes the rest as new files of the table, in `sort_by`
    /// order; only their Add actions come back. No row of a rewritten file
    /// passes through this process.
    async fn rewrite_on_cluster(
        &self,
        remote: &crate::cluster::Remote,
        table: &DeltaTable,
        candidates: &[Candidate],
        rewrites: Vec<(usize, DeletionVectorDescriptor)>,
        sort_by: Vec<String>,
    ) -> StageResult<Vec<deltalake::kernel::Add>> {
        use crate::cluster::sink::DataWriteSpec;
        use datafusion::common::Column;
        use datafusion::logical_expr::{cast, Expr};
        if rewrites.is_empty() {
            return Ok(Vec::new());
        }
        let shipped = rewrites
            .into_iter()
            .map(|(i, vector)| {
                let c = &candidates[i];
                Shipped {
                    index: i as u32,
                    path: c.path.clone(),
                    size: c.view.size().max(0) as u64,
                    rows: Some(c.rows),
                    partition: c.partition.clone(),
                    vector: Some(vector),
                }
            })
            .collect();
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

    /// `df` written to the scratch folder where it is computed, and read from
    /// there, with its rows; `None` for a plan that is empty by plan.
    pub(super) async fn in_scratch(
        &self,
        remote: &crate::cluster::Remote,
        name: &str,
        df: DataFrame,
    ) -> StageResult<Option<(DataFrame, u64)>> {
        let Some(written) = remote.write(name, df.logical_plan()).await? else {
            return Ok(None);
        };
        self.register_files(name, &written.files).await?;
        let rows = written.files.iter().map(|f| f.rows).sum();
        Ok(Some((self.ctx.table(name).await.map_err(df_err)?, rows)))
    }

    /// How many rows `positions` (a file index and a position a row, and the
    /// clause that deletes it in column `clause`, if any) deletes, by clause
    /// and file: one small aggregate on the cluster, a row per changed file
    /// and clause.
    pub(super) async fn count_positions(
        &self,
        positions: &DataFrame,
        clause: Option<&str>,
    ) -> StageResult<BTreeMap<(u32, u32), u64>> {
        use datafusion::functions_aggregate::expr_fn::count;
        let mut by = vec![col(FILE)];
        by.extend(clause.map(col));
        let counts = positions
            .clone()
            .aggregate(by, vec![count(lit(1)).alias("n")])
            .map_err(df_err)?;
        let mut out = BTreeMap::new();
        for b in self.collect(counts).await? {
            let file = b.column(0).as_primitive::<UInt32Type>();
            let n = b.column(b.num_columns() - 1).as_primitive::<Int64Type>();
            let clause = clause.map(|_| b.column(1).as_primitive::<UInt32Type>());
            for r in 0..b.num_rows() {
                let c = clause.map_or(0, |c| c.value(r));
                out.insert((c, file.value(r)), n.value(r).max(0) as u64);
            }
        }
        Ok(out)
    }

    /// What `positions` (a file index and a position a row, in the scratch
    /// folder) deletes, decided and written on the cluster: each changed file's
    /// fate from `deleted` (candidate index → rows it loses) and the log (its
    /// rows and its vector's cardinality), without reading a vector here; the
    /// vectors written by the executors; the rewritten files' rows written by
    /// them too, in `sort_by` order.
    pub(super) async fn decide_on_cluster(
        &self,
        table: &DeltaTable,
        candidates: &mut [Candidate],
        positions: &DataFrame,
        deleted: BTreeMap<u32, u64>,
        rewrite_above: f64,
        sort_by: Vec<String>,
    ) -> StageResult<Decided> {
        let remote = self
            .remote
            .as_ref()
            .ok_or("changes on the cluster without a cluster")?;
        self.count_rows(table, candidates, deleted.keys()).await?;
        let mut decided = Decided::default();
        let mut losing = Vec::new();
        for (&i, &n) in &deleted {
            let c = &candidates[i as usize];
            let vector = c.view.deletion_vector_descriptor();
            let already = vector.as_ref().map_or(0, |d| d.cardinality.max(0) as u64);
            let live = (c.rows as u64)
                .checked_sub(already)
                .filter(|&live| n <= live)
                .ok_or_else(|| {
                    crate::delta::Error::table(format!(
                        "{} loses {n} rows, more than the {} of its {} rows its vector leaves",
                        c.path,
                        c.rows as u64 - already.min(c.rows as u64),
                        c.rows
                    ))
                })?;
            let fate = Fate::of(n, live, rewrite_above);
            decided.fates.insert(i, (fate, n));
            if fate != Fate::Remove {
                losing.push(Losing {
                    index: i,
                    path: c.path.clone(),
                    rows: c.rows as u64,
                    vector,
                    deleted: n,
                    rewrite: fate == Fate::Rewrite,
                });
            }
        }
        if losing.is_empty() {
            return Ok(decided);
        }
        let spec = VectorWriteSpec {
            table_url: table.table_url().clone(),
            scratch: remote.scratch.clone(),
            files: losing,
        };
        let written = remote
            .write_vectors(positions.logical_plan(), &spec)
            .await?;
        let mut rewrites = Vec::new();
        let mut vector_files = BTreeMap::new();
        for w in written {
            match decided.fates.get(&w.index) {
                Some((Fate::Vector, _)) => {
                    vector_files.insert(w.descriptor.path_or_inline_dv.clone(), w.file_bytes);
                    decided.vectors.insert(w.index, w.descriptor);
                }
                Some((Fate::Rewrite, _)) => rewrites.push((w.index as usize, w.descriptor)),
                _ => return Err("a vector for a file that does not get one".into()),
            }
        }
        if decided.vectors.len() + rewrites.len() != spec.files.len() {
            return Err("a file that loses rows got no vector from the cluster".into());
        }
        decided.vector_bytes = vector_files.values().sum();
        decided.rewritten = self
            .rewrite_on_cluster(remote, table, candidates, rewrites, sort_by)
            .await?;
        Ok(decided)
    }

    /// The physical row count of each candidate with deleted positions whose log
    /// entry does not say (a local key pass counts them as it reads).
    async fn count_rows(
        &self,
        table: &DeltaTable,
        candidates: &mut [Candidate],
        changed: impl Iterator<Item = &u32>,
    ) -> StageResult<()> {
        let store = table.object_store();
        for &i in changed {
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
    /// predicate reads), the predicate is tested there, and the positions it
    /// holds for are written to the scratch folder; the vectors and rewrites are
    /// written from them there, and only counts and descriptors come here.
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
        let remote = self
            .remote
            .as_ref()
            .ok_or("a DELETE on the cluster without a cluster")?;
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
        let name = format!("{}__deleted", stage.name);
        let positions = hit.select(vec![col(FILE), col(POSITION)]).map_err(df_err)?;
        let decided = match self.in_scratch(remote, &name, positions).await? {
            Some((positions, _)) => {
                let counts = self.count_positions(&positions, None).await?;
                let deleted = counts.into_iter().map(|((_, f), n)| (f, n)).collect();
                self.decide_on_cluster(
                    &table,
                    &mut candidates,
                    &positions,
                    deleted,
                    rewrite_above,
                    Vec::new(),
                )
                .await?
            }
            None => Decided::default(),
        };
        let rows_deleted = decided.rows();
        let deleted = Deleted::Decided(decided);
        let changes = Changes::deleting(&table, deleted)?;
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
