//! `sqlplan test`: data fixtures for analysts. A fixture file lists cases; each
//! case gives rows of input tables, runs the pipeline once or more on a temporary
//! warehouse, and compares the tables with the rows expected, with a readable diff.
//!
//! ```yaml
//! cases:
//!   - name: a new customer
//!     vars: {day: "2024-01-02"}          # optional; `warehouse` is set by the runner
//!     steps:                              # one run per step (a step may have `vars`
//!                                         # too, for its run only)
//!       - given:                          # rows appended before the run
//!           orders: [{order_id: 1, customer_id: 7, amount: 10.0, status: placed, ds: "2024-01-02"}]
//!         expect:                         # the whole table after the run (the columns
//!                                         # listed; list the same columns in every row
//!                                         # of a table; arrays up to their last value),
//!                                         # or the rows of a stage with `report: true`
//!           customer_totals: [{customer_id: 7, orders: 1}]
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use serde_json::{Map, Value};

use crate::diag::{Problem, Result};
use crate::exec::{self, RunOptions};
use crate::plan::Plan;

/// The default fixture file of a pipeline: `NAME.tests.yaml` beside it.
pub fn default_fixtures(pipeline: &Path) -> PathBuf {
    let stem = pipeline
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    pipeline.with_file_name(format!("{stem}.tests.yaml"))
}

/// Runs every case; returns the printed report and whether all passed.
pub async fn run(pipeline: &Path, root: Option<&Path>, fixtures: &Path) -> Result<(String, bool)> {
    let text = std::fs::read_to_string(fixtures).map_err(|e| {
        Problem::invalid(
            "fixtures_unreadable",
            format!("cannot read fixtures {}: {e}", fixtures.display()),
        )
    })?;
    let doc = crate::spec::yaml_value(&text).map_err(|e| {
        Problem::invalid("malformed_fixtures", format!("{}: {e}", fixtures.display()))
    })?;
    let cases = doc.get("cases").and_then(Value::as_array).ok_or_else(|| {
        Problem::invalid(
            "malformed_fixtures",
            format!("{}: expected a list under `cases:`", fixtures.display()),
        )
    })?;
    let mut out = String::new();
    let (mut passed, mut failed) = (0, 0);
    for (i, case) in cases.iter().enumerate() {
        let name = case
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("case {}", i + 1), str::to_string);
        match run_case(pipeline, root, case).await {
            Ok(diffs) if diffs.is_empty() => {
                passed += 1;
                let _ = writeln!(out, "PASS {name}");
            }
            Ok(diffs) => {
                failed += 1;
                let _ = writeln!(out, "FAIL {name}");
                for d in diffs {
                    let _ = writeln!(out, "{d}");
                }
            }
            Err(p) => {
                failed += 1;
                let _ = writeln!(out, "FAIL {name}: {}", p.message);
            }
        }
    }
    let _ = writeln!(out, "\n{passed} passed, {failed} failed");
    Ok((out, failed == 0))
}

async fn run_case(pipeline: &Path, root: Option<&Path>, case: &Value) -> Result<Vec<String>> {
    let warehouse = tempfile::Builder::new()
        .prefix("sqlplan-fixture")
        .tempdir()
        .map_err(|e| Problem::failed("tempdir", e.to_string()))?;
    let mut case_vars = vec![(
        "warehouse".to_string(),
        warehouse.path().display().to_string(),
    )];
    case_vars.extend(fixture_vars(case));
    let empty = Vec::new();
    let steps = case
        .get("steps")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut diffs = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        // A step's vars override the case's for that run only.
        let mut vars = case_vars.clone();
        vars.extend(fixture_vars(step));
        // Planned before and after the inputs exist: the first plan knows every
        // declared schema, the second binds to the tables as written.
        let declared = crate::build_plan(pipeline, root, &vars).await?;
        if let Some(given) = step.get("given").and_then(Value::as_object) {
            for (table, rows) in given {
                append_rows(&declared, table, rows).await?;
            }
        }
        let plan = crate::build_plan(pipeline, root, &vars).await?;
        let options = RunOptions {
            progress: false,
            quiet: true,
            ..Default::default()
        };
        let report = exec::run(plan.clone(), &options).await?;
        if !report.succeeded() {
            let why = report
                .failed_stage()
                .and_then(|s| s.error.clone())
                .unwrap_or_else(|| "interrupted".into());
            diffs.push(format!("  step {}: the run failed: {why}", n + 1));
            break;
        }
        if let Some(expect) = step.get("expect").and_then(Value::as_object) {
            for (table, rows) in expect {
                let reported = plan.stages.iter().any(|s| &s.name == table && s.report);
                let actual = match report.stages.iter().find(|s| reported && &s.name == table) {
                    Some(stage) => stage.metrics.reported.clone(),
                    None => read_rows(table_plan(&plan, table)?).await?,
                };
                diffs.extend(
                    compare(rows, &actual)
                        .into_iter()
                        .map(|d| format!("  step {}, {table}: {d}", n + 1)),
                );
            }
        }
    }
    Ok(diffs)
}

/// The `vars:` of a case or step as `--var` pairs (strings as written, the rest as
/// YAML/JSON text).
fn fixture_vars(node: &Value) -> Vec<(String, String)> {
    node.get("vars")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_string),
            )
        })
        .collect()
}

fn table_plan<'p>(plan: &'p Plan, table: &str) -> Result<&'p crate::plan::TablePlan> {
    plan.tables.iter().find(|t| t.name == table).ok_or_else(|| {
        Problem::invalid(
            "unknown_table",
            format!("`{table}` is not a table of the pipeline"),
        )
    })
}

/// Appends fixture rows to a table, creating it from its declared schema if needed.
pub async fn append_rows(plan: &Plan, table: &str, rows: &Value) -> Result<()> {
    let t = table_plan(plan, table)?;
    let rows = rows.as_array().cloned().unwrap_or_default();
    let schema =
        Arc::new(exec::delta::delta_schema(t).map_err(|e| Problem::invalid("bad_fixture", e))?);
    let mut decoder = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
        .build_decoder()
        .map_err(|e| Problem::invalid("bad_fixture", e.to_string()))?;
    decoder
        .serialize(&rows)
        .map_err(|e| Problem::invalid("bad_fixture", format!("rows of `{table}`: {e}")))?;
    let batch = decoder
        .flush()
        .map_err(|e| Problem::invalid("bad_fixture", e.to_string()))?
        .unwrap_or_else(|| RecordBatch::new_empty(schema));
    let delta = exec::delta::open_or_create(t)
        .await
        .map_err(|e| Problem::failed("fixture_write", e))?;
    delta
        .write(vec![batch])
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .await
        .map_err(|e| Problem::failed("fixture_write", format!("`{table}`: {e}")))?;
    Ok(())
}

/// Actual rows (a table's, or a reported relation's) against the expected ones,
/// compared as multisets on the expected rows' columns. Returns one line per missing
/// or unexpected row.
fn compare(expected: &Value, actual: &[Map<String, Value>]) -> Vec<String> {
    let expected: Vec<Map<String, Value>> = expected
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r.as_object().cloned())
        .collect();
    let columns: Vec<String> = {
        let mut c: Vec<String> = expected.iter().flat_map(|r| r.keys().cloned()).collect();
        c.sort();
        c.dedup();
        c
    };
    let project = |r: &Map<String, Value>| -> String {
        let m: Map<String, Value> = columns
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    normalize(r.get(c).cloned().unwrap_or(Value::Null)),
                )
            })
            .collect();
        Value::Object(m).to_string()
    };
    let mut want: Vec<String> = expected.iter().map(project).collect();
    let mut have: Vec<String> = actual.iter().map(project).collect();
    want.sort();
    have.sort();
    let mut diffs = Vec::new();
    for w in &want {
        match have.iter().position(|h| h == w) {
            Some(i) => {
                have.remove(i);
            }
            None => diffs.push(format!("missing    {w}")),
        }
    }
    diffs.extend(have.into_iter().map(|h| format!("unexpected {h}")));
    diffs
}

/// Numbers compare by value (10 = 10.0), timestamps too (`2026-01-05T09:00:00`
/// written for a UTC column matches `2026-01-05T09:00:00Z`); arrays up to their last
/// non-NULL element (so `[400, null, 200]` matches a 36-element history); the rest
/// as written.
fn normalize(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(timestamp_value(&s).unwrap_or(s)),
        Value::Number(n) => n
            .as_f64()
            .map_or(Value::Number(n), |f| serde_json::json!(f)),
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(normalize).collect();
            while items.last().is_some_and(Value::is_null) {
                items.pop();
            }
            Value::Array(items)
        }
        other => other,
    }
}

/// A timestamp string (with or without a zone; zone-less ones are UTC) as UTC in
/// one spelling; `None` for anything else.
fn timestamp_value(s: &str) -> Option<String> {
    const CANONICAL: &str = "%Y-%m-%dT%H:%M:%S%.f";
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.naive_utc().format(CANONICAL).to_string());
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
        .map(|t| t.format(CANONICAL).to_string())
}

async fn read_rows(t: &crate::plan::TablePlan) -> Result<Vec<Map<String, Value>>> {
    let url =
        crate::session::table_url(&t.location).map_err(|e| Problem::failed("fixture_read", e))?;
    let table = deltalake::open_table(url)
        .await
        .map_err(|e| Problem::failed("fixture_read", format!("`{}`: {e}", t.name)))?;
    let ctx = crate::session::new_context();
    let provider = table
        .table_provider()
        .await
        .map_err(|e| Problem::failed("fixture_read", e.to_string()))?;
    ctx.register_table("t", provider)
        .map_err(|e| Problem::failed("fixture_read", e.to_string()))?;
    let df = ctx
        .sql("SELECT * FROM t")
        .await
        .map_err(|e| Problem::failed("fixture_read", e.to_string()))?;
    let batches = df
        .collect()
        .await
        .map_err(|e| Problem::failed("fixture_read", e.to_string()))?;
    exec::stages::json_rows(&batches).map_err(|e| Problem::failed("fixture_read", e))
}

#[cfg(test)]
mod tests {
    use super::normalize;
    use serde_json::json;

    #[test]
    fn arrays_compare_up_to_their_last_value_and_numbers_by_value() {
        assert_eq!(
            normalize(json!([400, null, 200, null, null])),
            normalize(json!([400.0, null, 200]))
        );
        assert_ne!(
            normalize(json!([400, null, 200])),
            normalize(json!([400, 200]))
        );
        assert_eq!(normalize(json!([null, null])), json!([]));
    }

    #[test]
    fn timestamps_compare_by_value() {
        assert_eq!(
            normalize(json!("2026-01-05T09:00:00")),
            normalize(json!("2026-01-05T09:00:00Z"))
        );
        assert_eq!(
            normalize(json!("2026-01-05 10:00:00")),
            normalize(json!("2026-01-05T09:00:00-01:00"))
        );
        assert_ne!(
            normalize(json!("2026-01-05T09:00:00")),
            normalize(json!("2026-01-05T09:00:01Z"))
        );
        assert_eq!(normalize(json!("2026-01")), json!("2026-01"));
    }
}
