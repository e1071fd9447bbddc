//! Maintenance stages: optimize (compact, z-order, partition filters) and vacuum.

use datafusion::sql::sqlparser::ast::Expr as SqlExpr;
use deltalake::{FilterOp, FilterValue};

use super::context::{df_err, Executor, StageResult};

use super::error::StageError;
use crate::plan::{Maintenance, StagePlan, Work};
use crate::report::StageMetrics;

impl Executor {
    pub(super) async fn maintain(&self, stage: &StagePlan) -> StageResult<StageMetrics> {
        let target = stage.writes.clone().ok_or("maintenance without a table")?;
        let table = self.table(&target).await?;
        let props = self.props(stage);
        match stage
            .maintenance
            .as_ref()
            .ok_or("maintenance stage without settings")?
        {
            Maintenance::Optimize {
                filter,
                target_size,
                deleted_above: Some(share),
                ..
            } => {
                self.compact_deleted(stage, table, *share, filter.as_deref(), *target_size)
                    .await
            }
            Maintenance::Optimize {
                zorder_by,
                target_size,
                deleted_above: None,
                ..
            } => {
                let owned = partition_filters(stage)?;
                let filters: Vec<(&str, FilterOp, FilterValue<'_>)> = owned
                    .iter()
                    .map(|(c, op, vals)| {
                        let v = if matches!(op, FilterOp::In | FilterOp::NotIn) {
                            FilterValue::Set(vals.iter().map(String::as_str).collect())
                        } else {
                            FilterValue::Scalar(vals[0].as_str())
                        };
                        (c.as_str(), *op, v)
                    })
                    .collect();
                let kind = if zorder_by.is_empty() {
                    deltalake::operations::optimize::OptimizeType::Compact
                } else {
                    deltalake::operations::optimize::OptimizeType::ZOrder(zorder_by.clone())
                };
                // Compacted files are laid out as every file sqlplan writes
                // (delta-rs's default is ZSTD and row groups of a million rows).
                let mut op = table
                    .optimize()
                    .with_type(kind)
                    .with_filters(&filters)
                    .with_writer_properties(crate::delta::writer_properties())
                    .with_commit_properties(props);
                if let Some(size) = target_size.and_then(std::num::NonZeroU64::new) {
                    op = op.with_target_size(size);
                }
                let (table, m) = op.await.map_err(df_err)?;
                let version = self.committed(&target, table).await?;
                Ok(StageMetrics {
                    files_added: Some(m.num_files_added),
                    files_removed: Some(m.num_files_removed),
                    bytes_written: Some(m.files_added.total_size.max(0) as u64),
                    version,
                    ..Default::default()
                })
            }
            Maintenance::Vacuum { retain_hours } => {
                let retention = self.retention(&target, &table, *retain_hours).await?;
                let (table, m) = table
                    .vacuum()
                    .with_retention_period(retention)
                    // The retention is explicit in the pipeline; Delta's 7-day floor
                    // would otherwise reject shorter ones.
                    .with_enforce_retention_duration(false)
                    .with_commit_properties(props)
                    .await
                    .map_err(df_err)?;
                let mut deleted: Vec<String> = m
                    .files_deleted
                    .iter()
                    .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
                    .collect();
                deleted.sort();
                deleted.dedup();
                let version = self.committed(&target, table).await?;
                Ok(StageMetrics {
                    files_removed: Some(deleted.len() as u64),
                    version,
                    ..Default::default()
                })
            }
        }
    }
}

impl Executor {
    /// The vacuum's retention: the pipeline's, raised when a run that may still be
    /// resumed — this one (unfinished until its finish commit), or an unfinished run
    /// in the ledger — reads `target` as of a version whose files the pipeline's
    /// retention would remove. Files a version needs are those removed after it was
    /// committed, so keeping every file removed since then keeps the version readable.
    async fn retention(
        &self,
        target: &str,
        table: &deltalake::DeltaTable,
        retain_hours: u64,
    ) -> StageResult<chrono::Duration> {
        let asked = chrono::Duration::hours(retain_hours as i64);
        let mut readers: Vec<(i64, String)> = Vec::new();
        if let Some(&v) = self.tag.start_versions.get(target) {
            readers.push((
                v,
                format!("this run (run {}) started from it", self.tag.run_number),
            ));
        }
        if let Some(location) = crate::control::ledger::location(&self.plan)? {
            for run in crate::control::ledger::unfinished(&location).await? {
                let same = run.pipeline == self.plan.pipeline && run.run == self.tag.run_number;
                if let (false, Some(&v)) = (same, run.read_versions.get(target)) {
                    readers.push((
                        v,
                        format!(
                            "run {} of `{}` is {} and reads it",
                            run.run, run.pipeline, run.status
                        ),
                    ));
                }
            }
        }
        let Some((version, reader)) = readers.into_iter().min_by_key(|(v, _)| *v) else {
            return Ok(asked);
        };
        let Some(committed) = crate::delta::commit::commit_time(table, version).await? else {
            return Ok(asked);
        };
        // A minute of margin for clocks and the time the vacuum itself takes.
        let needed =
            chrono::Duration::milliseconds(chrono::Utc::now().timestamp_millis() - committed)
                + chrono::Duration::minutes(1);
        if needed <= asked {
            return Ok(asked);
        }
        let shown = match needed.num_minutes() {
            m if m < 120 => format!("{m} min"),
            m => format!("{:.1} h", m as f64 / 60.0),
        };
        eprintln!(
            "sqlplan: vacuum `{target}`: retention raised from {retain_hours} h to {shown} to keep version {version}: {reader}"
        );
        Ok(needed)
    }
}

/// A partition filter of delta-rs: column, operator, values.
pub(super) type PartitionFilter = (String, FilterOp, Vec<String>);

/// The stage's optimize filter (`ds = 'a' AND ds IN ('b')`), parsed at compile
/// time, as delta-rs partition filters; none for a stage without one.
pub(super) fn partition_filters(stage: &StagePlan) -> StageResult<Vec<PartitionFilter>> {
    let mut out = Vec::new();
    if let Work::Optimize { filter: Some(expr) } = &stage.work {
        collect_filters(expr, &mut out)?;
    }
    Ok(out)
}

fn collect_filters(expr: &SqlExpr, out: &mut Vec<PartitionFilter>) -> StageResult<()> {
    use datafusion::sql::sqlparser::ast::BinaryOperator as B;
    let unsupported = || {
        StageError::Unsupported(format!(
            "optimize filter `{expr}`: use `col = 'v'`, comparisons, `col IN (…)` joined by AND"
        ))
    };
    match expr {
        SqlExpr::Nested(e) => collect_filters(e, out),
        SqlExpr::BinaryOp {
            left,
            op: B::And,
            right,
        } => {
            collect_filters(left, out)?;
            collect_filters(right, out)
        }
        SqlExpr::BinaryOp { left, op, right } => {
            let op = match op {
                B::Eq => FilterOp::Eq,
                B::NotEq => FilterOp::Ne,
                B::Lt => FilterOp::Lt,
                B::LtEq => FilterOp::Le,
                B::Gt => FilterOp::Gt,
                B::GtEq => FilterOp::Ge,
                _ => return Err(unsupported()),
            };
            out.push((
                column_name(left).ok_or_else(unsupported)?,
                op,
                vec![literal(right).ok_or_else(unsupported)?],
            ));
            Ok(())
        }
        SqlExpr::InList {
            expr: e,
            list,
            negated,
        } => {
            let values = list
                .iter()
                .map(literal)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(unsupported)?;
            out.push((
                column_name(e).ok_or_else(unsupported)?,
                if *negated {
                    FilterOp::NotIn
                } else {
                    FilterOp::In
                },
                values,
            ));
            Ok(())
        }
        _ => Err(unsupported()),
    }
}

fn column_name(e: &SqlExpr) -> Option<String> {
    match e {
        SqlExpr::Identifier(i) => Some(i.value.to_lowercase()),
        SqlExpr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.to_lowercase()),
        _ => None,
    }
}

fn literal(e: &SqlExpr) -> Option<String> {
    use datafusion::sql::sqlparser::ast::Value;
    match e {
        SqlExpr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.clone()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        _ => None,
    }
}
