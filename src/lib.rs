//! sqlplan: a declarative SQL-plan compiler and executor.
//!
//! The flow runs one way (docs/design.md §1): `spec` (YAML) → `render` (minijinja) →
//! `compile` (parse, bind, analyze) → `plan::Plan`. Each module owns one step and
//! depends only on the steps before it.

// Problems carry their source text for rendering; they are built only on the cold
// error path, so their size does not matter.
#![allow(clippy::result_large_err)]

mod cli;
mod cluster;
mod compile;
mod control;
mod delta;
mod diag;
mod exec;
mod fixtures;
mod lsp;
mod plan;
mod pruning;
mod render;
mod report;
mod review;
mod select;
mod session;
mod spec;
mod state;
mod workloads;

// The library's surface: what the binary and the integration tests use. Every
// module is private, so rustc reports what nothing uses.
pub use cli::main;
pub use exec::{run, RunOptions};
pub use fixtures::append_rows;
pub use render::literal;

use std::path::Path;

pub use diag::Problem;
pub use plan::Plan;

/// Builds the Plan of a pipeline: what `plan` prints and `run` executes. A scan
/// budget the plan passes is an error.
pub async fn build_plan(
    pipeline: &Path,
    root: Option<&Path>,
    vars: &[(String, String)],
) -> Result<Plan, Problem> {
    plan_with(pipeline, root, vars, compile::Budgets::Enforce).await
}

/// The Plan for a review (`plan --baseline`): a budget the plan passes is a warning
/// of the plan (code `scan_budget` or `byte_budget`), so that the review can show it
/// beside the rest of the change.
pub async fn review_plan(
    pipeline: &Path,
    root: Option<&Path>,
    vars: &[(String, String)],
) -> Result<Plan, Problem> {
    plan_with(pipeline, root, vars, compile::Budgets::Report).await
}

async fn plan_with(
    pipeline: &Path,
    root: Option<&Path>,
    vars: &[(String, String)],
    budgets: compile::Budgets,
) -> Result<Plan, Problem> {
    let spec = spec::load(pipeline, root, vars)?;
    // Table locations, rendered once from the declared and given vars: the state
    // step reads its values from those tables.
    let locations = render::locations(&spec)?;
    // Every table's Delta log, read once for state, render and the catalog.
    let warehouse = delta::Warehouse::observe(&locations).await;
    let state = state::resolve(&spec, &warehouse).await?;
    let rendered = render::render(&spec, locations, &state, &warehouse).await?;
    compile::compile(&spec, &rendered, &warehouse, budgets).await
}
