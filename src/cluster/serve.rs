//! `sqlplan scheduler` and `sqlplan executor`: Ballista's scheduler and executor
//! processes with sqlplan's codecs registered (the stock binaries cannot decode
//! sqlplan's Delta scans) and with object stores found from URLs, so a cluster is
//! started with the same binary that plans and runs.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::extension::SessionConfigExt;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::prelude::SessionConfig;

use super::{codec, MAX_MESSAGE_BYTES};
use crate::delta::error::{Doing as _, Error};
use crate::delta::stores::Stores;

/// `sqlplan scheduler` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Port for clients (`run --engine df://HOST:PORT`) and executors.
    #[arg(long, default_value_t = 50050)]
    pub port: u16,
    /// Seconds without a heartbeat after which an executor is taken for dead: the
    /// tasks it was running are run again on the others.
    #[arg(long, value_name = "SECONDS", default_value_t = 180)]
    pub executor_timeout: u64,
}

/// `sqlplan executor` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecutorArgs {
    /// The scheduler to register with.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50050")]
    pub scheduler: String,
    /// Address to listen on (and to advertise to the scheduler).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Port other executors and clients fetch results from (Arrow Flight).
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// Port the scheduler sends tasks to.
    #[arg(long, default_value_t = 50052)]
    pub grpc_port: u16,
    /// Tasks run at once [default: the machine's cores].
    #[arg(long)]
    pub concurrent_tasks: Option<usize>,
    /// Where shuffle files go [default: a temporary directory].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<String>,
    /// Seconds between heartbeats to the scheduler (keep it well below the
    /// scheduler's --executor-timeout).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub heartbeat: u64,
}

/// Ballista's log lines on standard error, filtered by `RUST_LOG` [default: info].
fn init_logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
}

/// A runtime whose object stores are found from URLs (`s3://…` with the
/// credentials of this process's environment).
fn runtime(temp: Option<&str>) -> datafusion::common::Result<Arc<RuntimeEnv>> {
    let mut builder = RuntimeEnvBuilder::new().with_object_store_registry(Stores::new());
    if let Some(dir) = temp {
        builder = builder.with_temp_file_path(dir);
    }
    builder.build_arc()
}

/// The scheduler's session for planning a job: Ballista's defaults, with object
/// stores found from URLs and sqlplan's plan nodes (`Sink`).
fn scheduler_session(config: SessionConfig) -> datafusion::common::Result<SessionState> {
    let state = ballista_core::utils::default_session_builder(config)?;
    Ok(SessionStateBuilder::new_from_existing(state)
        .with_runtime_env(runtime(None)?)
        .with_query_planner(Arc::new(super::sink::QueryPlanner))
        .with_physical_optimizer_rule(Arc::new(super::joins::PartitionBuildSideJoins))
        .build())
}

/// Runs a scheduler until the process is stopped.
pub async fn scheduler(args: &SchedulerArgs) -> crate::delta::error::Result<()> {
    init_logs();
    crate::delta::stores::register_schemes();
    let address: SocketAddr = format!("{}:{}", args.bind, args.port)
        .parse()
        .doing(|| "--bind/--port".to_string())?;
    let config = SchedulerConfig {
        bind_host: args.bind.clone(),
        bind_port: args.port,
        external_host: args.bind.clone(),
        grpc_server_max_decoding_message_size: MAX_MESSAGE_BYTES as u32,
        grpc_server_max_encoding_message_size: MAX_MESSAGE_BYTES as u32,
        grpc_client_max_message_size: MAX_MESSAGE_BYTES as u32,
        override_logical_codec: Some(Arc::new(codec::LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(codec::PhysicalCodec::default())),
        override_session_builder: Some(Arc::new(scheduler_session)),
        executor_timeout_seconds: args.executor_timeout,
        no_executors_grace_period_seconds: args.executor_timeout,
        expire_dead_executor_interval_seconds: args.executor_timeout.div_ceil(2).clamp(1, 15),
        ..SchedulerConfig::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(Error::library)?;
    eprintln!("sqlplan: scheduler listening on {address} (clients: run --engine df://{address})");
    start_server(cluster, address, Arc::new(config))
        .await
        .map_err(Error::library)
}

/// The functions a plan may call: Ballista's and those of the session sqlplan binds
/// stages in (Ballista's executor defaults lack e.g. the nested `range`).
fn functions() -> ballista_core::registry::BallistaFunctionRegistry {
    let mut registry = ballista_core::registry::BallistaFunctionRegistry::default();
    let state = crate::session::new_context().state();
    registry
        .scalar_functions
        .extend(state.scalar_functions().clone());
    registry
        .aggregate_functions
        .extend(state.aggregate_functions().clone());
    registry
        .window_functions
        .extend(state.window_functions().clone());
    registry
        .higher_order_functions
        .extend(state.higher_order_functions().clone());
    registry
}

/// Runs an executor until the process is stopped.
pub async fn executor(args: &ExecutorArgs) -> crate::delta::error::Result<()> {
    init_logs();
    crate::delta::stores::register_schemes();
    let (host, port) = args.scheduler.rsplit_once(':').ok_or_else(|| {
        Error::Location(format!(
            "--scheduler `{}`: expected HOST:PORT",
            args.scheduler
        ))
    })?;
    let scheduler_port: u16 = port
        .parse()
        .doing(|| format!("--scheduler `{}`", args.scheduler))?;
    let work_dir = args.work_dir.clone();
    let config = ExecutorProcessConfig {
        bind_host: args.bind.clone(),
        external_host: Some(args.bind.clone()),
        port: args.port,
        grpc_port: args.grpc_port,
        scheduler_host: host.to_string(),
        scheduler_port,
        vcores: args.concurrent_tasks.unwrap_or(0),
        executor_heartbeat_interval_seconds: args.heartbeat,
        work_dir: work_dir.clone(),
        grpc_max_decoding_message_size: MAX_MESSAGE_BYTES as u32,
        grpc_max_encoding_message_size: MAX_MESSAGE_BYTES as u32,
        override_logical_codec: Some(Arc::new(codec::LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(codec::PhysicalCodec::default())),
        override_function_registry: Some(Arc::new(functions())),
        override_runtime_producer: Some(Arc::new(move |_config: &SessionConfig| {
            runtime(work_dir.as_deref())
        })),
        override_config_producer: Some(Arc::new(|| {
            SessionConfig::new_with_ballista()
                .with_ballista_logical_extension_codec(Arc::new(codec::LogicalCodec::default()))
                .with_ballista_physical_extension_codec(Arc::new(codec::PhysicalCodec::default()))
        })),
        ..ExecutorProcessConfig::default()
    };
    eprintln!(
        "sqlplan: executor on {}:{} (tasks on port {}), registering with {}",
        args.bind, args.port, args.grpc_port, args.scheduler
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(Error::library)
}
