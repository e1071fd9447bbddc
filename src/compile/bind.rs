//! Step 4: bind every stage with DataFusion, in program order, against the Delta
//! schemas and the output schemas of earlier stages. Unknown relations, unknown or
//! ambiguous columns and type errors are found here, before anything runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::SchemaError;
use datafusion::datasource::ViewTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Expr as SqlExpr;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

use super::catalog::{DeclaredTable, TableInfo};
use super::parse::{ParsedStage, RelationRef};
use super::StageSql;
use crate::diag::{did_you_mean, Code, Problem, Result};
use crate::plan::{CheckPlan, Maintenance, StageKind, Work};
use crate::render::Rendered;
use crate::spec::{PipelineSpec, StageBody};

/// A stage after binding: what it reads and writes by name, and its optimized
/// DataFusion plan for SQL stages.
#[derive(Debug)]
pub struct BoundStage {
    pub work: Work,
    /// Declared tables read.
    pub reads_tables: Vec<String>,
    /// Relations of earlier SELECT stages read.
    pub reads_relations: Vec<String>,
    /// Declared table written (MERGE/INSERT/DELETE target, maintenance table).
    pub writes: Option<String>,
    pub sql: Option<String>,
    pub logical: Option<LogicalPlan>,
    pub maintenance: Option<Maintenance>,
    /// Rendered `expect:` checks, in declared order.
    pub checks: Vec<CheckPlan>,
}

impl BoundStage {
    pub fn kind(&self) -> StageKind {
        self.work.kind()
    }
}

impl super::Compilation<'_> {
    /// Binds every stage in program order (see `bind_stages`).
    pub async fn bind(&self, parsed: &[Option<ParsedStage>]) -> Result<Vec<BoundStage>> {
        bind_stages(self.spec, self.rendered, parsed, &self.tables, &self.ctx).await
    }
}

async fn bind_stages(
    spec: &PipelineSpec,
    rendered: &Rendered,
    parsed: &[Option<ParsedStage>],
    tables: &BTreeMap<String, TableInfo>,
    ctx: &SessionContext,
) -> Result<Vec<BoundStage>> {
    let mut bound = Vec::with_capacity(spec.stages.len());
    for (index, stage) in spec.stages.iter().enumerate() {
        let r = &rendered.stages[index];
        let b = match (&stage.body, &parsed[index]) {
            (StageBody::Optimize(o), _) => {
                super::maintain::bind_optimize(spec, stage, o, r, tables, ctx).await?
            }
            (StageBody::Vacuum(v), _) => super::maintain::bind_vacuum(spec, v, tables)?,
            (_, Some(_)) => {
                let sql = StageSql {
                    spec,
                    stage,
                    sql: r.text.as_deref().unwrap_or(""),
                    lines: &r.lines,
                };
                bind_sql(&sql, &r.checks, index, parsed, tables, ctx).await?
            }
            (_, None) => unreachable!("SQL stages are parsed"),
        };
        bound.push(b);
    }
    Ok(bound)
}

pub(super) fn empty(work: Work) -> BoundStage {
    BoundStage {
        work,
        reads_tables: Vec::new(),
        reads_relations: Vec::new(),
        writes: None,
        sql: None,
        logical: None,
        maintenance: None,
        checks: Vec::new(),
    }
}

async fn bind_sql(
    sql: &StageSql<'_>,
    checks: &[String],
    index: usize,
    all: &[Option<ParsedStage>],
    tables: &BTreeMap<String, TableInfo>,
    ctx: &SessionContext,
) -> Result<BoundStage> {
    let parsed = all[index].as_ref().expect("SQL stages are parsed");
    let mut reads_tables = Vec::new();
    let mut reads_relations = Vec::new();
    for read in &parsed.reads {
        match resolve(sql, index, read, tables, all)? {
            Resolved::Table(t) => reads_tables.push(t),
            Resolved::Relation(r) => reads_relations.push(r),
        }
    }
    let writes = match &parsed.target {
        Some(target) => Some(resolve_target(sql, index, target, tables)?),
        None => None,
    };
    let state = ctx.state();
    let plan = state
        .statement_to_plan(DfStatement::Statement(Box::new(parsed.statement.clone())))
        .await
        .map_err(|e| df_problem(sql, &e, "bind"))?;
    let optimized = state
        .optimize(&plan)
        .map_err(|e| df_problem(sql, &e, "types"))?;
    super::assign::check_merge(sql, &plan)?;
    let kind = parsed.work.kind();
    if let Some(state) = &sql.stage.state {
        if !sql.spec.state.contains_key(&state.value) || !kind.defines_relation() {
            return Err(Problem::invalid(
                Code::BadStateStage,
                format!(
                    "stage `{}` records `{}`, which is not a state variable, or is not a SELECT",
                    sql.name(),
                    state.value
                ),
            )
            .in_source(&sql.spec.yaml)
            .label(state.span, "here")
            .help("declare it under `state:` and make the stage a SELECT of one value"));
        }
    }
    if sql.stage.report && !kind.defines_relation() {
        let span = sql.stage.name.span;
        let message = format!(
            "stage `{}` has `report: true` but defines no relation",
            sql.name()
        );
        let help = "only SELECT stages can report their rows; \
                    report a SELECT of what this stage writes instead";
        return Err(Problem::invalid(Code::ReportNotARelation, message)
            .in_source(&sql.spec.yaml)
            .label(span, "this stage")
            .help(help));
    }
    if kind.defines_relation() {
        // Later stages see this stage's output schema. A materialized relation is
        // computed once, so readers must not re-plan (and re-scan) its sources.
        let provider: Arc<dyn datafusion::catalog::TableProvider> = if sql.stage.materialize {
            Arc::new(DeclaredTable::new(Arc::new(
                plan.schema().as_arrow().clone(),
            )))
        } else {
            Arc::new(ViewTable::new(plan.clone(), Some(sql.sql.to_string())))
        };
        ctx.register_table(sql.name(), provider).map_err(|e| {
            Problem::failed(Code::Internal, format!("registering `{}`: {e}", sql.name()))
        })?;
    }
    let checks = match &sql.stage.expect {
        Some(expect) => {
            if kind != StageKind::Materialized {
                let message = format!(
                    "stage `{}` has `expect:` but is not a materialized SELECT",
                    sql.name()
                );
                let help = "checks run once on a computed relation: \
                            make the stage a SELECT with `materialize: true`";
                return Err(Problem::invalid(Code::ExpectationsNeedMaterialize, message)
                    .in_source(&sql.spec.yaml)
                    .label(sql.stage.name.span, "this stage")
                    .help(help));
            }
            bind_checks(sql, expect, checks, ctx).await?
        }
        None => Vec::new(),
    };
    Ok(BoundStage {
        work: parsed.work.clone(),
        reads_tables,
        reads_relations,
        writes,
        sql: Some(sql.sql.to_string()),
        logical: Some(optimized),
        maintenance: None,
        checks,
    })
}

/// Each check must be a boolean over the stage's output columns; errors point at
/// the check in the YAML.
async fn bind_checks(
    sql: &StageSql<'_>,
    expect: &crate::spec::ExpectSpec,
    rendered: &[String],
    ctx: &SessionContext,
) -> Result<Vec<CheckPlan>> {
    let mut bound = Vec::with_capacity(rendered.len());
    for (check, text) in expect.checks.iter().zip(rendered) {
        let query = format!("SELECT ({text}) AS passed FROM {}", sql.name());
        let problem = |message: String| {
            Problem::invalid(
                Code::BadCheck,
                format!(
                    "check `{}` of stage `{}`: {message}",
                    check.name.value,
                    sql.name()
                ),
            )
            .in_source(&sql.spec.yaml)
            .label(check.sql.span, "this check")
            .help(format!(
                "a check is a SQL boolean over the columns of `{}`; a row passes when it is true",
                sql.name()
            ))
        };
        let df = ctx
            .sql(&query)
            .await
            .map_err(|e| problem(e.strip_backtrace().lines().next().unwrap_or("").to_string()))?;
        let data_type = df.schema().field(0).data_type().clone();
        if data_type != datafusion::arrow::datatypes::DataType::Boolean {
            return Err(problem(format!("it is of type {data_type}, not a boolean")));
        }
        // The whole text is one expression (the query above would also accept
        // `a) OR (b`); the executor binds this parsed form.
        let expr = whole_expression(text).map_err(|e| problem(e.to_string()))?;
        bound.push(CheckPlan {
            name: check.name.value.clone(),
            sql: text.clone(),
            expr,
            action: check.action,
        });
    }
    Ok(bound)
}

/// `text` parsed as exactly one SQL expression.
fn whole_expression(text: &str) -> std::result::Result<SqlExpr, ParserError> {
    let mut parser = Parser::new(&GenericDialect {}).try_with_sql(text)?;
    let expr = parser.parse_expr()?;
    parser.expect_token(&Token::EOF)?;
    Ok(expr)
}

enum Resolved {
    Table(String),
    Relation(String),
}

/// A relation name is a declared table or an earlier SELECT stage: anything else
/// is an error that says what the name is instead.
fn resolve(
    sql: &StageSql<'_>,
    index: usize,
    read: &RelationRef,
    tables: &BTreeMap<String, TableInfo>,
    parsed: &[Option<ParsedStage>],
) -> Result<Resolved> {
    let defines_relation = |i: usize| {
        parsed[i]
            .as_ref()
            .is_some_and(|p| p.work.kind().defines_relation())
    };
    if tables.contains_key(&read.name) {
        return Ok(Resolved::Table(read.name.clone()));
    }
    let stages = &sql.spec.stages;
    let at = |code, message: String, label: &str| {
        sql.problem_at(
            code,
            message,
            read.line,
            read.column,
            Some(&read.written),
            label,
        )
    };
    match stages.iter().position(|s| s.name.value == read.name) {
        Some(i) if i < index && defines_relation(i) => Ok(Resolved::Relation(read.name.clone())),
        Some(i) if i < index => {
            let message = format!(
                "stage `{}` reads `{}`, but stage `{}` writes a table and defines no relation",
                sql.name(),
                read.name,
                read.name
            );
            let help =
                "only SELECT stages define relations; read the table the stage writes instead";
            Err(at(Code::NotARelation, message, "not a relation").help(help))
        }
        Some(i) => {
            let message = format!(
                "stage `{}` reads `{}`, which no earlier stage defines",
                sql.name(),
                read.name
            );
            let help = format!(
                "stages run in program order: `{}` is stage {} of the pipeline \
                 and `{}` is stage {}; move `{}` before `{}`",
                read.name,
                i + 1,
                sql.name(),
                index + 1,
                read.name,
                sql.name()
            );
            Err(at(Code::ReadBeforeDefined, message, "defined only later").help(help))
        }
        None => {
            let earlier = stages[..index]
                .iter()
                .enumerate()
                .filter(|(i, _)| defines_relation(*i))
                .map(|(_, s)| s.name.value.as_str());
            let known: Vec<&str> = tables.keys().map(String::as_str).chain(earlier).collect();
            let help = did_you_mean(&read.name, known.iter().copied()).unwrap_or_else(|| {
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                format!("known relations here: {known}")
            });
            let message = format!(
                "stage `{}` reads `{}`, which is neither a declared table nor an earlier stage",
                sql.name(),
                read.name
            );
            let help = format!("{help} Tables are declared under `tables:` in the pipeline.");
            Err(at(Code::UnknownRelation, message, "unknown relation").help(help))
        }
    }
}

fn resolve_target(
    sql: &StageSql<'_>,
    index: usize,
    target: &RelationRef,
    tables: &BTreeMap<String, TableInfo>,
) -> Result<String> {
    if tables.contains_key(&target.name) {
        return Ok(target.name.clone());
    }
    let is_stage = sql.spec.stages[..index]
        .iter()
        .any(|s| s.name.value == target.name);
    let known: Vec<&str> = tables.keys().map(String::as_str).collect();
    let help = if is_stage {
        "stages write declared Delta tables; a SELECT stage's relation is read-only".to_string()
    } else {
        did_you_mean(&target.name, known.iter().copied()).unwrap_or_else(|| {
            "declare the table under `tables:` (with a schema, so the run creates it)".into()
        })
    };
    Err(sql
        .problem_at(
            Code::UnknownTable,
            format!(
                "stage `{}` writes `{}`, which is not a declared table",
                sql.name(),
                target.name
            ),
            target.line,
            target.column,
            Some(&target.written),
            "not a declared table",
        )
        .help(help))
}

/// A DataFusion planning error as a diagnostic: DataFusion's own span when it has
/// one, else the offending name found in the message, else the statement start.
fn df_problem(sql: &StageSql<'_>, err: &DataFusionError, phase: &str) -> Problem {
    let message = err.strip_backtrace();
    let message = message
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("Schema error: ")
        .to_string();
    // By the error's type (the root of DataFusion's context chain), not its text.
    let missing = match err.find_root() {
        DataFusionError::SchemaError(e, _) => match e.as_ref() {
            SchemaError::FieldNotFound { field, .. } => Some(Some(field.name.clone())),
            SchemaError::AmbiguousReference { .. } => Some(None),
            _ => None,
        },
        _ => None,
    };
    // Type coercion failures have no variant of their own (they are `Plan` errors
    // raised while binding), so they alone are told apart by their wording.
    let coercion = match err.find_root() {
        DataFusionError::Plan(m) => m.starts_with("Cannot coerce") || m.contains("type coercion"),
        _ => false,
    };
    let (code, label) = match (&missing, phase) {
        (Some(Some(_)), _) => (Code::UnknownColumn, "unknown column"),
        (Some(None), _) => (Code::AmbiguousColumn, "ambiguous reference"),
        (None, "types") => (Code::TypeError, "type error"),
        (None, _) if coercion => (Code::TypeError, "type error"),
        (None, _) => (Code::BindError, "here"),
    };
    let text = format!("stage `{}`: {message}", sql.name());
    if let Some(span) = err.diagnostic().and_then(|d| d.span) {
        if span.start.line > 0 {
            return sql.problem_at(
                code,
                text,
                span.start.line as usize,
                span.start.column as usize,
                None,
                label,
            );
        }
    }
    // The column the user wrote, found near the error's line of the template.
    let token = missing.flatten();
    match token {
        Some(t) => sql.problem_at(code, text, 1, 1, Some(&t), label),
        None => sql.problem_at_start(code, text, label),
    }
}
