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
mod data;
mod joins;
pub mod received;
pub mod serve;
pub mod sink;
mod vectors;

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
    /// Rows and bytes this process received from the cluster.
    pub received: Arc<received::Counter>,
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
        // Broadcast (CollectLeft) hash joins stay where they are right: the
        // scheduler partitions those whose build rows depend on every probe
        // task (LEFT, FULL, semi and anti joins; `joins.rs`).
        Ok(Remote {
            state,
            scratch,
            received: Arc::default(),
        })
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
        let physical = Arc::new(received::Received::new(physical, self.received.clone()));
        Ok((physical, Arc::new(TaskContext::from(&self.state))))
    }

    /// Where relation `name`'s files go.
    fn folder(&self, name: &str) -> Result<url::Url> {
        self.scratch
            .join(&format!("{name}/"))
            .doing(|| format!("scratch folder for `{name}`"))
    }

    /// Runs `plan` on the cluster with its rows written to relation `name`'s
    /// scratch folder where they are computed: a file per task of its last stage.
    /// This process receives only the files' names, rows and bytes. `None` for a
    /// plan that optimizes to an empty relation (Ballista would plan it without
    /// columns): the caller writes that one.
    pub async fn write(&self, name: &str, plan: &LogicalPlan) -> Result<Option<Written>> {
        self.write_split(name, plan, Vec::new()).await
    }

    /// `write`, each task's rows split into files by the values of `split_by`.
    pub async fn write_split(
        &self,
        name: &str,
        plan: &LogicalPlan,
        split_by: Vec<String>,
    ) -> Result<Option<Written>> {
        if matches!(self.state.optimize(plan)?, LogicalPlan::EmptyRelation(_)) {
            return Ok(None);
        }
        let folder = self.folder(name)?;
        let write = sink::Sink::scratch(plan.clone(), &folder, split_by)?;
        let (physical, task) = self.physical(&write).await?;
        let batches = datafusion::physical_plan::collect(physical.clone(), task)
            .await
            .doing(|| format!("writing `{name}` on the cluster"))?;
        Ok(Some(Written {
            files: sink::written(&batches)?,
            plan: physical,
        }))
    }

    /// Runs `plan` (the table's columns) on the cluster with its rows written as
    /// new data files of the table `spec` names, each task its own; returns their
    /// Add actions (nothing is committed) and the rows written.
    pub async fn write_data(
        &self,
        plan: &LogicalPlan,
        spec: &sink::DataWriteSpec,
    ) -> Result<(Vec<deltalake::kernel::Add>, u64)> {
        let write = sink::Sink::data(plan.clone(), spec)?;
        let (physical, task) = self.physical(&write).await?;
        let batches = datafusion::physical_plan::collect(physical, task)
            .await
            .doing(|| format!("writing new files of {} on the cluster", spec.table_url))?;
        Ok(sink::added(&batches)?)
    }

    /// Runs `positions` (a file index and a position a row) on the cluster, each
    /// file's positions in one task, which writes the vectors of the files
    /// `spec` names; returns their descriptors (nothing is committed).
    pub async fn write_vectors(
        &self,
        positions: &LogicalPlan,
        spec: &sink::VectorWriteSpec,
    ) -> Result<Vec<sink::WrittenVector>> {
        let write = sink::Sink::vectors(positions.clone(), spec)?;
        let (physical, task) = self.physical(&write).await?;
        let batches = datafusion::physical_plan::collect(physical, task)
            .await
            .doing(|| {
                format!(
                    "writing deletion vectors of {} on the cluster",
                    spec.table_url
                )
            })?;
        Ok(sink::written_vectors(&batches)?)
    }

    /// Copies a local Parquet file into the scratch folder, where every executor can
    /// read it; returns its folder's URL (registered as the relation).
    pub async fn publish(&self, name: &str, file: &std::path::Path) -> Result<url::Url> {
        let folder = self.folder(name)?;
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

/// A relation the cluster wrote: its files (URL, rows, bytes) and the plan that
/// wrote them (for its scan metrics).
pub struct Written {
    pub files: Vec<sink::WrittenFile>,
    pub plan: Arc<dyn ExecutionPlan>,
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
