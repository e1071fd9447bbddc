//! What a stage's scans and commits measured: files and bytes scanned from the
//! physical plan's metrics, counts from delta-rs's commit metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::DataFrame;

use super::context::{df_err, StageResult};

#[derive(Default)]
pub(super) struct ScanStats {
    pub(super) files: Option<u64>,
    pub(super) bytes: Option<u64>,
}

/// Executes a query keeping its physical plan, whose scan nodes carry the metrics:
/// files chosen from the Delta log (`count_files_scanned`) and Parquet bytes read.
pub(super) async fn collect_with_scan_metrics(
    df: DataFrame,
) -> StageResult<(Vec<RecordBatch>, ScanStats)> {
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await.map_err(df_err)?;
    let batches = datafusion::physical_plan::collect(plan.clone(), task)
        .await
        .map_err(df_err)?;
    Ok((batches, scan_stats(&plan)))
}

/// Scan metrics of an executed physical plan: files chosen from the Delta log
/// (`count_files_scanned`) and Parquet bytes read.
pub(super) fn scan_stats(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> ScanStats {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut stats = ScanStats::default();
    let _ = plan.apply(|node| {
        if let Some(m) = node.metrics() {
            if let Some(files) = m.sum_by_name("count_files_scanned") {
                *stats.files.get_or_insert(0) += files.as_usize() as u64;
            }
            if node.name() == "DataSourceExec" {
                if let Some(bytes) = m.sum_by_name("bytes_scanned") {
                    *stats.bytes.get_or_insert(0) += bytes.as_usize() as u64;
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    stats
}
pub(super) fn metric(m: &BTreeMap<String, serde_json::Value>, key: &str) -> Option<u64> {
    m.get(key).and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })
}
