//! Between spec and render: state variables take the value the last run recorded.
//!
//! A stage with `state: NAME` returns one value; the commit that ends the run — after
//! every write of the run committed — carries it on the state's table
//! (`sqlplan.state.NAME`). At plan time the variable takes the value of the newest
//! commit of this pipeline on that table that carries it, so a run that failed or
//! died records nothing and the next one reads the same batch (and resumes the
//! unfinished run). `--var NAME=…` overrides.

use crate::diag::{Code, Problem, Result};
use crate::spec::PipelineSpec;

pub async fn resolve(spec: &mut PipelineSpec, warehouse: &crate::delta::Warehouse) -> Result<()> {
    if spec.state.is_empty() {
        return Ok(());
    }
    let locations = crate::render::locations(spec)?;
    for (name, table) in spec.state.clone() {
        let Some(location) = locations.get(&table.value) else {
            return Err(Problem::unknown_table(
                format!(
                    "state `{name}` is kept on `{}`, which is not a declared table",
                    table.value
                ),
                &table.value,
                locations.keys().map(String::as_str),
            )
            .in_source(&spec.yaml)
            .label(table.span, "unknown table"));
        };
        if spec.vars[&name].overridden {
            continue;
        }
        let failed = |e: String| {
            Problem::failed(
                Code::StateUnreadable,
                format!("reading state `{name}` from {location}: {e}"),
            )
        };
        let found = warehouse.table(&table.value, location).await;
        let Some(table) = found.map_err(failed)? else {
            continue;
        };
        let recorded = crate::delta::commit::recorded_state(&table, &spec.name.value, &name);
        if let Some(value) = recorded.await.map_err(failed)? {
            spec.vars.get_mut(&name).expect("state vars are vars").value = value.into();
        }
    }
    Ok(())
}
