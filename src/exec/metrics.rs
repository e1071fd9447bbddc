//! What a stage's scans and commits measured: files and bytes scanned from the
//! physical plan's metrics, counts from delta-rs's commit metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;

use super::context::{df_err, StageResult};

#[derive(Default)]
pub(super) struct ScanStats {
    pub(super) files: Option<u64>,
    pub(super) bytes: Option<u64>,
}

/// Executes a query keeping its physical plan, whose scan nodes carry the metrics:
/// files chosen from the Delta log (`count_files_scanned`) and Parquet bytes read.
pub(super) async fn collect_with_scan_metrics(
    plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    task: Arc<datafusion::execution::TaskContext>,
) -> StageResult<(Vec<RecordBatch>, ScanStats)> {
    let batches = datafusion::physical_plan::collect(plan.clone(), task)
        .await
        .map_err(df_err)?;
    Ok((batches, scan_stats(&plan)))
}

/// `SQLPLAN_PROFILE=<stage>[,<stage>…]` (or `all`): prints a materialized stage's
/// executed physical plan with each operator's metrics (rows, time, bytes) on
/// standard error, to see where a slow stage spends its time.
pub(super) fn profile(stage: &str, plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) {
    let Ok(wanted) = std::env::var("SQLPLAN_PROFILE") else {
        return;
    };
    if wanted
        .split(',')
        .any(|w| w.trim() == stage || w.trim() == "all")
    {
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
            plan.as_ref(),
        )
        .indent(true);
        eprintln!("sqlplan: profile of `{stage}`:\n{shown}");
    }
}

/// Scan metrics of an executed physical plan: files chosen from the Delta log
/// (`count_files_scanned` of delta-rs's scan, or the files of sqlplan's own scan of
/// a table with deletion vectors) and Parquet bytes read.
pub(super) fn scan_stats(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> ScanStats {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    let mut stats = ScanStats::default();
    let _ = plan.apply(|node| {
        if let Some(m) = node.metrics() {
            if let Some(files) = m.sum_by_name("count_files_scanned") {
                *stats.files.get_or_insert(0) += files.as_usize() as u64;
            }
            if node.name() == "DataSourceExec" || node.name() == "DeltaFilesExec" {
                if let Some(bytes) = m.sum_by_name("bytes_scanned") {
                    *stats.bytes.get_or_insert(0) += bytes.as_usize() as u64;
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    // Parquet scans not under a delta-rs scan (which counts its own files).
    fn own_scans(
        node: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        files: &mut Option<u64>,
    ) {
        if node
            .metrics()
            .is_some_and(|m| m.sum_by_name("count_files_scanned").is_some())
        {
            return;
        }
        if let Some(scan) = node.downcast_ref::<crate::delta::scan::DeltaFilesExec>() {
            *files.get_or_insert(0) += scan.file_count() as u64;
        }
        if let Some(config) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|d| d.data_source().downcast_ref::<FileScanConfig>())
        {
            let n: usize = config.file_groups.iter().map(|g| g.len()).sum();
            *files.get_or_insert(0) += n as u64;
        }
        for child in node.children() {
            own_scans(child, files);
        }
    }
    own_scans(plan, &mut stats.files);
    stats
}

pub(super) fn metric(m: &BTreeMap<String, serde_json::Value>, key: &str) -> Option<u64> {
    m.get(key).and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })
}
