//! What a scan will read, from the Delta log alone: the files (and their bytes) that
//! remain after the pruning the log can decide — literal predicates on partition
//! columns, and the files' column statistics. delta-rs plans the scan exactly as the
//! run will, with the scan's filters, and its file list is counted; nothing is read
//! but the log.
//!
//! A bound only known at run time — a materialized relation's keys, a MERGE
//! source's key range — can only remove files, so such a scan is a range: from no
//! file to the files the static filters leave.

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

pub use crate::plan::Estimate;

/// Estimates for one plan: a pipeline often scans a table several times with the
/// same filters (every file, or the same partition), and each is planned once.
pub struct Estimator<'a> {
    ctx: &'a SessionContext,
    known: std::collections::BTreeMap<(String, String), Estimate>,
}

impl<'a> Estimator<'a> {
    pub fn new(ctx: &'a SessionContext) -> Self {
        Estimator {
            ctx,
            known: Default::default(),
        }
    }

    /// What a scan of `table` with `filters` reads (nothing when the table cannot be
    /// planned, e.g. it does not exist yet).
    pub async fn scan(&mut self, table: &str, filters: &[Expr]) -> Estimate {
        let key = (
            table.to_string(),
            filters
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(" AND "),
        );
        if let Some(e) = self.known.get(&key) {
            return *e;
        }
        let e = scan(self.ctx, table, filters).await.unwrap_or_default();
        self.known.insert(key, e);
        e
    }
}

/// The files and bytes a scan of `table` with `filters` reads (exact), or None when
/// the table does not exist yet (the run creates it: nothing to read).
async fn scan(ctx: &SessionContext, table: &str, filters: &[Expr]) -> Option<Estimate> {
    let provider = ctx.table_provider(table).await.ok()?;
    let state = ctx.state();
    // Filters the provider cannot use would be applied above the scan: drop them,
    // as DataFusion's planner does.
    let usable: Vec<&Expr> = filters.iter().collect();
    let pushed = provider.supports_filters_pushdown(&usable).ok()?;
    let filters: Vec<Expr> = filters
        .iter()
        .zip(pushed)
        .filter(|(_, p)| *p != datafusion::logical_expr::TableProviderFilterPushDown::Unsupported)
        .map(|(f, _)| f.clone())
        .collect();
    let plan = provider.scan(&state, None, &filters, None).await.ok()?;
    let (files, bytes) = files_of(&plan);
    Some(Estimate::exact(files, bytes))
}

/// Files and bytes of every Parquet scan in a physical plan (a file split into
/// ranges counts once).
fn files_of(plan: &Arc<dyn ExecutionPlan>) -> (u64, u64) {
    let mut seen = std::collections::BTreeMap::new();
    let _ = plan.apply(|node| {
        if let Some(config) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|d| d.data_source().downcast_ref::<FileScanConfig>())
        {
            for file in config.file_groups.iter().flat_map(|g| g.iter()) {
                seen.insert(file.object_meta.location.to_string(), file.object_meta.size);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    (seen.len() as u64, seen.values().sum())
}
