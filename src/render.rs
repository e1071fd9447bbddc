//! Step 2: render table locations, SQL templates and maintenance filters with
//! minijinja (strict undefined), keeping a map from rendered lines back to template
//! lines so that later steps can point SQL errors into the template.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{json, Map, Value};

use crate::diag::{Code, Problem, Result, Source};
use crate::spec::{PipelineSpec, Spanned, StageBody, StageSpec};

/// The rendered pipeline: locations and one entry per stage, in program order.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The value of every var as the templates saw it (state values included).
    pub vars: BTreeMap<String, Value>,
    pub locations: BTreeMap<String, String>,
    pub stages: Vec<RenderedStage>,
}

#[derive(Clone, Debug)]
pub struct RenderedStage {
    /// Rendered SQL, or the rendered partition filter of an optimize stage.
    pub text: Option<String>,
    /// The rendered `deleted_above` of an optimize stage.
    pub deleted_above: Option<String>,
    pub lines: LineMap,
    /// The rendered SQL of each `expect:` check, in declared order.
    pub checks: Vec<String>,
}

/// Rendered line (0-based) → template line (1-based). Built by aligning the two
/// texts line by line: lines without template syntax match exactly; lines produced
/// by expressions and loops map to the template lines they came from.
#[derive(Clone, Debug, Default)]
pub struct LineMap(Vec<usize>);

impl LineMap {
    pub fn build(template: &str, rendered: &str) -> Self {
        use similar::{DiffOp, TextDiff};
        let diff = TextDiff::from_lines(template, rendered);
        let mut map = vec![1; rendered.lines().count().max(1)];
        let template_lines = template.lines().count().max(1);
        for op in diff.ops() {
            let (old, old_len, new, new_len) = match *op {
                DiffOp::Equal {
                    old_index,
                    new_index,
                    len,
                } => (old_index, len, new_index, len),
                DiffOp::Insert {
                    old_index,
                    new_index,
                    new_len,
                } => (old_index, 0, new_index, new_len),
                DiffOp::Replace {
                    old_index,
                    old_len,
                    new_index,
                    new_len,
                } => (old_index, old_len, new_index, new_len),
                DiffOp::Delete { .. } => continue,
            };
            for k in 0..new_len {
                let t = old + k.min(old_len.saturating_sub(1));
                if let Some(slot) = map.get_mut(new + k) {
                    *slot = (t + 1).min(template_lines);
                }
            }
        }
        LineMap(map)
    }

    /// Template line (1-based) of a rendered line (1-based).
    pub fn template_line(&self, rendered_line: usize) -> usize {
        self.0
            .get(rendered_line.saturating_sub(1))
            .copied()
            .unwrap_or_else(|| self.0.last().copied().unwrap_or(1))
    }
}

/// Renders everything the spec templates. Fails on the first template error.
/// `locations` are the tables' (`locations`), `state` the values state variables
/// take for this run (`crate::state::resolve`).
pub async fn render(
    spec: &PipelineSpec,
    locations: BTreeMap<String, String>,
    state: &BTreeMap<String, Value>,
    warehouse: &crate::delta::Warehouse,
) -> Result<Rendered> {
    let loaded: Arc<Mutex<BTreeMap<String, Source>>> = Arc::default();
    let env = environment(&spec.root, loaded.clone());
    let vars = vars(spec, state);

    // Templates may depend on whether a table exists (optional inputs); the check
    // reads at most a Delta log's location, never data.
    let mut exists = BTreeMap::new();
    for (name, location) in &locations {
        exists.insert(name.clone(), warehouse.exists(name, location).await);
    }
    let mut context = vars.clone();
    context.insert("pipeline".into(), json!({ "name": spec.name.value }));
    context.insert(
        "tables".into(),
        Value::Object(
            locations
                .iter()
                .map(|(n, l)| {
                    (
                        n.clone(),
                        json!({ "name": n, "location": l, "exists": exists[n] }),
                    )
                })
                .collect(),
        ),
    );

    let mut stages = Vec::with_capacity(spec.stages.len());
    for stage in &spec.stages {
        let mut ctx = context.clone();
        ctx.insert("stage".into(), json!({ "name": stage.name.value }));
        let rendered = match &stage.body {
            StageBody::SqlFile { template, .. } | StageBody::InlineSql { template, .. } => {
                let sql = render_template(
                    &env,
                    spec,
                    stage,
                    template,
                    Value::Object(ctx.clone()),
                    &loaded,
                )?;
                RenderedStage {
                    lines: LineMap::build(&template.text, &sql),
                    text: Some(sql),
                    deleted_above: None,
                    checks: Vec::new(),
                }
            }
            StageBody::Optimize(o) => {
                let render = |f: &Option<Spanned<String>>| {
                    f.as_ref()
                        .map(|f| render_yaml_value(&env, spec, f, Value::Object(ctx.clone())))
                        .transpose()
                };
                RenderedStage {
                    text: render(&o.filter)?,
                    deleted_above: render(&o.deleted_above)?,
                    lines: LineMap::default(),
                    checks: Vec::new(),
                }
            }
            StageBody::Vacuum(_) => RenderedStage {
                text: None,
                deleted_above: None,
                lines: LineMap::default(),
                checks: Vec::new(),
            },
        };
        let mut rendered = rendered;
        for check in stage.expect.iter().flat_map(|e| &e.checks) {
            rendered.checks.push(render_yaml_value(
                &env,
                spec,
                &check.sql,
                Value::Object(ctx.clone()),
            )?);
        }
        stages.push(rendered);
    }
    Ok(Rendered {
        vars: vars.into_iter().collect(),
        locations,
        stages,
    })
}

/// The vars templates see: each declared or given value, a state variable's
/// recorded value in its place.
fn vars(spec: &PipelineSpec, state: &BTreeMap<String, Value>) -> Map<String, Value> {
    spec.vars
        .iter()
        .map(|(k, v)| (k.clone(), state.get(k).unwrap_or(&v.value).clone()))
        .collect()
}

/// Table locations, rendered once, before state: the state step reads its values
/// from those tables, so a location sees declared and given values only.
pub fn locations(spec: &PipelineSpec) -> Result<BTreeMap<String, String>> {
    let env = environment(&spec.root, Arc::default());
    let context = Value::Object(vars(spec, &BTreeMap::new()));
    let mut locations = BTreeMap::new();
    for (name, table) in &spec.tables {
        let location = render_yaml_value(&env, spec, &table.location, context.clone())?;
        locations.insert(name.clone(), location);
    }
    Ok(locations)
}

/// `{{ value | literal }}`: a value as an SQL literal — a string quoted with its
/// quotes doubled, a number or boolean as itself, none as NULL, a list as literals
/// separated by commas (for `IN (…)`). Vars may come from a command line or a pull
/// request: every template that puts one inside SQL quotes uses this, so a value
/// can never end the literal and add SQL of its own.
pub fn literal(value: minijinja::Value) -> std::result::Result<String, minijinja::Error> {
    use minijinja::value::ValueKind;
    Ok(match value.kind() {
        ValueKind::Undefined | ValueKind::None => "NULL".to_string(),
        ValueKind::Bool => if value.is_true() { "TRUE" } else { "FALSE" }.to_string(),
        ValueKind::Number => value.to_string(),
        ValueKind::Seq => {
            let items: std::result::Result<Vec<String>, _> =
                value.try_iter()?.map(literal).collect();
            items?.join(", ")
        }
        ValueKind::String => format!("'{}'", value.as_str().unwrap_or("").replace('\'', "''")),
        _ => {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!(
                    "`literal` takes strings, numbers, booleans, none or lists, not {}",
                    value.kind()
                ),
            ))
        }
    })
}

/// One environment for the whole pipeline: strict undefined, debug info on (for
/// error ranges in release builds), and a loader for `{% import %}` of shared macros
/// by path relative to the project root.
fn environment(root: &Path, loaded: Arc<Mutex<BTreeMap<String, Source>>>) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_debug(true);
    env.add_filter("literal", literal);
    let root: PathBuf = root.to_path_buf();
    env.set_loader(move |name: &str| {
        match crate::spec::read_project_file(&root, name) {
            Ok(text) => {
                loaded
                    .lock()
                    .expect("loader lock")
                    .insert(name.to_string(), Source::new(name, text.clone()));
                Ok(Some(text))
            }
            Err(crate::spec::ProjectFileError::Io(e))
                if e.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(crate::spec::ProjectFileError::Io(e)) => Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("cannot read template {name}: {e}"),
            )),
            // Not read: a template may come from an untrusted pull request.
            Err(crate::spec::ProjectFileError::Outside(why)) => Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("{why}: templates include and import only files under the project root"),
            )),
        }
    });
    env
}

fn render_template(
    env: &Environment<'static>,
    spec: &PipelineSpec,
    stage: &StageSpec,
    template: &Source,
    ctx: Value,
    loaded: &Mutex<BTreeMap<String, Source>>,
) -> Result<String> {
    let name = template_name(spec, stage);
    let tmpl = env
        .template_from_named_str(&name, &template.text)
        .map_err(|e| template_problem(spec, stage, &name, &e, loaded))?;
    tmpl.render(minijinja::Value::from(minijinja::value::Serde(&ctx)))
        .map_err(|e| template_problem(spec, stage, &name, &e, loaded))
}

/// The name minijinja knows a stage template by (errors carry it).
fn template_name(spec: &PipelineSpec, stage: &StageSpec) -> String {
    match &stage.body {
        StageBody::SqlFile { path, .. } => path.value.clone(),
        _ => format!("{}#{}", spec.yaml.name, stage.name.value),
    }
}

/// Points a minijinja error at its file and line: the stage template, an imported
/// macro file, or (for inline SQL) the YAML.
fn template_problem(
    spec: &PipelineSpec,
    stage: &StageSpec,
    stage_template: &str,
    err: &minijinja::Error,
    loaded: &Mutex<BTreeMap<String, Source>>,
) -> Problem {
    let inner = innermost(err);
    let code = match inner.kind() {
        minijinja::ErrorKind::SyntaxError => Code::TemplateSyntax,
        minijinja::ErrorKind::UndefinedError => Code::UndefinedVariable,
        _ => Code::TemplateError,
    };
    let detail = inner
        .detail()
        .map(str::to_string)
        .unwrap_or_else(|| inner.kind().to_string());
    let message = format!(
        "{} in stage `{}`: {detail}",
        kind_text(inner.kind()),
        stage.name.value
    );
    let mut problem = Problem::invalid(code, message);
    if inner.kind() == minijinja::ErrorKind::UndefinedError {
        let mut names: Vec<&String> = spec.vars.keys().collect();
        names.sort();
        problem = problem.help(format!(
            "templates see the pipeline's vars ({}), `tables.<name>.location`, `pipeline.name` and `stage.name`",
            names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    let Some(name) = inner.name() else {
        return problem;
    };
    let (source, offset, len) = if name == stage_template {
        let template = stage.template().expect("SQL stage");
        let range = inner.range().unwrap_or(0..0);
        let (line, col) = line_col(&template.text, range.start);
        let (src, off) = spec.locate_in_template(stage, line, col);
        (src, off, range.len())
    } else {
        match loaded.lock().expect("loader lock").get(name) {
            Some(src) => {
                let range = inner.range().unwrap_or(0..0);
                (src.clone(), range.start, range.len())
            }
            None => return problem,
        }
    };
    problem
        .in_source(&source)
        .label((offset, len), kind_label(inner.kind()))
}

fn innermost(err: &minijinja::Error) -> &minijinja::Error {
    let mut best = err;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = cur {
        if let Some(m) = e.downcast_ref::<minijinja::Error>() {
            if m.line().is_some() {
                best = m;
            }
        }
        cur = e.source();
    }
    best
}

fn kind_text(kind: minijinja::ErrorKind) -> &'static str {
    match kind {
        minijinja::ErrorKind::SyntaxError => "template syntax error",
        minijinja::ErrorKind::UndefinedError => "undefined template value",
        minijinja::ErrorKind::TemplateNotFound => "template not found",
        _ => "template error",
    }
}

fn kind_label(kind: minijinja::ErrorKind) -> &'static str {
    match kind {
        minijinja::ErrorKind::UndefinedError => "undefined here",
        minijinja::ErrorKind::SyntaxError => "syntax error here",
        _ => "here",
    }
}

/// Renders a templated YAML value (a table location, an optimize filter); errors
/// point at the value in the YAML.
fn render_yaml_value(
    env: &Environment<'static>,
    spec: &PipelineSpec,
    value: &Spanned<String>,
    ctx: Value,
) -> Result<String> {
    env.render_str(
        &value.value,
        minijinja::Value::from(minijinja::value::Serde(&ctx)),
    )
    .map_err(|e| {
        let inner = innermost(&e);
        let detail = inner
            .detail()
            .map(str::to_string)
            .unwrap_or_else(|| inner.kind().to_string());
        Problem::invalid(
            Code::TemplateError,
            format!("{}: {detail}", kind_text(inner.kind())),
        )
        .in_source(&spec.yaml)
        .label(value.span, "in this value")
        .help("values may use the pipeline's vars, e.g. `{{ warehouse }}/orders`")
    })
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod literal_tests {
    use super::literal;
    use minijinja::Value;

    #[test]
    fn values_become_sql_literals() {
        let text = |v: Value| literal(v).unwrap();
        assert_eq!(text(Value::from("it's")), "'it''s'");
        assert_eq!(text(Value::from("x' OR true --")), "'x'' OR true --'");
        assert_eq!(text(Value::from(36)), "36");
        assert_eq!(text(Value::from(true)), "TRUE");
        assert_eq!(text(Value::from(())), "NULL");
        assert_eq!(text(Value::from(vec!["1", "4"])), "'1', '4'");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_map_follows_loops_and_expressions() {
        let template = "SELECT\n{% for c in cols %}\n  {{ c }},\n{% endfor %}\n  1\nFROM t\n";
        let rendered = "SELECT\n  a,\n  b,\n  1\nFROM t\n";
        let map = LineMap::build(template, rendered);
        assert_eq!(map.template_line(1), 1);
        assert!((2..=4).contains(&map.template_line(2)));
        assert_eq!(map.template_line(4), 5);
        assert_eq!(map.template_line(5), 6);
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
