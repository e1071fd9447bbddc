//! `sqlplan lsp` driven over stdio with JSON-RPC, as an editor drives it.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

use super::common::{bin, repo};

/// A language server process and the messages it sent, read on a thread.
struct Server {
    child: Child,
    stdin: ChildStdin,
    from: mpsc::Receiver<Value>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_message(out: &mut BufReader<ChildStdout>) -> Option<Value> {
    let mut length = 0;
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(n) = line.strip_prefix("Content-Length: ") {
            length = n.parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    out.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(bin())
            .arg("lsp")
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (to, from) = mpsc::channel();
        std::thread::spawn(move || {
            while let Some(message) = read_message(&mut out) {
                if to.send(message).is_err() {
                    break;
                }
            }
        });
        let mut server = Server { child, stdin, from };
        server.send(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"capabilities": {}, "rootUri": uri(""), "processId": null}}));
        let answer = server.next(|m| m["id"] == 1);
        assert_eq!(
            answer["result"]["capabilities"]["textDocumentSync"], 1,
            "{answer}"
        );
        server.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
        server
    }

    fn send(&mut self, message: Value) {
        let body = message.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// The next message `wanted` accepts (others are skipped), within 60 s.
    fn next(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            let message = self
                .from
                .recv_timeout(Duration::from_secs(60))
                .expect("the server answered within a minute");
            if wanted(&message) {
                return message;
            }
        }
    }

    /// The next diagnostics published for `file`.
    fn diagnostics(&mut self, file: &str) -> Vec<Value> {
        let uri = uri(file);
        let m = self.next(|m| {
            m["method"] == "textDocument/publishDiagnostics" && m["params"]["uri"] == uri
        });
        m["params"]["diagnostics"].as_array().unwrap().clone()
    }
}

/// The file URI of `path` in the repository.
fn uri(path: &str) -> String {
    let full = repo().join(path);
    let full = full.canonicalize().unwrap_or(full);
    url::Url::from_file_path(full).unwrap().to_string()
}

fn open(server: &mut Server, file: &str, text: &str) {
    let language = if file.ends_with(".sql") {
        "sql"
    } else {
        "yaml"
    };
    server.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri(file), "languageId": language, "version": 1, "text": text}}),
    );
}

fn change(server: &mut Server, file: &str, version: i64, text: &str) {
    server.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri(file), "version": version},
            "contentChanges": [{"text": text}]}),
    );
}

impl Server {
    /// The result of request `method` at `line`/`character` of `file`.
    fn ask(&mut self, id: i64, method: &str, file: &str, line: usize, character: usize) -> Value {
        self.send(
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {
            "textDocument": {"uri": uri(file)},
            "position": {"line": line, "character": character}}}),
        );
        self.next(|m| m["id"] == id)["result"].clone()
    }
}

/// Hover, definition and completion in the template, from its pipeline's plan.
fn answers_from_the_plan(server: &mut Server, template: &str, text: &str) {
    let at = |word: &str| {
        let line = text.lines().position(|l| l.contains(word)).unwrap();
        (
            line,
            text.lines().nth(line).unwrap().find(word).unwrap() + 1,
        )
    };
    let (line, col) = at("window_months wm");
    let hover = server.ask(10, "textDocument/hover", template, line, col);
    let shown = hover["contents"]["value"].as_str().unwrap_or_default();
    assert!(shown.starts_with("**relation `window_months`**"), "{hover}");
    assert!(shown.contains("sql/summary/window_months.sql"), "{hover}");
    let (line, col) = at("FROM summary s");
    let hover = server.ask(11, "textDocument/hover", template, line, col + 5);
    let shown = hover["contents"]["value"].as_str().unwrap_or_default();
    assert!(shown.starts_with("**table `summary`**"), "{hover}");
    assert!(shown.contains("partitioned by rpt_as_of_mo"), "{hover}");
    let (line, col) = at("cons_acct_key = w.");
    let hover = server.ask(12, "textDocument/hover", template, line, col);
    let shown = hover["contents"]["value"].as_str().unwrap_or_default();
    assert!(shown.contains("`cons_acct_key`: Int64"), "{hover}");
    let (line, col) = at("window_months wm");
    let place = server.ask(13, "textDocument/definition", template, line, col);
    assert_eq!(
        place["uri"],
        uri("sql/summary/window_months.sql"),
        "{place}"
    );
    let items = server.ask(14, "textDocument/completion", template, line, 0);
    let labels: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    for wanted in [
        "window_months",
        "summary",
        "latest_summary",
        "cons_acct_key",
    ] {
        assert!(labels.contains(&wanted), "{wanted} not in {labels:?}");
    }
    // A lens on the template runs the command that answers its rendered SQL.
    let lenses = server.ask(15, "textDocument/codeLens", template, 0, 0);
    assert_eq!(lenses.as_array().unwrap().len(), 1, "{lenses}");
    let command = &lenses[0]["command"];
    assert_eq!(command["title"], "rendered SQL of `existing`", "{lenses}");
    server.send(
        json!({"jsonrpc": "2.0", "id": 16, "method": "workspace/executeCommand",
        "params": {"command": command["command"], "arguments": command["arguments"]}}),
    );
    let sql = server.next(|m| m["id"] == 16)["result"].clone();
    let sql = sql.as_str().unwrap_or_default();
    assert!(
        sql.contains("FROM summary s") && !sql.contains("{{"),
        "{sql}"
    );
    // The pipeline file has a lens per stage, on the stage's line.
    let pipeline = "pipelines/summary.yaml";
    let lenses = server.ask(17, "textDocument/codeLens", pipeline, 0, 0);
    let yaml = std::fs::read_to_string(repo().join(pipeline)).unwrap();
    let existing = lenses
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["command"]["title"] == "rendered SQL of `existing`")
        .unwrap_or_else(|| panic!("{lenses}"));
    let line = existing["range"]["start"]["line"].as_u64().unwrap() as usize;
    assert!(
        yaml.lines().nth(line).unwrap().contains("name: existing"),
        "{lenses}"
    );
}

/// The summary pipeline's template, broken in the editor and not saved, shows
/// the problem `plan` finds, in the template at its line; fixed, the list is
/// cleared; an unknown key typed into the pipeline YAML shows there.
#[test]
fn diagnostics_follow_unsaved_edits_of_the_summary_pipeline_and_its_templates() {
    let template = "sql/summary/existing.sql";
    let original = std::fs::read_to_string(repo().join(template)).unwrap();
    let pipeline = "pipelines/summary.yaml";
    let yaml = std::fs::read_to_string(repo().join(pipeline)).unwrap();
    let mut server = Server::start();
    open(&mut server, template, &original);
    // A column no relation has, on the template's second line.
    let broken = format!(
        "\n{}",
        original.replacen("SELECT", "SELECT no_such_column,", 1)
    );
    change(&mut server, template, 2, &broken);
    let found = server.diagnostics(template);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["source"], "sqlplan");
    assert!(
        found[0]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_column"),
        "{found:#?}"
    );
    let line = broken
        .lines()
        .position(|l| l.contains("no_such_column"))
        .unwrap();
    assert_eq!(found[0]["range"]["start"]["line"], line, "{found:#?}");
    change(&mut server, template, 3, &original);
    assert_eq!(server.diagnostics(template), Vec::<Value>::new());
    answers_from_the_plan(&mut server, template, &original);
    // The pipeline file, with a key no stage has.
    open(&mut server, pipeline, &yaml);
    let typo = yaml.replacen("stages:", "stages_typo: 1\nstages:", 1);
    change(&mut server, pipeline, 2, &typo);
    let found = server.diagnostics(pipeline);
    assert!(!found.is_empty(), "a problem in the YAML");
    assert!(
        found
            .iter()
            .any(|d| d["message"].as_str().unwrap().contains("stages_typo")),
        "{found:#?}"
    );
    // Nothing was written: the files on disk are as they were.
    assert_eq!(
        std::fs::read_to_string(repo().join(template)).unwrap(),
        original
    );
    server.send(json!({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}));
    server.next(|m| m["id"] == 2);
    server.notify("exit", json!(null));
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// A real editor's client: Neovim's built-in LSP client, headless, opens a
/// template, breaks it without saving and receives the problem at its line.
/// Skipped without `nvim` unless SQLPLAN_REQUIRE_NVIM is set (as in CI).
#[test]
fn neovims_client_shows_the_problem_of_an_unsaved_template() {
    let found = Command::new("nvim").arg("--version").output();
    if !found.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("SQLPLAN_REQUIRE_NVIM").is_none(),
            "nvim is required here (apt-get install neovim)"
        );
        eprintln!("skipped: no nvim");
        return;
    }
    let template = "sql/summary/existing.sql";
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("diagnostics.txt");
    let script = repo().join("tests/it/lsp_editor/nvim.lua");
    let status = Command::new("nvim")
        .args(["--headless", "-u", "NONE", "-i", "NONE", "-n"])
        .arg("-c")
        .arg(format!("luafile {}", script.display()))
        .env("SQLPLAN_LSP_BIN", bin())
        .env("SQLPLAN_LSP_ROOT", repo())
        .env("SQLPLAN_LSP_FILE", template)
        .env("SQLPLAN_LSP_OUT", &out)
        .env("HOME", dir.path())
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let original = std::fs::read_to_string(repo().join(template)).unwrap();
    let line = original.lines().position(|l| l.contains("SELECT")).unwrap();
    let fields: Vec<&str> = lines[0].splitn(3, '\t').collect();
    assert_eq!(fields[0], line.to_string(), "{text}");
    assert!(fields[2].contains("no_such_column"), "{text}");
    assert_eq!(
        std::fs::read_to_string(repo().join(template)).unwrap(),
        original,
        "nothing saved"
    );
}
