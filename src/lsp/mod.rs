//! `sqlplan lsp`: a language server over stdio for the pipeline YAML and the SQL
//! templates, built on rust-analyzer's `lsp-server` (a synchronous message loop
//! over channels) and `lsp-types`.
//!
//! Diagnostics as you type: on every open, change, save or close, each pipeline
//! the edit can touch is planned again exactly as `sqlplan plan` plans it (its
//! declared vars, the warehouse they name), reading the editor's unsaved texts
//! instead of the disk (`spec::UNSAVED`), and its problems are published in the
//! files they point into: a problem of a template shows in the template. A file
//! whose problems are gone is sent an empty list.
//!
//! Which pipelines an edit touches: every open pipeline file, and for an open
//! SQL file the pipelines under its project's `pipelines/` folder that name it.
//!
//! Hover, go to definition, completion and the code lenses answer from the last
//! Plan of each pipeline (`answers.rs`); a lens runs `sqlplan.renderedSql`, which
//! answers a stage's rendered SQL. Nothing is cached between keystrokes but those
//! plans: each change reads the tables' logs again, so a log that moved is seen.

mod answers;
mod diagnostics;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;

use lsp_server::{Connection, Message, Notification, Request, Response};
use lsp_types::notification::{
    DidChangeTextDocument, DidCloseTextDocument, DidOpenTextDocument, DidSaveTextDocument,
    Notification as _, PublishDiagnostics,
};
use lsp_types::request::{
    CodeLensRequest, Completion, ExecuteCommand, GotoDefinition, HoverRequest, Request as _,
};
use lsp_types::{
    CompletionOptions, Diagnostic, Hover, HoverContents, HoverProviderCapability, Location,
    MarkupContent, MarkupKind, OneOf, Position, PublishDiagnosticsParams, Range,
    ServerCapabilities, TextDocumentPositionParams, TextDocumentSyncCapability,
    TextDocumentSyncKind, Uri,
};

use crate::diag::{Code, Problem};

/// Serves one editor on stdin/stdout until it asks the server to exit.
pub fn serve(runtime: tokio::runtime::Handle) -> Result<(), Problem> {
    let failed = |e: String| Problem::failed(Code::LspFailed, e);
    let (connection, io) = Connection::stdio();
    let capabilities = ServerCapabilities {
        text_document_sync: Some(TextDocumentSyncCapability::Kind(TextDocumentSyncKind::FULL)),
        hover_provider: Some(HoverProviderCapability::Simple(true)),
        definition_provider: Some(OneOf::Left(true)),
        completion_provider: Some(CompletionOptions::default()),
        code_lens_provider: Some(lsp_types::CodeLensOptions {
            resolve_provider: Some(false),
        }),
        execute_command_provider: Some(lsp_types::ExecuteCommandOptions {
            commands: vec![RENDERED_SQL.to_string()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let capabilities = serde_json::to_value(capabilities).map_err(|e| failed(e.to_string()))?;
    connection
        .initialize(capabilities)
        .map_err(|e| failed(e.to_string()))?;
    let mut server = Server {
        runtime,
        open: BTreeMap::new(),
        published: BTreeSet::new(),
        plans: BTreeMap::new(),
    };
    for message in &connection.receiver {
        match message {
            Message::Request(request) => {
                if connection
                    .handle_shutdown(&request)
                    .map_err(|e| failed(e.to_string()))?
                {
                    break;
                }
                send(&connection, Message::Response(server.answer(request)))?;
            }
            Message::Notification(n) => {
                if server.take(n) {
                    for (file, diagnostics) in server.check() {
                        publish(&connection, &file, diagnostics)?;
                    }
                }
            }
            Message::Response(_) => {}
        }
    }
    drop(connection);
    io.join().map_err(|e| failed(e.to_string()))
}

/// The command that answers a stage's rendered SQL (the lenses run it).
const RENDERED_SQL: &str = "sqlplan.renderedSql";

struct Server {
    runtime: tokio::runtime::Handle,
    /// Open files (canonical paths) and the editor's text of each.
    open: BTreeMap<PathBuf, String>,
    /// Files last sent a non-empty list, to be cleared when their problems go.
    published: BTreeSet<PathBuf>,
    /// Each pipeline's last Plan that succeeded.
    plans: BTreeMap<PathBuf, crate::plan::Plan>,
}

impl Server {
    /// Takes a document notification; true if the texts changed.
    fn take(&mut self, n: Notification) -> bool {
        use lsp_types::{
            DidChangeTextDocumentParams as Change, DidCloseTextDocumentParams as Close,
            DidOpenTextDocumentParams as Open,
        };
        match n.method.as_str() {
            DidOpenTextDocument::METHOD => {
                let Some((path, p)) = document::<Open>(n, |p| &p.text_document.uri) else {
                    return false;
                };
                self.open.insert(path, p.text_document.text);
            }
            DidChangeTextDocument::METHOD => {
                let Some((path, p)) = document::<Change>(n, |p| &p.text_document.uri) else {
                    return false;
                };
                // Full sync: the last change holds the whole text.
                if let Some(change) = p.content_changes.into_iter().last() {
                    self.open.insert(path, change.text);
                }
            }
            DidSaveTextDocument::METHOD => {}
            DidCloseTextDocument::METHOD => {
                let Some((path, _)) = document::<Close>(n, |p| &p.text_document.uri) else {
                    return false;
                };
                self.open.remove(&path);
            }
            _ => return false,
        }
        true
    }

    /// Plans every pipeline the open files touch; the diagnostics of each file
    /// (an empty list for a file whose problems went).
    fn check(&mut self) -> BTreeMap<PathBuf, Vec<Diagnostic>> {
        let unsaved = Arc::new(self.open.clone());
        let mut found: BTreeMap<PathBuf, Vec<Diagnostic>> = BTreeMap::new();
        for pipeline in self.pipelines() {
            let root = crate::spec::project_root(&pipeline);
            let planning = crate::spec::UNSAVED
                .scope(unsaved.clone(), crate::build_plan(&pipeline, None, &[]));
            match self.runtime.block_on(planning) {
                Ok(plan) => {
                    self.plans.insert(pipeline, plan);
                }
                Err(problem) => {
                    for (file, list) in diagnostics::by_file(&problem, &root, &pipeline) {
                        let file = file.canonicalize().unwrap_or(file);
                        found.entry(file).or_default().extend(list);
                    }
                }
            }
        }
        for file in std::mem::take(&mut self.published) {
            found.entry(file).or_default();
        }
        self.published = found
            .iter()
            .filter(|(_, list)| !list.is_empty())
            .map(|(f, _)| f.clone())
            .collect();
        found
    }

    /// The answer to a hover, definition or completion request (an error for
    /// any other).
    fn answer(&self, request: Request) -> Response {
        match request.method.as_str() {
            CodeLensRequest::METHOD => {
                let lenses = serde_json::from_value::<lsp_types::CodeLensParams>(request.params)
                    .ok()
                    .and_then(|p| self.lenses(&path_of(&p.text_document.uri)?));
                return Response::new_ok(request.id, lenses.unwrap_or_default());
            }
            ExecuteCommand::METHOD => {
                let sql = serde_json::from_value::<lsp_types::ExecuteCommandParams>(request.params)
                    .ok()
                    .filter(|p| p.command == RENDERED_SQL)
                    .and_then(|p| self.rendered_sql(&p.arguments));
                return match sql {
                    Some(sql) => Response::new_ok(request.id, sql),
                    None => Response::new_err(
                        request.id,
                        lsp_server::ErrorCode::InvalidParams as i32,
                        format!("`{RENDERED_SQL}` takes a pipeline's URI and a stage name of its last plan"),
                    ),
                };
            }
            _ => {}
        }
        // Hover, definition and completion all carry a document and a position.
        let at = serde_json::from_value::<TextDocumentPositionParams>(request.params.clone())
            .ok()
            .and_then(|p| Some((path_of(&p.text_document.uri)?, p.position)));
        let result = at.and_then(|(file, position)| match request.method.as_str() {
            HoverRequest::METHOD => self.hover(&file, position),
            GotoDefinition::METHOD => self.definition(&file, position),
            Completion::METHOD => self.completion(&file),
            _ => None,
        });
        match request.method.as_str() {
            HoverRequest::METHOD | GotoDefinition::METHOD | Completion::METHOD => {
                Response::new_ok(request.id, result.unwrap_or(serde_json::Value::Null))
            }
            method => Response::new_err(
                request.id,
                lsp_server::ErrorCode::MethodNotFound as i32,
                format!("sqlplan lsp does not answer `{method}`"),
            ),
        }
    }

    /// The pipelines with a Plan that `file` is, or is a template of.
    fn known_for(&self, file: &Path) -> Vec<(PathBuf, PathBuf, String)> {
        let uses = |pipeline: &PathBuf| {
            let root = crate::spec::project_root(pipeline);
            pipeline == file
                || self.plans[pipeline].stages.iter().any(|s| {
                    s.template
                        .as_ref()
                        .is_some_and(|t| root.join(t).canonicalize().ok().as_deref() == Some(file))
                })
        };
        self.pipelines()
            .into_iter()
            .filter(|p| self.plans.contains_key(p) && uses(p))
            .map(|p| {
                let yaml = self
                    .open
                    .get(&p)
                    .cloned()
                    .or_else(|| std::fs::read_to_string(&p).ok())
                    .unwrap_or_default();
                (crate::spec::project_root(&p), p, yaml)
            })
            .collect()
    }

    fn with_known<T>(&self, file: &Path, f: impl Fn(&answers::Known) -> Option<T>) -> Option<T> {
        self.known_for(file)
            .iter()
            .find_map(|(root, pipeline, yaml)| {
                f(&answers::Known {
                    plan: &self.plans[pipeline],
                    root,
                    pipeline,
                    yaml,
                })
            })
    }

    fn word(&self, file: &Path, position: Position) -> Option<String> {
        let text = match self.open.get(file) {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(file).ok()?,
        };
        answers::word_at(&text, position)
    }

    fn hover(&self, file: &Path, position: Position) -> Option<serde_json::Value> {
        let word = self.word(file, position)?;
        let text = self.with_known(file, |k| k.hover(file, &word))?;
        let hover = Hover {
            contents: HoverContents::Markup(MarkupContent {
                kind: MarkupKind::Markdown,
                value: text,
            }),
            range: None,
        };
        serde_json::to_value(hover).ok()
    }

    fn definition(&self, file: &Path, position: Position) -> Option<serde_json::Value> {
        let word = self.word(file, position)?;
        let (target, line) = self.with_known(file, |k| k.definition(&word))?;
        let at = Position { line, character: 0 };
        serde_json::to_value(Location {
            uri: uri_of(&target)?,
            range: Range { start: at, end: at },
        })
        .ok()
    }

    /// A lens over each stage `file` defines, running `RENDERED_SQL` for it.
    fn lenses(&self, file: &Path) -> Option<Vec<lsp_types::CodeLens>> {
        let (pipeline, lenses) = self
            .known_for(file)
            .into_iter()
            .find_map(|(root, p, yaml)| {
                let known = answers::Known {
                    plan: &self.plans[&p],
                    root: &root,
                    pipeline: &p,
                    yaml: &yaml,
                };
                let lenses = known.lenses(file);
                (!lenses.is_empty()).then(|| (p.clone(), lenses))
            })?;
        let uri = uri_of(&pipeline)?;
        let lens = |(line, stage): (u32, String)| {
            let at = Position { line, character: 0 };
            lsp_types::CodeLens {
                range: Range { start: at, end: at },
                command: Some(lsp_types::Command {
                    title: format!("rendered SQL of `{stage}`"),
                    command: RENDERED_SQL.to_string(),
                    arguments: Some(vec![
                        serde_json::json!(uri.as_str()),
                        serde_json::json!(stage),
                    ]),
                }),
                data: None,
            }
        };
        Some(lenses.into_iter().map(lens).collect())
    }

    /// `RENDERED_SQL`'s answer: arguments (pipeline URI, stage name).
    fn rendered_sql(&self, arguments: &[serde_json::Value]) -> Option<String> {
        let [pipeline, stage] = arguments else {
            return None;
        };
        let pipeline = path_of(&Uri::from_str(pipeline.as_str()?).ok()?)?;
        let stage = stage.as_str()?;
        let plan = self.plans.get(&pipeline)?;
        plan.stages.iter().find(|s| s.name == stage)?.sql.clone()
    }

    fn completion(&self, file: &Path) -> Option<serde_json::Value> {
        let items = self.with_known(file, |k| Some(k.completion(file)))?;
        serde_json::to_value(items).ok()
    }

    /// The open pipeline files, and the pipelines under the project of each open
    /// SQL file that name it.
    fn pipelines(&self) -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        for path in self.open.keys() {
            match path.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml") => {
                    out.insert(path.clone());
                }
                Some("sql") => out.extend(naming(path)),
                _ => {}
            }
        }
        out
    }
}

/// The pipeline files under `sql_file`'s project `pipelines/` folder whose text
/// names the file.
fn naming(sql_file: &Path) -> Vec<PathBuf> {
    let root = crate::spec::project_root(sql_file);
    let Some(name) = sql_file.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut folders = vec![root.join("pipelines")];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && std::fs::read_to_string(&path).is_ok_and(|t| t.contains(name))
            {
                out.push(path.canonicalize().unwrap_or(path));
            }
        }
    }
    out
}

/// A document notification's parameters, and the path of its document.
fn document<P: serde::de::DeserializeOwned>(
    n: Notification,
    uri: impl Fn(&P) -> &Uri,
) -> Option<(PathBuf, P)> {
    let params: P = serde_json::from_value(n.params).ok()?;
    Some((path_of(uri(&params))?, params))
}

fn path_of(uri: &Uri) -> Option<PathBuf> {
    let url = url::Url::parse(uri.as_str()).ok()?;
    let path = url.to_file_path().ok()?;
    Some(path.canonicalize().unwrap_or(path))
}

fn publish(
    connection: &Connection,
    file: &Path,
    diagnostics: Vec<Diagnostic>,
) -> Result<(), Problem> {
    let Some(uri) = uri_of(file) else {
        return Ok(());
    };
    let params = PublishDiagnosticsParams {
        uri,
        diagnostics,
        version: None,
    };
    let note = Notification::new(PublishDiagnostics::METHOD.to_string(), params);
    send(connection, Message::Notification(note))
}

fn send(connection: &Connection, message: Message) -> Result<(), Problem> {
    connection
        .sender
        .send(message)
        .map_err(|e| Problem::failed(Code::LspFailed, format!("the editor went away: {e}")))
}

fn uri_of(file: &Path) -> Option<Uri> {
    url::Url::from_file_path(file)
        .ok()
        .and_then(|u| Uri::from_str(u.as_str()).ok())
}
