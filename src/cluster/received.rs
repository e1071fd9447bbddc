//! What the sqlplan process receives from the cluster: every result stream of a
//! cluster plan passes through a `Received` node that counts its rows and bytes
//! (the Arrow data of the rows, not the buffers they were decoded into), so a run
//! report can say how much of the work came back to the one process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

/// Rows and bytes received from the cluster in one run.
#[derive(Debug, Default)]
pub struct Counter {
    rows: AtomicU64,
    bytes: AtomicU64,
}

impl Counter {
    /// (rows, bytes) so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// A cluster plan whose results are counted as they arrive.
#[derive(Debug)]
pub struct Received {
    input: Arc<dyn ExecutionPlan>,
    counter: Arc<Counter>,
}

impl Received {
    pub fn new(input: Arc<dyn ExecutionPlan>, counter: Arc<Counter>) -> Received {
        Received { input, counter }
    }
}

impl DisplayAs for Received {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Received")
    }
}

impl ExecutionPlan for Received {
    fn name(&self) -> &str {
        "Received"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("Received has one child".into()))?;
        Ok(Arc::new(Received::new(input, self.counter.clone())))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context)?;
        let schema = stream.schema();
        let counter = self.counter.clone();
        let counted = stream.inspect(move |batch| {
            if let Ok(b) = batch {
                counter
                    .rows
                    .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                counter.bytes.fetch_add(bytes_of(b), Ordering::Relaxed);
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, counted)))
    }
}

/// The bytes of a batch's rows: a batch decoded from a message may be a slice of
/// one large buffer, whose whole size `get_array_memory_size` would count.
fn bytes_of(batch: &datafusion::arrow::array::RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0) as u64)
        .sum()
}
