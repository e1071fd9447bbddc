//! Running a plan's queries on an Apache Ballista cluster (`run --engine
//! df://HOST:PORT`): the same Plan, the same stages in the same order, with each
//! query stage's logical plan sent to the scheduler, which cuts it at shuffles and
//! runs the pieces on executors. Results stream back to the sqlplan process, which
//! keeps everything that changes a table: MERGE and DELETE apply their changes and
//! every commit is made here, exactly as in a local run.
//!
//! What crosses to the cluster: Delta tables as `DeltaFiles` (the snapshot's files
//! with their vector descriptors; executors read and apply the vectors), and
//! materialized relations as Parquet files in a scratch folder beside the warehouse
//! (`_sqlplan/scratch/…`, removed when the run ends), which every executor can read.
//! Executors find object stores from the URLs alone (`delta::stores`), with the
//! credentials of their own environment.

pub mod codec;
pub mod serve;

use std::sync::Arc;

use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;

use crate::delta::error::{Doing as _, Error, Result};
use crate::delta::stores;

/// The largest plan message the client sends or takes (a stage plan carries its
/// tables' file lists): 256 MiB, where Ballista's default is 16 MiB.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// A connection to a cluster for one run.
pub struct Remote {
    state: SessionState,
    /// Where this run's materialized relations go (`…/_sqlplan/scratch/<run>/`).
    pub scratch: url::Url,
}

impl Remote {
    /// A session whose physical planning submits jobs to the scheduler at `engine`
    /// (`df://host:port`), built from the run's own session (its settings and
    /// functions).
    pub fn new(engine: &str, local: SessionState, scratch: url::Url) -> Result<Remote> {
        let scheduler = scheduler_url(engine)?;
        let mut config = local.config().clone();
        // Ballista's scheduler re-plans stages after their inputs ran, reordering
        // joins whose dynamic filters were already built (DataFusion refuses:
        // "Cannot swap HashJoinExec inputs after dynamic filters have been
        // constructed"). Scans still get the literal key bounds.
        config
            .options_mut()
            .optimizer
            .enable_dynamic_filter_pushdown = false;
        let config = config
            .with_ballista_logical_extension_codec(Arc::new(codec::LogicalCodec::default()))
            .with_ballista_physical_extension_codec(Arc::new(codec::PhysicalCodec::default()))
            .with_ballista_grpc_client_max_message_size(MAX_MESSAGE_BYTES)
            // Ballista 55's adaptive planner (on by default) looped without end
            // on a union over an empty relation (23,000 stages for `new_latest`)
            // and gave wrong answers elsewhere; the static planner gives the answers
            // of a local run.
            .with_ballista_adaptive_query_planner(false);
        let state =
            datafusion::execution::session_state::SessionStateBuilder::new_from_existing(local)
                .with_config(config)
                .build()
                .upgrade_for_ballista(scheduler)
                .doing(|| format!("cluster {engine}"))?;
        Ok(Remote { state, scratch })
    }

    /// The physical plan that runs `plan` on the cluster (its results stream back
    /// here), and the context to execute it in.
    pub async fn physical(
        &self,
        plan: &LogicalPlan,
    ) -> datafusion::common::Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>)> {
        let optimized = self.state.optimize(plan)?;
        // Ballista plans an empty relation as a relation without columns; an empty
        // result keeps its columns when planned here.
        let physical = if matches!(optimized, LogicalPlan::EmptyRelation(_)) {
            use datafusion::physical_planner::PhysicalPlanner;
            datafusion::physical_planner::DefaultPhysicalPlanner::default()
                .create_physical_plan(&optimized, &self.state)
                .await?
        } else {
            self.state
                .query_planner()
                .create_physical_plan(&optimized, &self.state)
                .await?
        };
        Ok((physical, Arc::new(TaskContext::from(&self.state))))
    }

    /// Copies a local Parquet file into the scratch folder, where every executor can
    /// read it; returns its folder's URL (registered as the relation).
    pub async fn publish(&self, name: &str, file: &std::path::Path) -> Result<url::Url> {
        let folder = self
            .scratch
            .join(&format!("{name}/"))
            .doing(|| format!("scratch folder for `{name}`"))?;
        let (store, prefix) = stores::store_for(&folder)?;
        let target = prefix.clone().join("part-0.parquet");
        let mut writer =
            deltalake::logstore::object_store::buffered::BufWriter::new(store, target.clone());
        let mut local = tokio::fs::File::open(file)
            .await
            .doing(|| file.display().to_string())?;
        tokio::io::copy(&mut local, &mut writer)
            .await
            .doing(|| format!("copying `{name}` to {folder}"))?;
        tokio::io::AsyncWriteExt::shutdown(&mut writer)
            .await
            .doing(|| format!("copying `{name}` to {folder}"))?;
        Ok(folder)
    }

    /// Removes this run's scratch folder.
    pub async fn clean(&self) -> Result<()> {
        crate::delta::remove_all(&self.scratch).await
    }
}

/// `df://host:port` → the scheduler's gRPC URL.
pub fn scheduler_url(engine: &str) -> Result<String> {
    let url = url::Url::parse(engine).doing(|| format!("--engine `{engine}`"))?;
    if url.scheme() != "df" {
        return Err(Error::Location(format!(
            "--engine `{engine}`: expected df://HOST:PORT (a Ballista scheduler)"
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| Error::Location(format!("--engine `{engine}`: no host")))?;
    Ok(format!("http://{host}:{}", url.port().unwrap_or(50050)))
}
