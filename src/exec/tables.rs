//! The plan's tables at the start of a run: opened (created when the run creates
//! them) and checked against the schema the plan was bound to.

use std::collections::BTreeMap;

use deltalake::DeltaTable;

use super::context::StageResult;
use super::error::StageError;
use crate::delta;
use crate::plan::{Plan, TablePlan};

/// Opens every table of the plan, creating those the run creates, and checks the
/// others against the schema and partitioning the plan was bound to; turns deletion
/// vectors on where declared and not yet on. Nothing is written before every check
/// has passed.
pub async fn open_tables(plan: &Plan) -> StageResult<BTreeMap<String, DeltaTable>> {
    let mut existing = BTreeMap::new();
    for t in &plan.tables {
        let url = delta::table_url(&t.location)?;
        match t.version {
            Some(_) => {
                let table = delta::open(&t.name, &t.location, None).await?;
                check_drift(t, &table)?;
                existing.insert(t.name.clone(), table);
            }
            None => {
                if let Some(path) = url
                    .to_file_path()
                    .ok()
                    .filter(|p| delta::local_table_exists(p))
                {
                    return Err(StageError::Table(format!(
                        "table `{}` appeared at {} after planning; plan again",
                        t.name,
                        path.display()
                    )));
                }
            }
        }
    }
    for t in plan.tables.iter().filter(|t| t.deletion_vectors.is_some()) {
        if let Some(table) = existing.remove(&t.name) {
            let table = if delta::vectors::enabled(&table) {
                table
            } else {
                delta::vectors::enable(table).await?
            };
            existing.insert(t.name.clone(), table);
        }
    }
    for t in plan
        .tables
        .iter()
        .filter(|t| t.version.is_none() && !t.optional)
    {
        let vectors = t.deletion_vectors.is_some();
        delta::create(
            &t.name,
            &t.location,
            &t.arrow_schema().map_err(StageError::Internal)?,
            &t.partition_by,
            vectors,
        )
        .await?;
        existing.insert(
            t.name.clone(),
            delta::open(&t.name, &t.location, None).await?,
        );
    }
    Ok(existing)
}

/// Schema drift: a column added, dropped or retyped since the plan was bound.
fn check_drift(planned: &TablePlan, table: &DeltaTable) -> StageResult<()> {
    let snapshot = table.snapshot().map_err(crate::delta::Error::from)?;
    let actual = snapshot.snapshot().arrow_schema();
    if let Some((missing, extra)) = delta::schema::differences(
        &planned.arrow_schema().map_err(StageError::Internal)?,
        &actual,
    ) {
        return Err(StageError::Table(format!(
            "schema drift in `{}`: the plan was bound to version {} but the table now differs (planned only: {:?}; now only: {:?}); plan again",
            planned.name,
            planned.version.unwrap_or_default(),
            missing,
            extra
        )));
    }
    Ok(())
}
