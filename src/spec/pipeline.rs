//! The pipeline file: its top level, `tables:` and `stages:`.

use std::collections::BTreeMap;

use marked_yaml::{types::MarkedMappingNode, types::MarkedScalarNode, Node};

use super::yaml::check_identifier;
use super::*;
use crate::diag::{did_you_mean, Code, Result, Source};

const TOP_KEYS: &[&str] = &["name", "description", "vars", "state", "tables", "stages"];
const TABLE_KEYS: &[&str] = &[
    "location",
    "description",
    "schema",
    "schema_of",
    "partition_by",
    "max_full_scans",
    "max_scan_bytes",
    "max_rewrite_bytes",
    "optional",
    "deletion_vectors",
];
const VECTOR_KEYS: &[&str] = &["rewrite_above"];
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
const OPTIMIZE_KEYS: &[&str] = &[
    "table",
    "where",
    "zorder_by",
    "target_size",
    "deleted_above",
];
const VACUUM_KEYS: &[&str] = &["table", "retain_hours", "below_delta_default"];
/// Delta's default retention (7 days): what readers of older versions and
/// interrupted runs (which resume on the versions they started from) rely on.
const DELTA_DEFAULT_RETAIN_HOURS: u64 = 168;

impl Loader<'_> {
    pub(super) fn pipeline(&self, overrides: &[(String, String)]) -> Result<PipelineSpec> {
        let node = self.parse("a pipeline")?;
        let top = node.as_mapping().expect("parse returns a mapping");
        self.check_keys(top, TOP_KEYS, "pipeline")?;
        let name = self.required_string(top, "name", node.span())?;
        check_identifier(&self.reader, &name, "pipeline name")?;
        let description = self.optional_string(top, "description")?.map(|s| s.value);
        let state = self.state(top.get_node("state"))?;
        let vars = self.vars(top.get_node("vars"), &state, overrides)?;
        let mut tables = self.tables(top.get_node("tables"))?;
        let stages = self.stages(top.get_node("stages"), node.span(), &tables)?;
        self.quarantine_schemas(&stages, &mut tables)?;
        Ok(PipelineSpec {
            root: self.root.to_path_buf(),
            yaml: self.source.clone(),
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

    /// `tables:` — each declared table: location, columns (`schema` or
    /// `schema_of`), partitioning, budgets and deletion vectors.
    fn tables(&self, node: Option<&Node>) -> Result<BTreeMap<String, TableSpec>> {
        let mut tables = BTreeMap::new();
        // Tables whose columns are another table's (`schema_of: other`).
        let mut schema_of: BTreeMap<String, Spanned<String>> = BTreeMap::new();
        let Some(node) = node else { return Ok(tables) };
        for (key, value) in self.mapping(node, "tables")?.iter() {
            let name = self.scalar_spanned(key);
            check_identifier(&self.reader, &name, "table name")?;
            let map = self.mapping(value, &format!("table `{}`", name.value))?;
            self.check_keys(map, TABLE_KEYS, &format!("table `{}`", name.value))?;
            let location = self.required_string(map, "location", value.span())?;
            let schema = match map.get_node("schema") {
                None => None,
                Some(n) => Some(self.columns(n, &name.value)?),
            };
            if let Some(of) = self.optional_string(map, "schema_of")? {
                if schema.is_some() {
                    return Err(self.error(
                        of.span,
                        Code::BadSchema,
                        format!(
                            "table `{}` declares both `schema` and `schema_of`",
                            name.value
                        ),
                        "one of the two",
                    ));
                }
                schema_of.insert(name.value.clone(), of);
            }
            let partition_by = self.string_list(map.get_node("partition_by"), "partition_by")?;
            let max_full_scans = match map.get_scalar("max_full_scans") {
                None => None,
                Some(s) => Some(Spanned {
                    value: self.parse_u64(s, "max_full_scans")?,
                    span: self.scalar_span(s),
                }),
            };
            let bytes = |key: &str| -> Result<Option<Spanned<u64>>> {
                map.get_scalar(key)
                    .map(|s| {
                        Ok(Spanned {
                            value: self.parse_bytes(s, key)?,
                            span: self.scalar_span(s),
                        })
                    })
                    .transpose()
            };
            let max_scan_bytes = bytes("max_scan_bytes")?;
            let max_rewrite_bytes = bytes("max_rewrite_bytes")?;
            // A table's description documents the YAML; it is checked, not kept.
            self.optional_string(map, "description")?;
            let optional = self.flag(map, "optional")?;
            let deletion_vectors = self.deletion_vectors(map.get_node("deletion_vectors"))?;
            tables.insert(
                name.value.clone(),
                TableSpec {
                    name,
                    location,
                    schema,
                    partition_by,
                    max_full_scans,
                    max_scan_bytes,
                    max_rewrite_bytes,
                    optional,
                    deletion_vectors,
                },
            );
        }
        for (name, of) in schema_of {
            let columns = self.columns_of(&tables, &name, &of)?;
            if let Some(t) = tables.get_mut(&name) {
                t.schema = Some(columns);
            }
        }
        for t in tables.values() {
            self.check_partition_columns(t)?;
        }
        Ok(tables)
    }

    /// The columns `schema_of: OF` of table `name` copies: OF must be a table that
    /// declares its own `schema`.
    fn columns_of(
        &self,
        tables: &BTreeMap<String, TableSpec>,
        name: &str,
        of: &Spanned<String>,
    ) -> Result<Vec<ColumnSpec>> {
        let Some(source) = tables.get(&of.value) else {
            let mut e = self.error(
                of.span,
                Code::UnknownTable,
                format!(
                    "`schema_of: {}` of table `{name}` names no declared table",
                    of.value
                ),
                "not a table of this pipeline",
            );
            if let Some(h) = did_you_mean(&of.value, tables.keys().map(String::as_str)) {
                e = e.help(h);
            }
            return Err(e);
        };
        source.schema.clone().ok_or_else(|| {
            self.error(
                of.span,
                Code::BadSchema,
                format!(
                    "`schema_of: {}` of table `{name}`: `{}` declares no `schema` of its own",
                    of.value, of.value
                ),
                "copy a table that lists its columns",
            )
        })
    }

    /// Every `partition_by` column of a table with a schema is one of its columns.
    fn check_partition_columns(&self, table: &TableSpec) -> Result<()> {
        let (name, partition_by) = (&table.name, &table.partition_by);
        if let Some(cols) = &table.schema {
            for p in partition_by {
                if !cols.iter().any(|c| c.name.value == p.value) {
                    let known: Vec<&str> = cols.iter().map(|c| c.name.value.as_str()).collect();
                    let mut e = self.error(
                        p.span,
                        Code::UnknownPartitionColumn,
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
        Ok(())
    }

    /// `deletion_vectors: true | false | {rewrite_above: R}`.
    fn deletion_vectors(&self, node: Option<&Node>) -> Result<Option<VectorOptions>> {
        let Some(node) = node else { return Ok(None) };
        if let Some(s) = node.as_scalar() {
            return match s.as_bool() {
                Some(on) => Ok(on.then(VectorOptions::default)),
                None => Err(self.error(
                    self.scalar_span(s),
                    Code::BadValue,
                    "`deletion_vectors` must be true, false or `{rewrite_above: R}`",
                    "not a boolean",
                )),
            };
        }
        let map = self.mapping(node, "deletion_vectors")?;
        self.check_keys(map, VECTOR_KEYS, "deletion_vectors")?;
        let mut options = VectorOptions::default();
        if let Some(s) = map.get_scalar("rewrite_above") {
            options.rewrite_above = s
                .as_str()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    self.error(
                        self.scalar_span(s),
                        Code::BadValue,
                        "`rewrite_above` must be a share of a file's rows, from 0 to 1",
                        "not a number from 0 to 1",
                    )
                })?;
        }
        Ok(Some(options))
    }

    fn columns(&self, node: &Node, table: &str) -> Result<Vec<ColumnSpec>> {
        let seq = node.as_sequence().ok_or_else(|| {
            self.error_at(
                node.span(),
                Code::BadSchema,
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
                        Code::BadValue,
                        "`nullable` must be true or false",
                        "not a boolean",
                    )
                })?,
            };
            if let Some(prev) = columns.iter().find(|c| c.name.value == name.value) {
                return Err(self
                    .error(
                        name.span,
                        Code::DuplicateColumn,
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

    fn stages(
        &self,
        node: Option<&Node>,
        top_span: &marked_yaml::Span,
        tables: &BTreeMap<String, TableSpec>,
    ) -> Result<Vec<StageSpec>> {
        let Some(node) = node else {
            return Err(self
                .error_at(top_span, Code::NoStages, "the pipeline has no `stages:`")
                .help("add `stages:`, a list of stages in program order"));
        };
        let seq = node.as_sequence().ok_or_else(|| {
            self.error_at(node.span(), Code::BadStages, "`stages` must be a list")
        })?;
        let mut stages: Vec<StageSpec> = Vec::new();
        for item in seq.iter() {
            let stage = self.stage(item)?;
            if let Some(prev) = stages.iter().find(|s| s.name.value == stage.name.value) {
                return Err(self
                    .error(
                        stage.name.span,
                        Code::DuplicateStage,
                        format!("two stages are named `{}`", stage.name.value),
                        "second stage with this name",
                    )
                    .label(prev.name.span, "first defined here")
                    .help("stage names define relations and must be unique"));
            }
            if let Some(t) = tables.get(&stage.name.value) {
                let message = format!(
                    "stage `{}` has the name of a declared table",
                    stage.name.value
                );
                let help =
                    "a SELECT stage defines a relation named after the stage; pick another name";
                return Err(self
                    .error(
                        stage.name.span,
                        Code::StageShadowsTable,
                        message,
                        "stage name",
                    )
                    .label(t.name.span, "table declared here")
                    .help(help));
            }
            stages.push(stage);
        }
        Ok(stages)
    }

    fn stage(&self, node: &Node) -> Result<StageSpec> {
        let map = self.mapping(node, "stage")?;
        self.check_keys(map, STAGE_KEYS, "stage")?;
        let name = self.required_string(map, "name", node.span())?;
        check_identifier(&self.reader, &name, "stage name")?;
        let bodies: Vec<&MarkedScalarNode> = map
            .keys()
            .filter(|k| ["sql", "query", "optimize", "vacuum"].contains(&k.as_str()))
            .collect();
        let body = match bodies.as_slice() {
            [] => {
                let message = format!("stage `{}` has nothing to do", name.value);
                let help = "give it one of `sql: FILE`, `query: SQL`, \
                            `optimize: {table: …}` or `vacuum: {table: …}`";
                return Err(self
                    .error(name.span, Code::StageWithoutBody, message, "this stage")
                    .help(help));
            }
            [key] => self.stage_body(key.as_str(), map)?,
            [first, second, ..] => {
                let message = format!(
                    "stage `{}` has both `{}` and `{}`",
                    name.value,
                    first.as_str(),
                    second.as_str()
                );
                return Err(self
                    .error(
                        self.scalar_span(second),
                        Code::StageWithTwoBodies,
                        message,
                        "second body",
                    )
                    .label(self.scalar_span(first), "first body")
                    .help("a stage does one thing: split it into two stages"));
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

    /// What a stage does, from its body key (`key`: `sql`, `query`, `optimize` or
    /// `vacuum`).
    fn stage_body(&self, key: &str, map: &MarkedMappingNode) -> Result<StageBody> {
        let node = map.get_node(key).expect("key listed by the caller");
        match key {
            "sql" => {
                let path = self.string(node, "sql")?;
                let text = read_project_file(self.root, &path.value).map_err(|e| match e {
                    ProjectFileError::Outside(why) => self
                        .error(path.span, Code::OutsideProject, why, "outside the project")
                        .help(format!(
                            "a pipeline reads only files under its project root {}",
                            self.root.display()
                        )),
                    ProjectFileError::Io(e) => self
                        .error(
                            path.span,
                            Code::MissingSqlFile,
                            format!("cannot read SQL file `{}`: {e}", path.value),
                            "this file",
                        )
                        .help(format!(
                            "paths are relative to the project root {}",
                            self.root.display()
                        )),
                })?;
                Ok(StageBody::SqlFile {
                    template: Source::new(path.value.clone(), text),
                    path,
                })
            }
            "query" => {
                let scalar = node.as_scalar().ok_or_else(|| {
                    self.error_at(node.span(), Code::BadValue, "`query` must be SQL text")
                })?;
                let marker = scalar.span().start().expect("loader marks scalars");
                let offset = self.marker_byte(marker);
                let block = matches!(self.source.text[offset..].chars().next(), Some('|' | '>'));
                let origin = if block {
                    InlineOrigin {
                        first_line: marker.line() + 1,
                        first_column: None,
                    }
                } else {
                    let quoted =
                        matches!(self.source.text[offset..].chars().next(), Some('"' | '\''));
                    InlineOrigin {
                        first_line: marker.line(),
                        first_column: Some(marker.column() + usize::from(quoted)),
                    }
                };
                let name = format!("{} (inline query)", self.source.name);
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
                    deleted_above: self.optional_string(m, "deleted_above")?,
                }))
            }
            "vacuum" => {
                let m = self.mapping(node, "vacuum")?;
                self.check_keys(m, VACUUM_KEYS, "vacuum")?;
                let hours = m.get_scalar("retain_hours").ok_or_else(|| {
                    let message = "`vacuum` needs an explicit `retain_hours`";
                    let help = "e.g. `retain_hours: 168` (7 days, Delta's default); \
                                files younger than that are kept";
                    self.error_at(node.span(), Code::MissingKey, message)
                        .help(help)
                })?;
                let retain = self.parse_u64(hours, "retain_hours")?;
                if retain < DELTA_DEFAULT_RETAIN_HOURS && !self.flag(m, "below_delta_default")? {
                    let message = format!(
                        "`retain_hours: {retain}` is below Delta's default \
                         of {DELTA_DEFAULT_RETAIN_HOURS} hours"
                    );
                    let help = "files an older version still needs (time travel, a reader, \
                                an interrupted run that resumes on the versions it started from) \
                                would be removed; if that is intended, \
                                add `below_delta_default: true`";
                    return Err(self
                        .error(
                            self.scalar_span(hours),
                            Code::BadValue,
                            message,
                            "shorter than 7 days",
                        )
                        .help(help));
                }
                Ok(StageBody::Vacuum(VacuumSpec {
                    table: self.required_string(m, "table", node.span())?,
                    retain_hours: Spanned {
                        value: retain,
                        span: self.scalar_span(hours),
                    },
                }))
            }
            _ => unreachable!("only body keys are passed"),
        }
    }
}
