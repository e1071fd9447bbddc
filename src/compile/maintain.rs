//! Step 4, for maintenance stages (optimize, vacuum): their YAML options checked
//! against the declared table, the optimize filter parsed once for the executor.

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{visit_expressions, Expr as SqlExpr};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use miette::SourceSpan;

use super::bind::{empty, BoundStage};
use super::catalog::TableInfo;
use crate::diag::{did_you_mean, Code, Problem, Result};
use crate::plan::{Maintenance, Work};
use crate::render::RenderedStage;
use crate::spec::{OptimizeSpec, PipelineSpec, Spanned, StageSpec, VacuumSpec};

pub(super) fn bind_vacuum(
    spec: &PipelineSpec,
    v: &VacuumSpec,
    tables: &BTreeMap<String, TableInfo>,
) -> Result<BoundStage> {
    Ok(BoundStage {
        writes: Some(check_table(spec, &v.table, tables)?.name.clone()),
        maintenance: Some(Maintenance::Vacuum {
            retain_hours: v.retain_hours.value,
        }),
        ..empty(Work::Vacuum)
    })
}

pub(super) async fn bind_optimize(
    spec: &PipelineSpec,
    stage: &StageSpec,
    o: &OptimizeSpec,
    rendered: &RenderedStage,
    tables: &BTreeMap<String, TableInfo>,
    ctx: &SessionContext,
) -> Result<BoundStage> {
    let table = check_table(spec, &o.table, tables)?;
    let deleted_above = match (&o.deleted_above, &rendered.deleted_above) {
        (Some(spanned), Some(text)) => Some(deleted_above(spec, stage, o, spanned.span, text)?),
        _ => None,
    };
    let filter = rendered.text.as_deref();
    let parsed_filter = match (filter, &o.filter) {
        (Some(text), Some(spanned)) => {
            let at = spanned.span;
            Some(optimize_filter(spec, stage, table, text, at, ctx).await?)
        }
        _ => None,
    };
    for column in &o.zorder_by {
        check_zorder_column(spec, table, column)?;
    }
    Ok(BoundStage {
        writes: Some(table.name.clone()),
        maintenance: Some(Maintenance::Optimize {
            filter: filter.map(str::to_string),
            zorder_by: o.zorder_by.iter().map(|c| c.value.clone()).collect(),
            target_size: o.target_size,
            deleted_above,
        }),
        ..empty(Work::Optimize {
            filter: parsed_filter,
        })
    })
}

fn check_table<'t>(
    spec: &PipelineSpec,
    table: &Spanned<String>,
    tables: &'t BTreeMap<String, TableInfo>,
) -> Result<&'t TableInfo> {
    tables.get(&table.value).ok_or_else(|| {
        Problem::unknown_table(
            format!("`{}` is not a declared table", table.value),
            &table.value,
            tables.keys().map(String::as_str),
        )
        .in_source(&spec.yaml)
        .label(table.span, "unknown table")
    })
}

/// A problem with the stage's YAML at `span`.
fn yaml_problem(
    spec: &PipelineSpec,
    span: SourceSpan,
    code: Code,
    message: String,
    label: &str,
) -> Problem {
    Problem::invalid(code, message)
        .in_source(&spec.yaml)
        .label(span, label)
}

/// `deleted_above` (rendered `text`): a share of rows, and not with `zorder_by`.
fn deleted_above(
    spec: &PipelineSpec,
    stage: &StageSpec,
    o: &OptimizeSpec,
    span: SourceSpan,
    text: &str,
) -> Result<f64> {
    let share = text
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r));
    let Some(share) = share else {
        let message = format!(
            "`deleted_above` of stage `{}` is `{text}`: \
             it must be a share of rows, from 0 to 1",
            stage.name.value
        );
        let label = "not a number from 0 to 1";
        return Err(yaml_problem(spec, span, Code::BadValue, message, label));
    };
    if !o.zorder_by.is_empty() {
        let message =
            "`deleted_above` compacts partitions; it does not z-order (use two stages)".to_string();
        return Err(yaml_problem(
            spec,
            span,
            Code::BadValue,
            message,
            "with zorder_by",
        ));
    }
    Ok(share)
}

/// The `where` of an optimize stage (rendered `text`, declared at `span`): one SQL
/// predicate on partition columns only, which binds against the table.
async fn optimize_filter(
    spec: &PipelineSpec,
    stage: &StageSpec,
    table: &TableInfo,
    text: &str,
    span: SourceSpan,
    ctx: &SessionContext,
) -> Result<SqlExpr> {
    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| {
            let message = format!(
                "the `where` of stage `{}` is not a SQL predicate: {e}",
                stage.name.value
            );
            yaml_problem(spec, span, Code::SqlSyntax, message, "here")
        })?;
    for column in identifiers(&expr) {
        if !table.partition_columns.contains(&column) {
            let message = format!(
                "optimize filters name partition columns only; \
                 `{column}` is not a partition column of `{}`",
                table.name
            );
            let help = format!(
                "partition columns of `{}`: {}",
                table.name,
                list_or_none(&table.partition_columns)
            );
            let code = Code::NotAPartitionFilter;
            return Err(yaml_problem(spec, span, code, message, "in this filter").help(help));
        }
    }
    ctx.sql(&format!("SELECT 1 FROM {} WHERE {text}", table.name))
        .await
        .map_err(|e| {
            let message = format!(
                "the `where` of stage `{}`: {}",
                stage.name.value,
                e.strip_backtrace()
            );
            yaml_problem(spec, span, Code::Bind, message, "here")
        })?;
    Ok(expr)
}

/// A `zorder_by` column: a data column of the table.
fn check_zorder_column(
    spec: &PipelineSpec,
    table: &TableInfo,
    column: &Spanned<String>,
) -> Result<()> {
    let known: Vec<&str> = table
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    if !known.contains(&column.value.as_str()) {
        let help = did_you_mean(&column.value, known.iter().copied())
            .unwrap_or_else(|| format!("columns of `{}`: {}", table.name, known.join(", ")));
        let message = format!("`{}` is not a column of `{}`", column.value, table.name);
        let code = Code::UnknownColumn;
        return Err(yaml_problem(spec, column.span, code, message, "unknown column").help(help));
    }
    if table.partition_columns.contains(&column.value) {
        let message = format!(
            "`{}` is a partition column; z-order by data columns",
            column.value
        );
        let code = Code::ZorderPartitionColumn;
        return Err(yaml_problem(
            spec,
            column.span,
            code,
            message,
            "partition column",
        ));
    }
    Ok(())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn identifiers(expr: &SqlExpr) -> Vec<String> {
    let mut out = Vec::new();
    let _ = visit_expressions(expr, |e| {
        match e {
            SqlExpr::Identifier(i) => out.push(i.value.to_lowercase()),
            SqlExpr::CompoundIdentifier(parts) => {
                out.extend(parts.last().map(|i| i.value.to_lowercase()))
            }
            _ => {}
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    out
}
