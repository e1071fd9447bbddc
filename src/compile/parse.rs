//! Step 3: parse each stage's rendered SQL with DataFusion's bundled sqlparser:
//! exactly one statement of an allowed kind, and the relations it reads and writes.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    FromTable, ObjectName, Query, Spanned as _, Statement, TableFactor, TableObject, Visit, Visitor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};

use super::StageSql;
use crate::diag::{Code, Problem, Result};
use crate::plan::Work;

/// A relation name as written in the SQL, with its position in the rendered text.
#[derive(Clone, Debug)]
pub struct RelationRef {
    pub name: String,
    pub line: usize,
    pub column: usize,
    pub written: String,
}

#[derive(Clone, Debug)]
pub struct ParsedStage {
    pub statement: Statement,
    /// What the executor will run: the statement's parts it needs.
    pub work: Work,
    /// Relations read (CTE names excluded), in order of appearance, deduplicated.
    pub reads: Vec<RelationRef>,
    /// The table a MERGE / INSERT / DELETE writes.
    pub target: Option<RelationRef>,
}

pub fn parse(stage: &StageSql<'_>) -> Result<ParsedStage> {
    let statements =
        Parser::parse_sql(&GenericDialect {}, stage.sql).map_err(|e| parse_problem(stage, &e))?;
    let statement = match statements.as_slice() {
        [] => {
            return Err(stage
                .problem_at_start(
                    Code::EmptyStage,
                    format!("stage `{}` renders to no SQL statement", stage.name()),
                    "empty",
                )
                .help("a SQL stage holds exactly one statement"))
        }
        [one] => one.clone(),
        [_, second, ..] => {
            let loc = second.span().start;
            return Err(stage
                .problem_at(
                    Code::SeveralStatements,
                    format!(
                        "stage `{}` holds {} statements; one is expected",
                        stage.name(),
                        statements.len()
                    ),
                    loc.line as usize,
                    loc.column as usize,
                    None,
                    "second statement starts here",
                )
                .help("split the statements into stages: each stage runs one statement"));
        }
    };
    let (work, target) = classify(stage, &statement)?;
    let reads = relations_read(stage, &statement, target.as_ref())?;
    Ok(ParsedStage {
        statement,
        work,
        reads,
        target,
    })
}

fn classify(stage: &StageSql<'_>, statement: &Statement) -> Result<(Work, Option<RelationRef>)> {
    match statement {
        Statement::Query(query) if stage.stage.materialize => {
            Ok((Work::Materialized(query.clone()), None))
        }
        Statement::Query(query) => Ok((Work::View(query.clone()), None)),
        Statement::Insert(insert) => {
            let TableObject::TableName(name) = &insert.table else {
                return Err(not_allowed(
                    stage,
                    statement,
                    "INSERT into a table function",
                ));
            };
            let Some(source) = &insert.source else {
                return Err(not_allowed(stage, statement, "INSERT without a query"));
            };
            let work = Work::Insert {
                source: source.clone(),
                columns: insert
                    .columns
                    .iter()
                    .map(|c| c.to_string().to_lowercase())
                    .collect(),
                overwrite: insert.overwrite,
            };
            Ok((work, Some(relation(stage, name)?)))
        }
        Statement::Merge(merge) => match &merge.table {
            TableFactor::Table { name, .. } => Ok((
                Work::Merge(Box::new(statement.clone())),
                Some(relation(stage, name)?),
            )),
            _ => Err(not_allowed(
                stage,
                statement,
                "MERGE into something other than a table",
            )),
        },
        Statement::Delete(delete) => {
            let from = match &delete.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            match (delete.tables.as_slice(), from.as_slice()) {
                ([], [only]) if only.joins.is_empty() && delete.using.is_none() => {
                    match &only.relation {
                        TableFactor::Table { name, .. } => Ok((
                            Work::Delete {
                                selection: delete.selection.clone(),
                            },
                            Some(relation(stage, name)?),
                        )),
                        _ => Err(not_allowed(
                            stage,
                            statement,
                            "DELETE without a target table",
                        )),
                    }
                }
                _ => Err(not_allowed(
                    stage,
                    statement,
                    "DELETE of several tables or with USING",
                )),
            }
        }
        other => Err(not_allowed(stage, other, statement_name(other))),
    }
}

fn statement_name(statement: &Statement) -> &'static str {
    match statement {
        Statement::Drop { .. } => "DROP",
        Statement::Truncate { .. } => "TRUNCATE",
        Statement::Update { .. } => "UPDATE",
        Statement::CreateTable { .. } => "CREATE TABLE",
        Statement::CreateView { .. } => "CREATE VIEW",
        Statement::AlterTable { .. } => "ALTER TABLE",
        _ => "this statement",
    }
}

fn not_allowed(stage: &StageSql<'_>, statement: &Statement, what: &str) -> Problem {
    let loc = statement.span().start;
    let (line, col) = if loc.line == 0 {
        (1, 1)
    } else {
        (loc.line as usize, loc.column as usize)
    };
    let message = format!("{what} is not allowed in stage `{}`", stage.name());
    let help = "a SQL stage is one SELECT (defines a relation), INSERT [OVERWRITE] INTO, \
                MERGE INTO or DELETE FROM a declared table; \
                tables are created from their declared schema, \
                and maintenance is a stage of its own (optimize, vacuum)";
    stage
        .problem_at(
            Code::StatementNotAllowed,
            message,
            line,
            col,
            None,
            "not allowed here",
        )
        .help(help)
}

fn relation(stage: &StageSql<'_>, name: &ObjectName) -> Result<RelationRef> {
    let loc = name.span().start;
    let (line, column) = (loc.line as usize, loc.column as usize);
    let written = name.to_string();
    if name.0.len() != 1 {
        let message = format!("`{written}`: qualified names are not supported");
        let help = "refer to a table by its name under `tables:` in the pipeline, \
                    and to an earlier SELECT stage by the stage name";
        return Err(stage
            .problem_at(
                Code::QualifiedName,
                message,
                line,
                column,
                Some(&written),
                "qualified name",
            )
            .help(help));
    }
    let Some(ident) = name.0[0].as_ident() else {
        let message = format!("`{written}` is not a relation name");
        let help = "refer to a table by its name under `tables:`, \
                    or to an earlier SELECT stage by its name";
        return Err(stage
            .problem_at(
                Code::BadRelation,
                message,
                line,
                column,
                Some(&written),
                "not a name",
            )
            .help(help));
    };
    // DataFusion folds unquoted identifiers to lower case; do the same.
    let normalized = if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    };
    Ok(RelationRef {
        name: normalized,
        line,
        column,
        written,
    })
}

/// Relations in FROM / JOIN / USING positions, without CTE names and without the
/// write target's own occurrence.
fn relations_read(
    stage: &StageSql<'_>,
    statement: &Statement,
    target: Option<&RelationRef>,
) -> Result<Vec<RelationRef>> {
    let mut collector = RelationCollector::default();
    let _ = statement.visit(&mut collector);
    let mut reads: Vec<RelationRef> = Vec::new();
    for name in &collector.relations {
        let r = relation(stage, name)?;
        let is_target = target.is_some_and(|t| t.line == r.line && t.column == r.column);
        let is_cte = collector.ctes.contains(&r.name);
        if !is_target && !is_cte && !reads.iter().any(|x| x.name == r.name) {
            reads.push(r);
        }
    }
    Ok(reads)
}

#[derive(Default)]
struct RelationCollector {
    relations: Vec<ObjectName>,
    ctes: BTreeSet<String>,
}

impl Visitor for RelationCollector {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                let ident = &cte.alias.name;
                self.ctes.insert(if ident.quote_style.is_some() {
                    ident.value.clone()
                } else {
                    ident.value.to_lowercase()
                });
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        // Table functions (`generate_series(…)`, `unnest(…)`) carry args: not relations.
        if let TableFactor::Table {
            name, args: None, ..
        } = factor
        {
            self.relations.push(name.clone());
        }
        ControlFlow::Continue(())
    }
}

/// sqlparser reports positions inside its message: "… at Line: 3, Column: 14".
fn parse_problem(stage: &StageSql<'_>, err: &ParserError) -> Problem {
    let text = match err {
        ParserError::TokenizerError(s) | ParserError::ParserError(s) => s.clone(),
        ParserError::RecursionLimitExceeded => "the statement nests too deeply".to_string(),
    };
    let (message, line, col) = match text.rsplit_once(" at Line: ") {
        Some((msg, pos)) => {
            let mut nums = pos
                .split(", Column: ")
                .map(|n| n.trim().parse::<usize>().unwrap_or(1));
            (
                msg.to_string(),
                nums.next().unwrap_or(1),
                nums.next().unwrap_or(1),
            )
        }
        None => (text.clone(), 1, 1),
    };
    let token = message
        .rsplit_once("found: ")
        .map(|(_, t)| t.trim().to_string());
    let message = format!("SQL syntax error in stage `{}`: {message}", stage.name());
    let help = "the SQL is parsed after rendering: \
                positions are those of the rendered statement, mapped back to the template";
    stage
        .problem_at(
            Code::SqlSyntax,
            message,
            line,
            col,
            token.as_deref(),
            "syntax error here",
        )
        .help(help)
}
