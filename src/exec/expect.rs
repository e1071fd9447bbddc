//! Row expectations of a materialized stage: each check is evaluated once per row,
//! while the relation is computed. Rows failing a `drop` check leave the relation
//! and go to the quarantine table (as JSON, never reinterpreted); rows failing a
//! `fail` check stop the run, whose writes all wait for these checks (see the DAG).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::{and, filter, filter_record_batch, not};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{col, lit};
use datafusion::prelude::{coalesce, DataFrame};
use datafusion::sql::sqlparser::ast::ExprWithAlias;

use super::context::{df_err, StageResult};
use super::error::StageError;
use crate::plan::CheckPlan;
use crate::spec::CheckAction;

/// Name of the column holding a check's outcome while the relation is computed.
pub(super) fn check_column(i: usize) -> String {
    format!("__sqlplan_check_{i}")
}

/// The commit label of a stage's quarantine write (stage names never hold `:`).
pub fn quarantine_label(stage: &str) -> String {
    format!("{stage}:quarantine")
}

/// At most this many example rows are quoted when a `fail` check stops the run.
const EXAMPLES: usize = 3;

/// What the checks of one stage found while its relation was computed.
pub struct Checker {
    checks: Vec<CheckPlan>,
    /// Rows failing each check (false or NULL), in declared order.
    pub failed: Vec<u64>,
    /// Dropped rows: (the first `drop` check each failed, the row as JSON).
    pub dropped: Vec<(String, String)>,
    /// Example rows failing `fail` checks, as JSON.
    examples: Vec<String>,
}

impl Checker {
    pub fn new(checks: &[CheckPlan]) -> Self {
        Checker {
            checks: checks.to_vec(),
            failed: vec![0; checks.len()],
            dropped: Vec::new(),
            examples: Vec::new(),
        }
    }

    /// The relation with one boolean column per check appended (NULL counts as false).
    pub fn with_check_columns(
        &self,
        df: DataFrame,
        state: &SessionState,
    ) -> StageResult<DataFrame> {
        let mut columns: Vec<_> = df.schema().columns().into_iter().map(col).collect();
        for (i, check) in self.checks.iter().enumerate() {
            let parsed = ExprWithAlias {
                expr: check.expr.clone(),
                alias: None,
            };
            let expr = state
                .create_logical_expr_from_sql_expr(parsed, df.schema())
                .map_err(|e| {
                    StageError::Engine(format!("check `{}`: {}", check.name, e.strip_backtrace()))
                })?;
            columns.push(coalesce(vec![expr, lit(false)]).alias(check_column(i)));
        }
        df.select(columns).map_err(df_err)
    }

    /// Takes a batch with the check columns; returns its passing rows without them,
    /// and records the rest.
    pub fn split(&mut self, batch: RecordBatch) -> StageResult<RecordBatch> {
        let width = batch.num_columns() - self.checks.len();
        let data = batch
            .project(&(0..width).collect::<Vec<_>>())
            .map_err(df_err)?;
        // Binding checked that every check is boolean; coalesce(…, false) left no NULLs.
        let outcomes = (0..self.checks.len())
            .map(|i| {
                let a = batch.column(width + i).as_boolean_opt().ok_or_else(|| {
                    StageError::Internal(format!(
                        "check `{}` did not evaluate to booleans",
                        self.checks[i].name
                    ))
                })?;
                Ok(BooleanArray::from_iter(
                    a.iter().map(|v| Some(v.unwrap_or(false))),
                ))
            })
            .collect::<StageResult<Vec<BooleanArray>>>()?;
        let mut passing = BooleanArray::from(vec![true; batch.num_rows()]);
        for (i, ok) in outcomes.iter().enumerate() {
            self.failed[i] += (ok.len() - ok.true_count()) as u64;
            passing = and(&passing, ok).map_err(df_err)?;
        }
        if passing.true_count() == batch.num_rows() {
            return Ok(data);
        }
        let rejected_mask = not(&passing).map_err(df_err)?;
        let rejected = filter_record_batch(&data, &rejected_mask).map_err(df_err)?;
        let rejected_outcomes = outcomes
            .iter()
            .map(|ok| {
                let kept = filter(ok, &rejected_mask).map_err(df_err)?;
                Ok(kept.as_boolean().clone())
            })
            .collect::<StageResult<Vec<BooleanArray>>>()?;
        for (row, json) in json_lines(&rejected)?.into_iter().enumerate() {
            let first_failed = |action: CheckAction| {
                self.checks
                    .iter()
                    .enumerate()
                    .find(|(i, c)| c.action == action && !rejected_outcomes[*i].value(row))
                    .map(|(_, c)| c.name.clone())
            };
            if first_failed(CheckAction::Fail).is_some() {
                if self.examples.len() < EXAMPLES {
                    self.examples.push(json);
                }
            } else if let Some(check) = first_failed(CheckAction::Drop) {
                self.dropped.push((check, json));
            }
        }
        filter_record_batch(&data, &passing).map_err(df_err)
    }

    /// The error that stops the run when a `fail` check failed.
    pub fn failure(&self, stage: &str) -> Option<String> {
        let failed: Vec<String> = self
            .checks
            .iter()
            .zip(&self.failed)
            .filter(|(c, n)| c.action == CheckAction::Fail && **n > 0)
            .map(|(c, n)| format!("check `{}` ({}) failed for {n} rows", c.name, c.sql))
            .collect();
        if failed.is_empty() {
            return None;
        }
        let examples: Vec<String> = self.examples.iter().map(|e| abbreviate(e, 300)).collect();
        Some(format!(
            "{} of `{stage}`; nothing was written. Examples: {}",
            failed.join(", "),
            examples.join(" ")
        ))
    }

    /// Rows failing each check, by check name.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.checks
            .iter()
            .zip(&self.failed)
            .map(|(c, n)| (c.name.clone(), *n))
            .collect()
    }

    /// The quarantine rows of this run: run, stage, check_name, record.
    pub fn quarantine_batch(&self, run: i64, stage: &str) -> RecordBatch {
        let n = self.dropped.len();
        let schema = Schema::new(vec![
            Field::new("run", DataType::Int64, false),
            Field::new("stage", DataType::Utf8, false),
            Field::new("check_name", DataType::Utf8, false),
            Field::new("record", DataType::Utf8, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![run; n])),
                Arc::new(StringArray::from(vec![stage; n])),
                Arc::new(StringArray::from_iter_values(
                    self.dropped.iter().map(|d| &d.0),
                )),
                Arc::new(StringArray::from_iter_values(
                    self.dropped.iter().map(|d| &d.1),
                )),
            ],
        )
        .expect("columns match the schema")
    }
}

/// Each row as a JSON object, NULLs written out.
fn json_lines(batch: &RecordBatch) -> StageResult<Vec<String>> {
    use datafusion::arrow::json::{writer::LineDelimited, WriterBuilder};
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(Vec::new());
    writer.write(batch).map_err(df_err)?;
    writer.finish().map_err(df_err)?;
    let text = String::from_utf8(writer.into_inner()).map_err(df_err)?;
    Ok(text.lines().map(str::to_string).collect())
}

fn abbreviate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
