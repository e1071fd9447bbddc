//! `plan --baseline REF`: what a change to a pipeline does, for the people and bots
//! that review it. Two plans of the same pipeline on the same warehouse and vars —
//! the baseline (a git revision of the project, or a saved `plan --format json`) and
//! the working tree — compared on their JSON form: stages added, removed and
//! reordered; each stage's rendered SQL; scans whose access got worse or whose
//! estimated bytes grew; budgets crossed; warnings.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::diag::{Code, Problem};

/// The review's JSON format; bumped when a field changes meaning or goes away.
pub const FORMAT_VERSION: u32 = 1;

/// Diagnostic codes that mean a budget was crossed (warnings of a review plan).
const BUDGET_CODES: &[&str] = &["scan_budget", "byte_budget"];

/// The baseline plan as JSON, and what it was built from.
pub struct Baseline {
    pub label: String,
    pub plan: Value,
}

/// The baseline named by `reference`: a file holding `plan --format json`, or a git
/// revision of the repository holding the pipeline, planned with the same vars on
/// the same warehouse.
pub async fn baseline(
    pipeline: &Path,
    root: Option<&Path>,
    vars: &[(String, String)],
    reference: &str,
) -> Result<Baseline, Problem> {
    let as_file = Path::new(reference);
    if as_file.is_file() {
        let text = std::fs::read_to_string(as_file)
            .map_err(|e| bad(format!("cannot read {reference}: {e}")))?;
        let plan: Value = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "{reference} is not a plan in JSON (`plan --format json`): {e}"
            ))
        })?;
        if plan.get("stages").is_none() {
            return Err(bad(format!(
                "{reference} is not a plan in JSON (`plan --format json`): it has no stages"
            )));
        }
        return Ok(Baseline {
            label: reference.to_string(),
            plan,
        });
    }
    let checkout = checkout(pipeline, reference)?;
    let pipeline_then = checkout.dir.path().join(&checkout.pipeline);
    let root_then = root.map(|r| match relative_to_repo(r) {
        Some(rel) => checkout.dir.path().join(rel),
        None => r.to_path_buf(),
    });
    let plan = crate::review_plan(&pipeline_then, root_then.as_deref(), vars)
        .await
        .map_err(|p| {
            Problem::invalid(
                Code::BadBaseline,
                format!("the baseline {reference} does not plan: {}", p.message),
            )
        })?;
    let mut plan: Value = serde_json::from_str(&plan.to_json(false)).expect("plans serialise");
    // The checkout's temporary path is not part of the change.
    let text = plan
        .to_string()
        .replace(&checkout.dir.path().display().to_string(), ".");
    plan = serde_json::from_str(&text).expect("still JSON");
    Ok(Baseline {
        label: format!("git {reference}"),
        plan,
    })
}

fn bad(message: String) -> Problem {
    Problem::invalid(Code::BadBaseline, message)
}

struct Checkout {
    dir: tempfile::TempDir,
    /// The pipeline file, relative to the repository root.
    pipeline: PathBuf,
}

/// The repository at `reference`, exported (`git archive`) into a temporary folder.
fn checkout(pipeline: &Path, reference: &str) -> Result<Checkout, Problem> {
    let absolute = std::path::absolute(pipeline).map_err(|e| bad(e.to_string()))?;
    let dir = absolute.parent().unwrap_or(Path::new("."));
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let top = PathBuf::from(String::from_utf8_lossy(&top).trim());
    let real = std::fs::canonicalize(&absolute).unwrap_or(absolute);
    let top_real = std::fs::canonicalize(&top).unwrap_or(top.clone());
    let rel = real
        .strip_prefix(&top_real)
        .map_err(|_| {
            bad(format!(
                "{} is not inside the git repository {}",
                pipeline.display(),
                top.display()
            ))
        })?
        .to_path_buf();
    git(
        &top,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{reference}^{{commit}}"),
        ],
    )
    .map_err(|_| {
        bad(format!(
            "`{reference}` is neither a plan file nor a git revision of {}",
            top.display()
        ))
    })?;
    let out = tempfile::Builder::new()
        .prefix("sqlplan-baseline")
        .tempdir()
        .map_err(|e| bad(format!("cannot create a temporary folder: {e}")))?;
    let archive = git(&top, &["archive", "--format=tar", reference])?;
    tar::Archive::new(archive.as_slice())
        .unpack(out.path())
        .map_err(|e| bad(format!("cannot unpack {reference}: {e}")))?;
    Ok(Checkout {
        dir: out,
        pipeline: rel,
    })
}

/// `--root` relative to the repository, when it is inside it.
fn relative_to_repo(root: &Path) -> Option<PathBuf> {
    let absolute = std::fs::canonicalize(root).ok()?;
    let top = git(&absolute, &["rev-parse", "--show-toplevel"]).ok()?;
    let top = std::fs::canonicalize(String::from_utf8_lossy(&top).trim()).ok()?;
    absolute.strip_prefix(top).ok().map(Path::to_path_buf)
}

fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, Problem> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| bad(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(bad(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// The difference between two plans.
#[derive(Debug, Default, Serialize)]
pub struct Review {
    pub format_version: u32,
    pub baseline: String,
    /// Anything below differs.
    pub changed: bool,
    /// The current plan crosses a budget (exit 2).
    pub invalid: bool,
    pub stages_added: Vec<String>,
    pub stages_removed: Vec<String>,
    /// (a, b): a ran before b in the baseline and after it now.
    pub reordered: Vec<(String, String)>,
    pub stages_changed: Vec<StageChange>,
    pub scans_worse: Vec<ScanChange>,
    pub scans_added: Vec<ScanChange>,
    pub scans_removed: Vec<ScanChange>,
    pub budgets_crossed: Vec<String>,
    pub warnings_added: Vec<String>,
    pub warnings_removed: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct StageChange {
    pub stage: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// `kind: merge → insert`, `writes: a → b`.
    pub changes: Vec<String>,
    /// A unified diff of the rendered SQL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql_diff: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ScanChange {
    pub table: String,
    pub stage: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// `pruned by partition → full`, `estimated 1.0 MB → 5.0 MB`.
    pub what: String,
}

/// Compares the baseline with the current plan (both as `plan --format json`).
pub fn diff(baseline: &Baseline, current: &Value) -> Review {
    let mut r = Review {
        format_version: FORMAT_VERSION,
        baseline: baseline.label.clone(),
        ..Default::default()
    };
    let base = &baseline.plan;
    stages(base, current, &mut r);
    scans(base, current, &mut r);
    let warnings = |plan: &Value| -> BTreeSet<(String, String)> {
        plan["warnings"]
            .as_array()
            .map(|w| {
                w.iter()
                    .map(|w| {
                        (
                            w["code"].as_str().unwrap_or_default().to_string(),
                            w["message"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (before, now) = (warnings(base), warnings(current));
    for (code, message) in now.difference(&before) {
        if BUDGET_CODES.contains(&code.as_str()) {
            r.budgets_crossed.push(message.clone());
        } else {
            r.warnings_added
                .push(format!("{message} [sqlplan::{code}]"));
        }
    }
    for (code, message) in before.difference(&now) {
        r.warnings_removed
            .push(format!("{message} [sqlplan::{code}]"));
    }
    r.invalid = now
        .iter()
        .any(|(code, _)| BUDGET_CODES.contains(&code.as_str()));
    r.changed = !(r.stages_added.is_empty()
        && r.stages_removed.is_empty()
        && r.reordered.is_empty()
        && r.stages_changed.is_empty()
        && r.scans_worse.is_empty()
        && r.scans_added.is_empty()
        && r.scans_removed.is_empty()
        && r.budgets_crossed.is_empty()
        && r.warnings_added.is_empty()
        && r.warnings_removed.is_empty());
    r
}

fn stage_list(plan: &Value) -> Vec<&Value> {
    plan["stages"]
        .as_array()
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

fn stages(base: &Value, current: &Value, r: &mut Review) {
    let (before, now) = (stage_list(base), stage_list(current));
    let names = |stages: &[&Value]| -> Vec<String> {
        stages.iter().map(|s| text(s, "name").to_string()).collect()
    };
    let (before_names, now_names) = (names(&before), names(&now));
    let before_set: BTreeSet<&String> = before_names.iter().collect();
    let now_set: BTreeSet<&String> = now_names.iter().collect();
    r.stages_added = now_names
        .iter()
        .filter(|n| !before_set.contains(n))
        .cloned()
        .collect();
    r.stages_removed = before_names
        .iter()
        .filter(|n| !now_set.contains(n))
        .cloned()
        .collect();
    // Order among the stages both have: a pair is reordered when it swapped.
    let position = |names: &[String]| -> BTreeMap<String, usize> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect()
    };
    let (pb, pn) = (position(&before_names), position(&now_names));
    let common: Vec<&String> = before_names
        .iter()
        .filter(|n| now_set.contains(n))
        .collect();
    for (i, a) in common.iter().enumerate() {
        for b in &common[i + 1..] {
            if pb[*a] < pb[*b] && pn[*a] > pn[*b] {
                r.reordered.push(((*a).clone(), (*b).clone()));
            }
        }
    }
    let by_name: BTreeMap<&str, &Value> = before.iter().map(|s| (text(s, "name"), *s)).collect();
    for s in &now {
        let name = text(s, "name");
        let Some(old) = by_name.get(name) else {
            continue;
        };
        let mut changes = Vec::new();
        for key in ["kind", "writes"] {
            let (a, b) = (text(old, key), text(s, key));
            if a != b {
                changes.push(format!("{key}: {} → {}", or_none(a), or_none(b)));
            }
        }
        let (a, b) = (text(old, "sql"), text(s, "sql"));
        let sql_diff = (a != b).then(|| {
            // Rendered SQL has no final newline; the diff should not say so.
            let (a, b) = (format!("{}\n", a.trim_end()), format!("{}\n", b.trim_end()));
            similar::TextDiff::from_lines(&a, &b)
                .unified_diff()
                .context_radius(2)
                .header("baseline", "current")
                .to_string()
        });
        if !changes.is_empty() || sql_diff.is_some() {
            r.stages_changed.push(StageChange {
                stage: name.to_string(),
                template: s["template"].as_str().map(str::to_string),
                changes,
                sql_diff,
            });
        }
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "none"
    } else {
        s
    }
}

/// One scan of a plan, keyed by table, stage, view and its rank among the stage's
/// scans of that table through that view.
type ScanKey = (String, String, String, usize);

fn scan_map(plan: &Value) -> BTreeMap<ScanKey, &Value> {
    let mut out = BTreeMap::new();
    for table in plan["scans"].as_array().into_iter().flatten() {
        let name = text(table, "table").to_string();
        let mut rank: BTreeMap<(String, String), usize> = BTreeMap::new();
        for scan in table["scans"].as_array().into_iter().flatten() {
            let key = (
                text(scan, "stage").to_string(),
                text(scan, "via").to_string(),
            );
            let n = rank.entry(key.clone()).or_default();
            out.insert((name.clone(), key.0, key.1, *n), scan);
            *n += 1;
        }
    }
    out
}

fn scans(base: &Value, current: &Value, r: &mut Review) {
    let (before, now) = (scan_map(base), scan_map(current));
    let change = |key: &ScanKey, what: String| ScanChange {
        table: key.0.clone(),
        stage: key.1.clone(),
        via: (!key.2.is_empty()).then(|| key.2.clone()),
        what,
    };
    let bytes = |s: &Value| s["estimate"]["bytes"]["max"].as_u64().unwrap_or(0);
    let estimate = |s: &Value| {
        serde_json::from_value::<crate::plan::Estimate>(s["estimate"].clone())
            .map(|e| e.text())
            .unwrap_or_default()
    };
    for (key, s) in &now {
        match before.get(key) {
            None => r
                .scans_added
                .push(change(key, format!("{}; {}", access(s), estimate(s)))),
            Some(old) => {
                let mut what = Vec::new();
                if text(old, "access") != "full" && text(s, "access") == "full" {
                    what.push(format!("{} → {}", access(old), access(s)));
                }
                if bytes(s) > bytes(old) {
                    what.push(format!("estimated {} → {}", estimate(old), estimate(s)));
                }
                if !what.is_empty() {
                    r.scans_worse.push(change(key, what.join("; ")));
                }
            }
        }
    }
    for (key, s) in &before {
        if !now.contains_key(key) {
            r.scans_removed
                .push(change(key, format!("{}; {}", access(s), estimate(s))));
        }
    }
}

fn access(scan: &Value) -> String {
    serde_json::from_value::<crate::plan::Access>(scan["access"].clone())
        .map(|a| a.label().to_string())
        .unwrap_or_else(|_| text(scan, "access").to_string())
}

impl Review {
    /// The exit code: 0 unchanged, 3 changed, 2 a budget crossed (invalid).
    pub fn exit_code(&self) -> i32 {
        match (self.invalid, self.changed) {
            (true, _) => 2,
            (false, true) => 3,
            (false, false) => 0,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reviews serialise") + "\n"
    }

    /// For people; `markdown` fits a pull-request comment.
    pub fn to_text(&self, pipeline: &str, markdown: bool) -> String {
        let mut out = String::new();
        let heading = |out: &mut String, title: &str| {
            if markdown {
                let _ = writeln!(out, "\n### {title}\n");
            } else {
                let _ = writeln!(out, "\n{title}");
            }
        };
        let item = if markdown { "- " } else { "  " };
        let verdict = match self.exit_code() {
            0 => "unchanged",
            3 => "changed",
            _ => "changed, and a budget is crossed",
        };
        if markdown {
            let _ = writeln!(
                out,
                "## sqlplan review of `{pipeline}`: {verdict}\n\nbaseline: {}",
                self.baseline
            );
        } else {
            let _ = writeln!(
                out,
                "review of pipeline {pipeline}: {verdict} (baseline: {})",
                self.baseline
            );
        }
        if !self.budgets_crossed.is_empty() {
            heading(&mut out, "budgets crossed");
            for b in &self.budgets_crossed {
                let _ = writeln!(out, "{item}✗ {b}");
            }
        }
        if !(self.stages_added.is_empty()
            && self.stages_removed.is_empty()
            && self.reordered.is_empty())
        {
            heading(&mut out, "stages");
            for s in &self.stages_added {
                let _ = writeln!(out, "{item}+ {s} (new)");
            }
            for s in &self.stages_removed {
                let _ = writeln!(out, "{item}- {s} (removed)");
            }
            for (a, b) in &self.reordered {
                let _ = writeln!(out, "{item}~ {b} now runs before {a}");
            }
        }
        if !self.scans_worse.is_empty()
            || !self.scans_added.is_empty()
            || !self.scans_removed.is_empty()
        {
            heading(&mut out, "scans");
            let name = |c: &ScanChange| {
                let via = c
                    .via
                    .as_ref()
                    .map(|v| format!(" via {v}"))
                    .unwrap_or_default();
                format!("{} by {}{via}", c.table, c.stage)
            };
            for c in &self.scans_worse {
                let _ = writeln!(out, "{item}! {}: {}", name(c), c.what);
            }
            for c in &self.scans_added {
                let _ = writeln!(out, "{item}+ {}: {}", name(c), c.what);
            }
            for c in &self.scans_removed {
                let _ = writeln!(out, "{item}- {}: {}", name(c), c.what);
            }
        }
        if !self.stages_changed.is_empty() {
            heading(&mut out, "changed stages");
            for s in &self.stages_changed {
                let template = s
                    .template
                    .as_ref()
                    .map(|t| format!(" [{t}]"))
                    .unwrap_or_default();
                let _ = writeln!(out, "{item}{}{template}", s.stage);
                for c in &s.changes {
                    let _ = writeln!(out, "    {c}");
                }
                if let Some(d) = &s.sql_diff {
                    if markdown {
                        let _ = writeln!(out, "\n```diff\n{}```\n", d);
                    } else {
                        for line in d.lines() {
                            let _ = writeln!(out, "    {line}");
                        }
                    }
                }
            }
        }
        if !self.warnings_added.is_empty() || !self.warnings_removed.is_empty() {
            heading(&mut out, "warnings");
            for w in &self.warnings_added {
                let _ = writeln!(out, "{item}+ {w}");
            }
            for w in &self.warnings_removed {
                let _ = writeln!(out, "{item}- {w}");
            }
        }
        out
    }
}
