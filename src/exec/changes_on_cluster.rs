//! MERGE and DELETE on a table with vectors, on a cluster: the candidates as
//! they cross to the executors, the row counts the log does not give, and
//! DELETE's pass (every live row of the kept files, the predicate tested on the
//! executors, only positions back). What they changed is committed by
//! `changes::commit_changes`, as locally.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Schema;
use datafusion::logical_expr::Expr;
use deltalake::DeltaTable;

use super::changes::{delete_operation, with_vectors, Candidate};
use super::context::{df_err, Executor, StageResult};
use crate::delta::scan::keys::Candidate as Shipped;
use crate::delta::writer::FileWriter;
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
        let n = self.ctx.state().config().target_partitions().max(1);
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
        let per_group = shipped.len().div_ceil(n).max(1);
        shipped.chunks(per_group).map(<[Shipped]>::to_vec).collect()
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
        use crate::delta::scan::keys::{KeyPassFiles, KeyPassSpec};
        use datafusion::arrow::datatypes::{UInt32Type, UInt64Type};
        use datafusion::logical_expr::col;
        let partitions = table
            .snapshot()
            .map_err(df_err)?
            .metadata()
            .partition_columns()
            .to_vec();
        let refs = condition
            .as_ref()
            .map(|c| c.column_refs())
            .unwrap_or_default();
        let spec = KeyPassSpec {
            table_url: table.table_url().clone(),
            source_files: Vec::new(),
            source_keys: Vec::new(),
            split_keys: Vec::new(),
            keys: Vec::new(),
            partitions,
            referenced: schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| refs.iter().any(|r| &r.name == n))
                .collect(),
        };
        let types = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        let pass = KeyPassFiles {
            schema: spec.matched_schema(&types).map_err(df_err)?,
            spec: Arc::new(spec),
            groups: self.ship(&candidates, |i| kept[i]),
        };
        let rows = self.ctx.read_table(Arc::new(pass)).map_err(df_err)?;
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
        let writer = FileWriter::for_table(&table, None)?;
        let w = self
            .commit_changes(
                stage,
                target,
                table,
                &candidates,
                deleted,
                writer,
                Vec::new(),
                rewrite_above,
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
