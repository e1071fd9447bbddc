//! Step 1 of the flow: read the pipeline YAML into a checked `PipelineSpec`.
//!
//! The YAML is parsed with spans (marked-yaml) and walked by hand rather than with
//! serde, so that every complaint — an unknown key with a suggestion, a missing SQL
//! file, a duplicate stage — can point at the exact key or value in the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use marked_yaml::{types::MarkedMappingNode, types::MarkedScalarNode, Node};
use miette::SourceSpan;
use serde_json::Value;

use crate::diag::{did_you_mean, Problem, Result, Source};

mod expect;
pub use expect::{CheckAction, CheckSpec, ExpectSpec, QUARANTINE_COLUMNS};

/// A value together with where it was written in the pipeline YAML.
#[derive(Clone, Debug)]
pub struct Spanned<T> {
    pub value: T,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct PipelineSpec {
    /// The project root: template paths and `sql/macros/` are relative to it.
    pub root: PathBuf,
    pub yaml: Source,
    pub name: Spanned<String>,
    pub description: Option<String>,
    /// Declared variables with their values after `--var` overrides.
    pub vars: BTreeMap<String, Var>,
    /// State variables (also in `vars`): name → the table whose commits record it.
    pub state: BTreeMap<String, Spanned<String>>,
    pub tables: BTreeMap<String, TableSpec>,
    /// In program order.
    pub stages: Vec<StageSpec>,
}

#[derive(Clone, Debug)]
pub struct Var {
    pub value: Value,
    pub span: SourceSpan,
    /// True when `--var` replaced the default.
    pub overridden: bool,
}

#[derive(Clone, Debug)]
pub struct TableSpec {
    pub name: Spanned<String>,
    /// Location template (rendered with the vars in the render step).
    pub location: Spanned<String>,
    pub description: Option<String>,
    /// Declared schema, used to create the table when it does not exist.
    pub schema: Option<Vec<ColumnSpec>>,
    pub partition_by: Vec<Spanned<String>>,
    /// Scan budget enforced by `plan`: at most this many full scans per run.
    pub max_full_scans: Option<Spanned<u64>>,
    /// A table that may be absent: then it is not created and templates see
    /// `tables.<name>.exists` false (and must not read it).
    pub optional: bool,
}

#[derive(Clone, Debug)]
pub struct ColumnSpec {
    pub name: Spanned<String>,
    pub data_type: Spanned<String>,
    pub nullable: bool,
}

#[derive(Clone, Debug)]
pub struct StageSpec {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub body: StageBody,
    pub materialize: bool,
    /// The relation's rows go into the run report (for small summaries, e.g. counts).
    pub report: bool,
    /// The state variable this stage's single value records (see `PipelineSpec::state`).
    pub state: Option<Spanned<String>>,
    pub after: Vec<Spanned<String>>,
    /// Row checks on the stage's output (`expect:`).
    pub expect: Option<ExpectSpec>,
}

#[derive(Clone, Debug)]
pub enum StageBody {
    /// SQL from a template file (path relative to the project root).
    SqlFile {
        path: Spanned<String>,
        template: Source,
    },
    /// SQL written inline in the YAML (`query:`); `origin` maps template lines back
    /// into the YAML.
    InlineSql {
        template: Source,
        origin: InlineOrigin,
    },
    Optimize(OptimizeSpec),
    Vacuum(VacuumSpec),
}

/// Where an inline template's text sits in the YAML file, so that a template
/// line and column can be turned into a YAML offset.
#[derive(Clone, Debug)]
pub struct InlineOrigin {
    /// 1-based YAML line of the template's first line.
    pub first_line: usize,
    /// For a one-line scalar, the 1-based YAML column of its first character; for a
    /// block scalar (`|`), None: each line starts after its indentation.
    pub first_column: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct OptimizeSpec {
    pub table: Spanned<String>,
    /// A partition predicate (SQL), e.g. `ds >= '2024-01-01'`; templated.
    pub filter: Option<Spanned<String>>,
    pub zorder_by: Vec<Spanned<String>>,
    pub target_size: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct VacuumSpec {
    pub table: Spanned<String>,
    pub retain_hours: Spanned<u64>,
}

impl StageSpec {
    /// Template source for SQL stages.
    pub fn template(&self) -> Option<&Source> {
        match &self.body {
            StageBody::SqlFile { template, .. } | StageBody::InlineSql { template, .. } => {
                Some(template)
            }
            _ => None,
        }
    }
}

const TOP_KEYS: &[&str] = &["name", "description", "vars", "state", "tables", "stages"];
const STATE_KEYS: &[&str] = &["table", "default"];
const TABLE_KEYS: &[&str] = &[
    "location",
    "description",
    "schema",
    "partition_by",
    "max_full_scans",
    "optional",
];
const COLUMN_KEYS: &[&str] = &["name", "type", "nullable"];
const STAGE_KEYS: &[&str] = &[
    "name",
    "description",
    "sql",
    "query",
    "materialize",
    "report",
    "state",
    "after",
    "optimize",
    "vacuum",
    "expect",
];
const OPTIMIZE_KEYS: &[&str] = &["table", "where", "zorder_by", "target_size"];
const VACUUM_KEYS: &[&str] = &["table", "retain_hours"];

/// Loads and checks a pipeline file; `overrides` are the `--var key=value` pairs.
pub fn load(
    path: &Path,
    root: Option<&Path>,
    overrides: &[(String, String)],
) -> Result<PipelineSpec> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problem::invalid(
            "pipeline_unreadable",
            format!("cannot read pipeline {}: {e}", path.display()),
        )
    })?;
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => project_root(path),
    };
    let name = relative_name(path, &root);
    let yaml = Source::new(name, text);
    Loader {
        yaml: &yaml,
        root: &root,
    }
    .pipeline(overrides)
}

/// The nearest ancestor of the pipeline's directory that holds a `sql/` folder
/// (the layout of docs/design.md §6), else the pipeline's own directory.
pub fn project_root(pipeline: &Path) -> PathBuf {
    let abs = std::path::absolute(pipeline).unwrap_or_else(|_| pipeline.to_path_buf());
    let dir = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    for candidate in dir.ancestors() {
        if candidate.join("sql").is_dir() {
            return candidate.to_path_buf();
        }
        if candidate.join(".git").exists() {
            break;
        }
    }
    dir
}

/// A path as the user knows it: relative to the project root when possible.
pub fn relative_name(path: &Path, root: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    abs.strip_prefix(&root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

struct Loader<'a> {
    yaml: &'a Source,
    root: &'a Path,
}

impl Loader<'_> {
    fn pipeline(&self, overrides: &[(String, String)]) -> Result<PipelineSpec> {
        let options = marked_yaml::LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .prevent_coercion(true);
        let node = marked_yaml::parse_yaml_with_options(0, &*self.yaml.text, options)
            .map_err(|e| self.load_error(e))?;
        let top = node.as_mapping().ok_or_else(|| {
            self.error_at(
                node.span(),
                "pipeline_not_a_mapping",
                "a pipeline must be a YAML mapping",
            )
        })?;
        self.check_keys(top, TOP_KEYS, "pipeline")?;
        let name = self.required_string(top, "name", node.span())?;
        check_identifier(self, &name, "pipeline name")?;
        let description = self.optional_string(top, "description")?.map(|s| s.value);
        let state = self.state(top.get_node("state"))?;
        let vars = self.vars(top.get_node("vars"), &state, overrides)?;
        let mut tables = self.tables(top.get_node("tables"))?;
        let stages = self.stages(top.get_node("stages"), node.span(), &tables)?;
        self.quarantine_schemas(&stages, &mut tables)?;
        Ok(PipelineSpec {
            root: self.root.to_path_buf(),
            yaml: self.yaml.clone(),
            name,
            description,
            vars,
            state: state
                .into_iter()
                .map(|(k, (table, _))| (k, table))
                .collect(),
            tables,
            stages,
        })
    }

    /// `state:` — variables whose value a run records (see `StageSpec::state`) and
    /// the next plan reads back: name → (table whose commits carry it, default).
    fn state(&self, node: Option<&Node>) -> Result<BTreeMap<String, (Spanned<String>, Var)>> {
        let mut out = BTreeMap::new();
        let Some(node) = node else { return Ok(out) };
        for (key, value) in self.mapping(node, "state")?.iter() {
            let name = self.scalar_spanned(key);
            check_identifier(self, &name, "state variable name")?;
            let map = self.mapping(value, &format!("state `{}`", name.value))?;
            self.check_keys(map, STATE_KEYS, "state")?;
            let table = self.required_string(map, "table", value.span())?;
            let default = map.get_node("default").map(to_json).unwrap_or(Value::Null);
            out.insert(
                name.value.clone(),
                (
                    table,
                    Var {
                        value: default,
                        span: name.span,
                        overridden: false,
                    },
                ),
            );
        }
        Ok(out)
    }

    // ---- vars -------------------------------------------------------------------

    fn vars(
        &self,
        node: Option<&Node>,
        state: &BTreeMap<String, (Spanned<String>, Var)>,
        overrides: &[(String, String)],
    ) -> Result<BTreeMap<String, Var>> {
        let mut vars: BTreeMap<String, Var> = state
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        if let Some(node) = node {
            let map = self.mapping(node, "vars")?;
            for (key, value) in map.iter() {
                check_identifier(self, &self.scalar_spanned(key), "variable name")?;
                if let Some(v) = vars.get(key.as_str()) {
                    return Err(self
                        .error(
                            self.scalar_span(key),
                            "duplicate_var",
                            format!("`{}` is both a var and a state variable", key.as_str()),
                            "declared again",
                        )
                        .label(v.span, "state variable"));
                }
                vars.insert(
                    key.as_str().to_string(),
                    Var {
                        value: to_json(value),
                        span: self.scalar_span(key),
                        overridden: false,
                    },
                );
            }
        }
        for (key, raw) in overrides {
            let Some(var) = vars.get_mut(key) else {
                let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                let mut p = Problem::invalid(
                    "unknown_var",
                    format!("`--var {key}=…` sets a variable the pipeline does not declare"),
                );
                p = p.help(match did_you_mean(key, known.iter().copied()) {
                    Some(s) => format!("{s} Declare it under `vars:` with a default to make it settable."),
                    None if known.is_empty() => "this pipeline declares no variables; declare it under `vars:` with a default".into(),
                    None => format!("declared variables: {}", known.join(", ")),
                });
                return Err(p);
            };
            var.value = parse_override(key, raw, &var.value)?;
            var.overridden = true;
        }
        Ok(vars)
    }

    // ---- tables -----------------------------------------------------------------

    fn tables(&self, node: Option<&Node>) -> Result<BTreeMap<String, TableSpec>> {
        let mut tables = BTreeMap::new();
        let Some(node) = node else { return Ok(tables) };
        for (key, value) in self.mapping(node, "tables")?.iter() {
            let name = self.scalar_spanned(key);
            check_identifier(self, &name, "table name")?;
            let map = self.mapping(value, &format!("table `{}`", name.value))?;
            self.check_keys(map, TABLE_KEYS, &format!("table `{}`", name.value))?;
            let location = self.required_string(map, "location", value.span())?;
            let schema = match map.get_node("schema") {
                None => None,
                Some(n) => Some(self.columns(n, &name.value)?),
            };
            let partition_by = self.string_list(map.get_node("partition_by"), "partition_by")?;
            if let Some(cols) = &schema {
                for p in &partition_by {
                    if !cols.iter().any(|c| c.name.value == p.value) {
                        let known: Vec<&str> = cols.iter().map(|c| c.name.value.as_str()).collect();
                        let mut e = self.error(
                            p.span,
                            "unknown_partition_column",
                            format!(
                                "partition column `{}` is not in the schema of `{}`",
                                p.value, name.value
                            ),
                            "not a declared column",
                        );
                        if let Some(h) = did_you_mean(&p.value, known) {
                            e = e.help(h);
                        }
                        return Err(e);
                    }
                }
            }
            let max_full_scans = match map.get_scalar("max_full_scans") {
                None => None,
                Some(s) => Some(Spanned {
                    value: self.parse_u64(s, "max_full_scans")?,
                    span: self.scalar_span(s),
                }),
            };
            let description = self.optional_string(map, "description")?.map(|s| s.value);
            let optional = self.flag(map, "optional")?;
            tables.insert(
                name.value.clone(),
                TableSpec {
                    name,
                    location,
                    description,
                    schema,
                    partition_by,
                    max_full_scans,
                    optional,
                },
            );
        }
        Ok(tables)
    }

    fn columns(&self, node: &Node, table: &str) -> Result<Vec<ColumnSpec>> {
        let seq = node.as_sequence().ok_or_else(|| {
            self.error_at(
                node.span(),
                "bad_schema",
                format!("the schema of `{table}` must be a list of columns"),
            )
            .help("write e.g. `schema: [{name: id, type: BIGINT, nullable: false}]`")
        })?;
        let mut columns: Vec<ColumnSpec> = Vec::new();
        for item in seq.iter() {
            let map = self.mapping(item, "column")?;
            self.check_keys(map, COLUMN_KEYS, "column")?;
            let name = self.required_string(map, "name", item.span())?;
            let data_type = self.required_string(map, "type", item.span())?;
            let nullable = match map.get_scalar("nullable") {
                None => true,
                Some(s) => s.as_bool().ok_or_else(|| {
                    self.error(
                        self.scalar_span(s),
                        "bad_value",
                        "`nullable` must be true or false",
                        "not a boolean",
                    )
                })?,
            };
            if let Some(prev) = columns.iter().find(|c| c.name.value == name.value) {
                return Err(self
                    .error(
                        name.span,
                        "duplicate_column",
                        format!("column `{}` is declared twice in `{table}`", name.value),
                        "declared again here",
                    )
                    .label(prev.name.span, "first declared here"));
            }
            columns.push(ColumnSpec {
                name,
                data_type,
                nullable,
            });
        }
        Ok(columns)
    }

    // ---- stages -----------------------------------------------------------------

    fn stages(
        &self,
        node: Option<&Node>,
        top_span: &marked_yaml::Span,
        tables: &BTreeMap<String, TableSpec>,
    ) -> Result<Vec<StageSpec>> {
        let Some(node) = node else {
            return Err(self
                .error_at(top_span, "no_stages", "the pipeline has no `stages:`")
                .help("add `stages:`, a list of stages in program order"));
        };
        let seq = node
            .as_sequence()
            .ok_or_else(|| self.error_at(node.span(), "bad_stages", "`stages` must be a list"))?;
        let mut stages: Vec<StageSpec> = Vec::new();
        for item in seq.iter() {
            let stage = self.stage(item)?;
            if let Some(prev) = stages.iter().find(|s| s.name.value == stage.name.value) {
                return Err(self
                    .error(
                        stage.name.span,
                        "duplicate_stage",
                        format!("two stages are named `{}`", stage.name.value),
                        "second stage with this name",
                    )
                    .label(prev.name.span, "first defined here")
                    .help("stage names define relations and must be unique"));
            }
            if let Some(t) = tables.get(&stage.name.value) {
                return Err(self
                    .error(stage.name.span, "stage_shadows_table", format!("stage `{}` has the name of a declared table", stage.name.value), "stage name")
                    .label(t.name.span, "table declared here")
                    .help("a SELECT stage defines a relation named after the stage; pick another name"));
            }
            stages.push(stage);
        }
        Ok(stages)
    }

    fn stage(&self, node: &Node) -> Result<StageSpec> {
        let map = self.mapping(node, "stage")?;
        self.check_keys(map, STAGE_KEYS, "stage")?;
        let name = self.required_string(map, "name", node.span())?;
        check_identifier(self, &name, "stage name")?;
        let bodies: Vec<&MarkedScalarNode> = map
            .keys()
            .filter(|k| ["sql", "query", "optimize", "vacuum"].contains(&k.as_str()))
            .collect();
        let body = match bodies.as_slice() {
            [] => {
                return Err(self
                    .error(name.span, "stage_without_body", format!("stage `{}` has nothing to do", name.value), "this stage")
                    .help("give it one of `sql: FILE`, `query: SQL`, `optimize: {table: …}` or `vacuum: {table: …}`"))
            }
            [key] => self.stage_body(key.as_str(), map)?,
            [first, second, ..] => {
                return Err(self
                    .error(self.scalar_span(second), "stage_with_two_bodies", format!("stage `{}` has both `{}` and `{}`", name.value, first.as_str(), second.as_str()), "second body")
                    .label(self.scalar_span(first), "first body")
                    .help("a stage does one thing: split it into two stages"))
            }
        };
        let materialize = self.flag(map, "materialize")?;
        let report = self.flag(map, "report")?;
        let state = self.optional_string(map, "state")?;
        let after = self.string_list(map.get_node("after"), "after")?;
        let description = self.optional_string(map, "description")?.map(|s| s.value);
        let expect = self.expectations(map.get_node("expect"), &name.value)?;
        Ok(StageSpec {
            name,
            description,
            body,
            materialize,
            report,
            state,
            after,
            expect,
        })
    }

    /// An optional boolean key, false when absent.
    fn flag(&self, map: &MarkedMappingNode, key: &str) -> Result<bool> {
        match map.get_scalar(key) {
            None => Ok(false),
            Some(s) => s.as_bool().ok_or_else(|| {
                self.error(
                    self.scalar_span(s),
                    "bad_value",
                    format!("`{key}` must be true or false"),
                    "not a boolean",
                )
            }),
        }
    }

    fn stage_body(&self, key: &str, map: &MarkedMappingNode) -> Result<StageBody> {
        let node = map.get_node(key).expect("key listed by the caller");
        match key {
            "sql" => {
                let path = self.string(node, "sql")?;
                let full = self.root.join(&path.value);
                let text = std::fs::read_to_string(&full).map_err(|e| {
                    self.error(
                        path.span,
                        "missing_sql_file",
                        format!("cannot read SQL file `{}`: {e}", path.value),
                        "this file",
                    )
                    .help(format!(
                        "paths are relative to the project root {}",
                        self.root.display()
                    ))
                })?;
                Ok(StageBody::SqlFile {
                    template: Source::new(path.value.clone(), text),
                    path,
                })
            }
            "query" => {
                let scalar = node.as_scalar().ok_or_else(|| {
                    self.error_at(node.span(), "bad_value", "`query` must be SQL text")
                })?;
                let marker = scalar.span().start().expect("loader marks scalars");
                let offset = self.char_to_byte(marker.character());
                let block = matches!(self.yaml.text[offset..].chars().next(), Some('|' | '>'));
                let origin = if block {
                    InlineOrigin {
                        first_line: marker.line() + 1,
                        first_column: None,
                    }
                } else {
                    let quoted =
                        matches!(self.yaml.text[offset..].chars().next(), Some('"' | '\''));
                    InlineOrigin {
                        first_line: marker.line(),
                        first_column: Some(marker.column() + usize::from(quoted)),
                    }
                };
                let name = format!("{} (inline query)", self.yaml.name);
                Ok(StageBody::InlineSql {
                    template: Source::new(name, scalar.as_str()),
                    origin,
                })
            }
            "optimize" => {
                let m = self.mapping(node, "optimize")?;
                self.check_keys(m, OPTIMIZE_KEYS, "optimize")?;
                let target_size = m
                    .get_scalar("target_size")
                    .map(|s| self.parse_u64(s, "target_size"))
                    .transpose()?;
                Ok(StageBody::Optimize(OptimizeSpec {
                    table: self.required_string(m, "table", node.span())?,
                    filter: self.optional_string(m, "where")?,
                    zorder_by: self.string_list(m.get_node("zorder_by"), "zorder_by")?,
                    target_size,
                }))
            }
            "vacuum" => {
                let m = self.mapping(node, "vacuum")?;
                self.check_keys(m, VACUUM_KEYS, "vacuum")?;
                let hours = m.get_scalar("retain_hours").ok_or_else(|| {
                    self.error_at(node.span(), "missing_key", "`vacuum` needs an explicit `retain_hours`")
                        .help("e.g. `retain_hours: 168` (7 days, Delta's default); files younger than that are kept")
                })?;
                Ok(StageBody::Vacuum(VacuumSpec {
                    table: self.required_string(m, "table", node.span())?,
                    retain_hours: Spanned {
                        value: self.parse_u64(hours, "retain_hours")?,
                        span: self.scalar_span(hours),
                    },
                }))
            }
            _ => unreachable!("only body keys are passed"),
        }
    }

    // ---- helpers ----------------------------------------------------------------

    fn check_keys(&self, map: &MarkedMappingNode, allowed: &[&str], what: &str) -> Result<()> {
        let mut problems: Vec<Problem> = map
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .map(|k| {
                let help = did_you_mean(k.as_str(), allowed.iter().copied())
                    .unwrap_or_else(|| format!("allowed keys in {what}: {}", allowed.join(", ")));
                self.error(
                    self.scalar_span(k),
                    "unknown_key",
                    format!("unknown key `{}` in {what}", k.as_str()),
                    "not a known key",
                )
                .help(help)
            })
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        let first = problems.remove(0);
        Err(first.with_related(problems))
    }

    fn mapping<'n>(&self, node: &'n Node, what: &str) -> Result<&'n MarkedMappingNode> {
        node.as_mapping().ok_or_else(|| {
            self.error_at(
                node.span(),
                "expected_mapping",
                format!("{what} must be a mapping of `key: value`"),
            )
        })
    }

    fn string(&self, node: &Node, key: &str) -> Result<Spanned<String>> {
        match node.as_scalar() {
            Some(s) => Ok(self.scalar_spanned(s)),
            None => Err(self.error_at(
                node.span(),
                "bad_value",
                format!("`{key}` must be a single value"),
            )),
        }
    }

    fn required_string(
        &self,
        map: &MarkedMappingNode,
        key: &str,
        owner: &marked_yaml::Span,
    ) -> Result<Spanned<String>> {
        match map.get_node(key) {
            Some(n) => self.string(n, key),
            None => Err(self.error_at(
                owner,
                "missing_key",
                format!("missing required key `{key}`"),
            )),
        }
    }

    fn optional_string(
        &self,
        map: &MarkedMappingNode,
        key: &str,
    ) -> Result<Option<Spanned<String>>> {
        map.get_node(key).map(|n| self.string(n, key)).transpose()
    }

    fn string_list(&self, node: Option<&Node>, key: &str) -> Result<Vec<Spanned<String>>> {
        match node {
            None => Ok(Vec::new()),
            Some(Node::Scalar(s)) => Ok(vec![self.scalar_spanned(s)]),
            Some(Node::Sequence(seq)) => seq.iter().map(|n| self.string(n, key)).collect(),
            Some(n) => Err(self.error_at(
                n.span(),
                "bad_value",
                format!("`{key}` must be a name or a list of names"),
            )),
        }
    }

    fn parse_u64(&self, s: &MarkedScalarNode, key: &str) -> Result<u64> {
        s.as_str().parse().map_err(|_| {
            self.error(
                self.scalar_span(s),
                "bad_value",
                format!("`{key}` must be a whole number"),
                "not a whole number",
            )
        })
    }

    fn scalar_spanned(&self, s: &MarkedScalarNode) -> Spanned<String> {
        Spanned {
            value: s.as_str().to_string(),
            span: self.scalar_span(s),
        }
    }

    /// marked-yaml marks a scalar's start (in characters); its length is that of its
    /// text, plus quotes, or the rest of the line for block scalars.
    fn scalar_span(&self, s: &MarkedScalarNode) -> SourceSpan {
        let Some(start) = s.span().start() else {
            return (0, 0).into();
        };
        let offset = self.char_to_byte(start.character());
        let rest = &self.yaml.text[offset..];
        let first_line = rest.lines().next().unwrap_or("");
        let len = if rest.starts_with(s.as_str()) && !s.as_str().is_empty() {
            s.as_str().len()
        } else if rest.starts_with(['"', '\'']) {
            first_line.len().min(s.as_str().len() + 2)
        } else {
            first_line.trim_end().len()
        };
        (offset, len).into()
    }

    fn char_to_byte(&self, chars: usize) -> usize {
        self.yaml
            .text
            .char_indices()
            .nth(chars)
            .map_or(self.yaml.text.len(), |(b, _)| b)
    }

    fn node_span(&self, span: &marked_yaml::Span) -> SourceSpan {
        match (span.start(), span.end()) {
            (Some(s), Some(e)) if e.character() > s.character() => {
                let (a, b) = (
                    self.char_to_byte(s.character()),
                    self.char_to_byte(e.character()),
                );
                let text = self.yaml.text[a..b].trim_end();
                (a, text.len()).into()
            }
            (Some(s), _) => (self.char_to_byte(s.character()), 1).into(),
            _ => (0, 0).into(),
        }
    }

    fn error(
        &self,
        span: SourceSpan,
        code: &'static str,
        message: impl Into<String>,
        label: &str,
    ) -> Problem {
        Problem::invalid(code, message)
            .in_source(self.yaml)
            .label(span, label)
    }

    fn error_at(
        &self,
        span: &marked_yaml::Span,
        code: &'static str,
        message: impl Into<String>,
    ) -> Problem {
        self.error(self.node_span(span), code, message, "here")
    }

    fn load_error(&self, e: marked_yaml::LoadError) -> Problem {
        use marked_yaml::LoadError as E;
        let (marker, message) = match &e {
            E::ScanError(m, se) => (*m, format!("malformed YAML: {}", se.info())),
            E::DuplicateKey(d) => (
                *d.key.span().start().expect("marked"),
                format!("duplicate key `{}`", d.key.as_str()),
            ),
            E::TopLevelMustBeMapping(m) => (*m, "a pipeline must be a YAML mapping".into()),
            E::TopLevelMustBeSequence(m)
            | E::UnexpectedAnchor(m)
            | E::MappingKeyMustBeScalar(m)
            | E::UnexpectedTag(m) => (*m, format!("malformed YAML: {e}")),
        };
        let offset = self.char_to_byte(marker.character());
        Problem::invalid("malformed_yaml", message)
            .in_source(self.yaml)
            .label((offset, 0), "here")
    }
}

fn check_identifier(l: &Loader<'_>, name: &Spanned<String>, what: &str) -> Result<()> {
    let ok = name
        .value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        return Ok(());
    }
    Err(l
        .error(name.span, "bad_name", format!("`{}` is not a valid {what}", name.value), "not a lowercase identifier")
        .help("names become SQL identifiers: use lowercase letters, digits and `_`, starting with a letter"))
}

/// Untyped YAML → JSON-like value: plain scalars are coerced (numbers, booleans,
/// null), quoted scalars stay strings.
fn to_json(node: &Node) -> Value {
    match node {
        Node::Scalar(s) if !s.may_coerce() => Value::String(s.as_str().to_string()),
        Node::Scalar(s) => coerce_scalar(s.as_str()),
        Node::Sequence(seq) => Value::Array(seq.iter().map(to_json).collect()),
        Node::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
                .collect(),
        ),
    }
}

/// A YAML document as a JSON-like value (plain scalars coerced, quoted ones kept).
pub fn yaml_value(text: &str) -> std::result::Result<Value, String> {
    let options = marked_yaml::LoaderOptions::default().prevent_coercion(true);
    marked_yaml::parse_yaml_with_options(0, text, options)
        .map(|n| to_json(&n))
        .map_err(|e| e.to_string())
}

fn coerce_scalar(s: &str) -> Value {
    match s {
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        "null" | "Null" | "NULL" | "~" | "" => return Value::Null,
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            return Value::from(f);
        }
    }
    Value::String(s.to_string())
}

/// A `--var` value takes the type of the declared default: text stays text, a list
/// or map default expects YAML (`[a, b]`, `{k: v}`).
fn parse_override(key: &str, raw: &str, default: &Value) -> Result<Value> {
    let mismatch = |expected: &str| {
        Problem::invalid(
            "bad_var_value",
            format!(
                "`--var {key}={raw}`: expected {expected}, like the declared default `{default}`"
            ),
        )
    };
    match default {
        Value::String(_) => Ok(Value::String(raw.to_string())),
        Value::Null => Ok(coerce_scalar(raw)),
        Value::Bool(_) => match coerce_scalar(raw) {
            v @ Value::Bool(_) => Ok(v),
            _ => Err(mismatch("true or false")),
        },
        Value::Number(_) => match coerce_scalar(raw) {
            v @ Value::Number(_) => Ok(v),
            _ => Err(mismatch("a number")),
        },
        Value::Array(_) | Value::Object(_) => {
            let options = marked_yaml::LoaderOptions::default().prevent_coercion(true);
            let options = if default.is_array() {
                options.toplevel_sequence()
            } else {
                options
            };
            let node = marked_yaml::parse_yaml_with_options(0, raw, options).map_err(|_| {
                mismatch(if default.is_array() {
                    "a YAML list like `[a, b]`"
                } else {
                    "a YAML map like `{k: v}`"
                })
            })?;
            let value = to_json(&node);
            if value.is_array() == default.is_array() && value.is_object() == default.is_object() {
                Ok(value)
            } else {
                Err(mismatch(if default.is_array() {
                    "a YAML list like `[a, b]`"
                } else {
                    "a YAML map like `{k: v}`"
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Whatever the file holds, loading it gives a value or a diagnostic.
        #[test]
        fn loading_never_panics(text in "(name|stages|vars|tables|sql|query|after|materialize|optimize|location|: |- |\\[|\\]|\\{|\\}|\\n|  |'|\"|x|1|é|#|\\|)*") {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.yaml");
            std::fs::write(&path, &text).unwrap();
            let _ = load(&path, Some(dir.path()), &[("x".into(), "1".into())]);
        }
    }

    #[test]
    fn plain_scalars_are_coerced_quoted_are_not() {
        let options = marked_yaml::LoaderOptions::default().prevent_coercion(true);
        let node = marked_yaml::parse_yaml_with_options(
            0,
            "a: 10\nb: '10'\nc: [x, 2.5, true]\nd: ~\n",
            options,
        )
        .unwrap();
        let v = to_json(&node);
        assert_eq!(v["a"], Value::from(10));
        assert_eq!(v["b"], Value::from("10"));
        assert_eq!(v["c"], serde_json::json!(["x", 2.5, true]));
        assert_eq!(v["d"], Value::Null);
    }

    #[test]
    fn overrides_take_the_type_of_the_default() {
        assert_eq!(
            parse_override("n", "5", &Value::from(1)).unwrap(),
            Value::from(5)
        );
        assert!(parse_override("n", "five", &Value::from(1)).is_err());
        assert_eq!(
            parse_override("s", "5", &Value::from("x")).unwrap(),
            Value::from("5")
        );
        assert_eq!(
            parse_override("l", "[a, b]", &serde_json::json!(["z"])).unwrap(),
            serde_json::json!(["a", "b"])
        );
        assert!(parse_override("l", "{a: 1}", &serde_json::json!(["z"])).is_err());
    }
}
