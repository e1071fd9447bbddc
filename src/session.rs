//! The one place a DataFusion session is built (docs/design.md §3), so that a distributed
//! context or remote object stores can replace the local defaults without touching
//! the compiler or the executor.

use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::delta_datafusion::planner::DeltaPlanner;

/// A session for binding and running stages: spans collected on SQL expressions
/// (diagnostics point at the column), and delta-rs's planner for its write nodes.
pub fn new_context() -> SessionContext {
    let mut config = SessionConfig::new().with_information_schema(false);
    config.options_mut().sql_parser.collect_spans = true;
    // Evaluate scan filters (literal key bounds, join filters) on the filter columns
    // before decoding the rest of a row: the summary pipeline reads a few accounts'
    // rows, with their 36-element arrays, out of files that hold every account.
    config.options_mut().execution.parquet.pushdown_filters = true;
    // Skip the rows a filter drops instead of decoding them and filtering after: the
    // kept rows are a few percent, scattered (a bitmap would decode every array).
    config
        .options_mut()
        .execution
        .parquet
        .force_filter_selections = true;
    // `TIMESTAMP WITH TIME ZONE` means UTC (Delta's `timestamp`); zone-less
    // `TIMESTAMP` stays Delta's `timestamp_ntz`.
    config.options_mut().execution.time_zone = Some("UTC".to_string());
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(crate::delta::stores::Stores::new())
        .build_arc()
        .expect("a runtime without limits builds");
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_query_planner(DeltaPlanner::new())
        .build();
    SessionContext::new_with_state(state)
}
