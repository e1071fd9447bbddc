//! Steps 3–5 of the flow: parse → bind → analyze, ending in the `Plan`.
//!
//! Each step lives in its own module; this one runs them in order and holds the
//! helper that turns a position in rendered SQL into a labelled span in the
//! template the user wrote.

pub mod analyze;
pub mod assign;
pub mod bind;
pub mod catalog;
pub mod dag;
pub mod estimate;
mod maintain;
pub mod parse;
mod scans;

use std::collections::BTreeMap;

use crate::diag::{Problem, Result, Source};
use crate::plan::Plan;
use crate::render::{LineMap, Rendered};
use crate::spec::{PipelineSpec, StageSpec};
use catalog::TableInfo;

/// What a scan budget the plan passes is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budgets {
    /// An error: `plan` and `run` stop (exit 2).
    Enforce,
    /// A warning of the plan, for a review to show.
    Report,
}

/// Compiles a rendered pipeline into its Plan. Reads Delta logs, never data files,
/// and writes nothing.
pub async fn compile(
    spec: &PipelineSpec,
    rendered: &Rendered,
    warehouse: &crate::delta::Warehouse,
    budgets: Budgets,
) -> Result<Plan> {
    let ctx = crate::session::new_context();
    let tables = catalog::open(spec, rendered, warehouse, &ctx).await?;
    let compilation = Compilation {
        spec,
        rendered,
        tables,
        ctx,
    };
    let mut parsed = Vec::with_capacity(spec.stages.len());
    for (stage, r) in spec.stages.iter().zip(&rendered.stages) {
        parsed.push(match (stage.template(), &r.text) {
            (Some(_), Some(sql)) => Some(parse::parse(&StageSql {
                spec,
                stage,
                sql,
                lines: &r.lines,
            })?),
            _ => None,
        });
    }
    let bound = compilation.bind(&parsed).await?;
    compilation.analyze(bound, budgets).await
}

/// What the compile steps after the catalog share, and are methods of: the spec,
/// its rendering, the declared tables as their logs have them, and the session
/// the statements are bound in.
pub struct Compilation<'a> {
    pub spec: &'a PipelineSpec,
    pub rendered: &'a Rendered,
    pub tables: BTreeMap<String, TableInfo>,
    pub ctx: datafusion::prelude::SessionContext,
}

/// A stage's rendered SQL together with what is needed to point into its template.
pub struct StageSql<'a> {
    pub spec: &'a PipelineSpec,
    pub stage: &'a StageSpec,
    pub sql: &'a str,
    pub lines: &'a LineMap,
}

impl StageSql<'_> {
    pub fn name(&self) -> &str {
        &self.stage.name.value
    }

    /// A problem at 1-based `line`/`column` of the rendered SQL, labelled in the
    /// template. When the template line holds template syntax, the rendered SQL is
    /// attached as a related excerpt, since that is where the exact text is.
    pub fn problem_at(
        &self,
        code: crate::diag::Code,
        message: String,
        line: usize,
        column: usize,
        token: Option<&str>,
        label: &str,
    ) -> Problem {
        let rendered = Source::new("rendered", self.sql.to_string());
        let template = self.stage.template().expect("SQL stages have templates");
        let rendered_line = rendered.line(line).unwrap_or("");
        let token_len = token
            .map(str::len)
            .filter(|n| *n > 0)
            .unwrap_or_else(|| word_len(rendered_line, column));
        let template_line = self.lines.template_line(line);
        let (t_line, t_col, t_len) = find_token(template, template_line, token)
            .or_else(|| {
                (template.line(template_line) == Some(rendered_line)).then_some((
                    template_line,
                    column,
                    token_len,
                ))
            })
            .or_else(|| find_expression(template, template_line))
            .unwrap_or_else(|| {
                let text = template.line(template_line).unwrap_or("");
                let indent = text.len() - text.trim_start().len();
                (template_line, indent + 1, text.trim().len())
            });
        let (source, offset) = self.spec.locate_in_template(self.stage, t_line, t_col);
        let mut problem = Problem::invalid(code, message)
            .in_source(&source)
            .label((offset, t_len), label);
        let templated = template
            .line(template_line)
            .is_some_and(|l| l.contains("{{") || l.contains("{%"));
        if templated {
            let excerpt = Source::new(
                format!("{} (rendered)", template.name),
                self.sql.to_string(),
            );
            problem = problem.with_related(vec![Problem::invalid(code, "in the rendered SQL")
                .in_source(&excerpt)
                .label((excerpt.offset_of(line, column), token_len), label)]);
        }
        problem
    }

    pub fn problem_at_start(
        &self,
        code: crate::diag::Code,
        message: String,
        label: &str,
    ) -> Problem {
        self.problem_at(code, message, 1, 1, None, label)
    }
}

/// Length of the word starting at a 1-based column (at least 1).
fn word_len(line: &str, column: usize) -> usize {
    let rest: String = line.chars().skip(column.saturating_sub(1)).collect();
    rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len())
        .max(1)
}

/// Finds `token` as a whole word near `line` of the template (the line itself
/// first, then its neighbours), case-insensitively.
fn find_token(
    template: &Source,
    line: usize,
    token: Option<&str>,
) -> Option<(usize, usize, usize)> {
    let token = token?.trim_matches(|c| c == '"' || c == '`' || c == '\'');
    if token.is_empty() {
        return None;
    }
    // ASCII case folding keeps byte offsets valid in `text`.
    let needle = token.to_ascii_lowercase();
    for delta in [0isize, -1, 1, -2, 2, -3, 3] {
        let l = line as isize + delta;
        if l < 1 {
            continue;
        }
        let Some(text) = template.line(l as usize) else {
            continue;
        };
        let lower = text.to_ascii_lowercase();
        let mut from = 0;
        while let Some(pos) = lower[from..].find(&needle) {
            let start = from + pos;
            let end = start + needle.len();
            let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            if boundary(lower[..start].chars().next_back()) && boundary(lower[end..].chars().next())
            {
                let col = text[..start].chars().count() + 1;
                return Some((l as usize, col, token.len()));
            }
            from = end;
        }
    }
    None
}

/// The nearest `{{ … }}` to `line`: when the offending text is not in the template,
/// an expression produced it.
fn find_expression(template: &Source, line: usize) -> Option<(usize, usize, usize)> {
    for delta in [0isize, -1, 1, -2, 2, -3, 3] {
        let l = line as isize + delta;
        let Some(text) = (l >= 1).then(|| template.line(l as usize)).flatten() else {
            continue;
        };
        if let Some(start) = text.find("{{") {
            let end = text[start..]
                .find("}}")
                .map_or(text.len(), |e| start + e + 2);
            return Some((l as usize, text[..start].chars().count() + 1, end - start));
        }
    }
    None
}
