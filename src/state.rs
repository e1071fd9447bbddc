//! Between spec and render: state variables take the value the last run recorded.
//!
//! A stage with `state: NAME` returns one value; the commit that ends the run — after
//! every write of the run committed — carries it on the state's table
//! (`sqlplan.state.NAME`). At plan time the variable takes the value of the newest
//! finished run that carries it — finished meaning its finish commit is on every
//! state table — so a run that failed or died records nothing and the next one
//! reads the same batch (and resumes the unfinished run). `--var NAME=…` overrides.

use std::collections::{BTreeMap, BTreeSet};

use crate::delta::commit::{state_records, StateRecord};
use crate::diag::{Code, Problem, Result};
use crate::spec::PipelineSpec;

/// The values state variables take for this run: those the last finished run
/// recorded, for every state variable `--var` does not set (others keep their
/// declared or given value and are not listed).
pub async fn resolve(
    spec: &PipelineSpec,
    warehouse: &crate::delta::Warehouse,
) -> Result<BTreeMap<String, serde_json::Value>> {
    let mut values = BTreeMap::new();
    if spec.state.is_empty() {
        return Ok(values);
    }
    // The state commits of every state table, read once.
    let mut records: BTreeMap<String, Vec<StateRecord>> = BTreeMap::new();
    for table in spec.state.values() {
        let Some(location) = warehouse.location(&table.value) else {
            return Err(Problem::unknown_table(
                format!(
                    "state is kept on `{}`, which is not a declared table",
                    table.value
                ),
                &table.value,
                warehouse.names(),
            )
            .in_source(&spec.yaml)
            .label(table.span, "unknown table"));
        };
        let failed = |e: crate::delta::Error| {
            Problem::failed(
                Code::StateUnreadable,
                format!("reading state from {location}: {e}"),
            )
        };
        let found = warehouse
            .table(&table.value, location)
            .await
            .map_err(failed)?;
        let table_records = match found {
            Some(t) => state_records(&t, &spec.name.value).await.map_err(failed)?,
            None => Vec::new(),
        };
        records.insert(table.value.clone(), table_records);
    }
    // A run's state counts once its finish commit is on every state table: a run
    // that died between two of them is resumed with the values it started with.
    let finished: BTreeSet<i64> = records
        .values()
        .map(|rs| {
            rs.iter()
                .filter(|r| r.finish)
                .filter_map(|r| r.run)
                .collect::<BTreeSet<i64>>()
        })
        .reduce(|a, b| a.intersection(&b).copied().collect())
        .unwrap_or_default();
    for (name, table) in &spec.state {
        let var = &spec.vars[name];
        if var.overridden {
            continue;
        }
        let value = records[&table.value]
            .iter()
            .filter(|r| !r.finish || r.run.is_some_and(|run| finished.contains(&run)))
            .find_map(|r| r.values.get(name));
        if let Some(value) = value {
            // The log is input too: a value that is not of the var's type (written by
            // another tool, or by hand) stops here, before any template sees it.
            let typed = var.ty.parse_text(value).map_err(|e| {
                Problem::invalid(
                    Code::BadStateValue,
                    format!(
                        "state `{name}` recorded on `{}` is not {}: {e}",
                        table.value, var.ty.article()
                    ),
                )
                .in_source(&spec.yaml)
                .label(var.span, format!("declared as {}", var.ty))
                .help(format!(
                    "nothing was run; `--var {name}=…` sets a value for this run, and its finish commit records it"
                ))
            })?;
            values.insert(name.clone(), typed);
        }
    }
    Ok(values)
}
