//! Step 1 of the flow: read the pipeline YAML into a checked `PipelineSpec`.
//!
//! The YAML is parsed with spans (marked-yaml) and walked by hand rather than with
//! serde, so that every complaint — an unknown key with a suggestion, a missing SQL
//! file, a duplicate stage — can point at the exact key or value in the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use miette::SourceSpan;
use serde_json::Value;

use crate::diag::{Code, Problem, Result, Source};

mod expect;
mod pipeline;
mod types;
mod vars;
pub mod yaml;

pub use expect::{CheckAction, ExpectSpec};
pub use types::VarType;
pub use yaml::YamlReader;

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
    /// What the var may hold; every value it takes is checked against it.
    pub ty: VarType,
    pub span: SourceSpan,
    /// True when `--var` replaced the default.
    pub overridden: bool,
}

#[derive(Clone, Debug)]
pub struct TableSpec {
    pub name: Spanned<String>,
    /// Location template (rendered with the vars in the render step).
    pub location: Spanned<String>,
    /// Declared schema, used to create the table when it does not exist.
    pub schema: Option<Vec<ColumnSpec>>,
    pub partition_by: Vec<Spanned<String>>,
    /// Scan budget enforced by `plan`: at most this many full scans per run.
    pub max_full_scans: Option<Spanned<u64>>,
    /// Byte budgets enforced by `plan` against the estimates from the Delta log: what
    /// the run's scans of the table read, and what its writes may rewrite, at most.
    pub max_scan_bytes: Option<Spanned<u64>>,
    pub max_rewrite_bytes: Option<Spanned<u64>>,
    /// A table that may be absent: then it is not created and templates see
    /// `tables.<name>.exists` false (and must not read it).
    pub optional: bool,
    /// `deletion_vectors:` MERGE marks changed rows deleted instead of rewriting
    /// their files (None: off).
    pub deletion_vectors: Option<VectorOptions>,
}

/// How a MERGE writes into a table with deletion vectors.
#[derive(Clone, Debug, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct VectorOptions {
    /// A file whose changed share of live rows is above this is rewritten instead of
    /// getting a vector (a vector plus a copy of nearly every row costs more).
    pub rewrite_above: f64,
}

impl VectorOptions {
    /// Measured on the summary pipeline (docs/deletion-vectors.md).
    pub const DEFAULT_REWRITE_ABOVE: f64 = 0.5;

    /// No vectors: every file that loses a row is rewritten (a table without the
    /// deletion-vector feature, changed on a cluster).
    pub fn copy_on_write() -> VectorOptions {
        VectorOptions { rewrite_above: 0.0 }
    }
}

impl Default for VectorOptions {
    fn default() -> Self {
        VectorOptions {
            rewrite_above: Self::DEFAULT_REWRITE_ABOVE,
        }
    }
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
    /// Compact only the partitions whose share of rows deleted by deletion vectors
    /// is above this (templated, a number from 0 to 1).
    pub deleted_above: Option<Spanned<String>>,
}

#[derive(Clone, Debug)]
pub struct VacuumSpec {
    pub table: Spanned<String>,
    pub retain_hours: Spanned<u64>,
}

impl PipelineSpec {
    /// The source and byte offset of a 1-based template line and column: the template
    /// file, or the YAML for inline SQL.
    pub fn locate_in_template(
        &self,
        stage: &StageSpec,
        line: usize,
        column: usize,
    ) -> (Source, usize) {
        match &stage.body {
            StageBody::InlineSql { origin, .. } => {
                let yaml_line = origin.first_line + line - 1;
                let yaml_column = match origin.first_column {
                    Some(c) if line == 1 => c + column - 1,
                    _ => {
                        let first = self.yaml.line(origin.first_line).unwrap_or("");
                        let indent = first.len() - first.trim_start().len();
                        indent + column
                    }
                };
                (
                    self.yaml.clone(),
                    self.yaml.offset_of(yaml_line, yaml_column),
                )
            }
            _ => {
                let template = stage.template().expect("SQL stages have templates");
                (template.clone(), template.offset_of(line, column))
            }
        }
    }
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

tokio::task_local! {
    /// Files an editor holds with unsaved changes (`sqlplan lsp`), by canonical
    /// path: within the planning task this is scoped to, they are read instead
    /// of the disk.
    pub static UNSAVED: std::sync::Arc<std::collections::BTreeMap<PathBuf, String>>;
}

/// A project file's text: the editor's unsaved text when there is one.
fn read_text(path: &Path) -> std::io::Result<String> {
    let unsaved = UNSAVED
        .try_with(|files| {
            let key = path.canonicalize().ok()?;
            files.get(&key).cloned()
        })
        .ok()
        .flatten();
    match unsaved {
        Some(text) => Ok(text),
        None => std::fs::read_to_string(path),
    }
}

/// Loads and checks a pipeline file; `overrides` are the `--var key=value` pairs.
pub fn load(
    path: &Path,
    root: Option<&Path>,
    overrides: &[(String, String)],
) -> Result<PipelineSpec> {
    let text = read_text(path).map_err(|e| {
        Problem::invalid(
            Code::PipelineUnreadable,
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
        reader: YamlReader::new(&yaml),
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

/// Reads a pipeline file: the YAML reader plus the project root that SQL paths are
/// relative to. Its methods are split by section over this folder's files.
struct Loader<'a> {
    reader: YamlReader<'a>,
    root: &'a Path,
}

impl<'a> std::ops::Deref for Loader<'a> {
    type Target = YamlReader<'a>;
    fn deref(&self) -> &YamlReader<'a> {
        &self.reader
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Whatever the file holds, loading it gives a value or a diagnostic.
        #[test]
        fn loading_never_panics(
            text in "(name|stages|vars|tables|sql|query|after|materialize|optimize|location|\
                     : |- |\\[|\\]|\\{|\\}|\\n|  |'|\"|x|1|é|#|\\|)*"
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.yaml");
            std::fs::write(&path, &text).unwrap();
            let _ = load(&path, Some(dir.path()), &[("x".into(), "1".into())]);
        }
    }
}

/// Why a file a pipeline names cannot be read.
#[derive(Debug)]
pub enum ProjectFileError {
    /// Outside the project root (the reason); nothing was read.
    Outside(String),
    Io(std::io::Error),
}

/// Reads `relative`, a path a pipeline or template names, confined to the project
/// `root`: a pipeline may come from an untrusted pull request, so no absolute path,
/// no `..` and no symlink that leads out of the root is followed.
pub fn read_project_file(
    root: &Path,
    relative: &str,
) -> std::result::Result<String, ProjectFileError> {
    let path = Path::new(relative);
    if relative.is_empty() || path.has_root() || path.is_absolute() {
        return Err(ProjectFileError::Outside(format!(
            "`{relative}` is an absolute path; name files relative to the project root"
        )));
    }
    if path.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err(ProjectFileError::Outside(format!(
            "`{relative}` leaves the project root (`..`)"
        )));
    }
    let root = root.canonicalize().map_err(ProjectFileError::Io)?;
    let full = root
        .join(path)
        .canonicalize()
        .map_err(ProjectFileError::Io)?;
    if !full.starts_with(&root) {
        return Err(ProjectFileError::Outside(format!(
            "`{relative}` is a link to a file outside the project root"
        )));
    }
    read_text(&full).map_err(ProjectFileError::Io)
}
