//! Between spec and render: state variables take the value the last run recorded.
//!
//! A stage with `state: NAME` returns one value; the commit that ends the run — after
//! every write of the run committed — carries it on the state's table
//! (`sqlplan.state.NAME`). At plan time the variable takes the value of the newest
//! commit of this pipeline on that table that carries it, so a run that failed or
//! died records nothing and the next one reads the same batch (and resumes the
//! unfinished run). `--var NAME=…` overrides.

use futures::StreamExt;

use crate::diag::{did_you_mean, Problem, Result};
use crate::exec::delta::STATE_PREFIX;
use crate::spec::PipelineSpec;

/// How far back in a table's history to look for a recorded state.
const HISTORY_DEPTH: usize = 1000;

pub async fn resolve(spec: &mut PipelineSpec) -> Result<()> {
    if spec.state.is_empty() {
        return Ok(());
    }
    let locations = crate::render::locations(spec)?;
    for (name, table) in spec.state.clone() {
        let Some(location) = locations.get(&table.value) else {
            return Err(Problem::invalid(
                "unknown_table",
                format!(
                    "state `{name}` is kept on `{}`, which is not a declared table",
                    table.value
                ),
            )
            .in_source(&spec.yaml)
            .label(table.span, "unknown table")
            .help(
                did_you_mean(&table.value, locations.keys().map(String::as_str))
                    .unwrap_or_else(|| "declare it under `tables:`".into()),
            ));
        };
        if spec.vars[&name].overridden || !crate::session::table_exists(location).await {
            continue;
        }
        if let Some(value) = recorded(&spec.name.value, location, &name).await? {
            spec.vars.get_mut(&name).expect("state vars are vars").value = value.into();
        }
    }
    Ok(())
}

async fn recorded(pipeline: &str, location: &str, name: &str) -> Result<Option<String>> {
    let failed = |e: String| {
        Problem::failed(
            "state_unreadable",
            format!("reading state `{name}` from {location}: {e}"),
        )
    };
    let url = crate::session::table_url(location).map_err(failed)?;
    let table = deltalake::open_table(url)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let key = format!("{STATE_PREFIX}{name}");
    let mut history = table.history(Some(HISTORY_DEPTH));
    while let Some(commit) = history.next().await {
        let commit = commit.map_err(|e| failed(e.to_string()))?;
        let ours = commit.info.get("sqlplan.pipeline").and_then(|v| v.as_str()) == Some(pipeline);
        if let (true, Some(v)) = (ours, commit.info.get(&key)) {
            return Ok(Some(
                v.as_str().map_or_else(|| v.to_string(), str::to_string),
            ));
        }
    }
    Ok(None)
}
