//! Every kind of bad input: a miette diagnostic naming file, line and column,
//! exit code 2, nothing touched, never a panic. Each case is a folder of
//! `tests/diagnostics/`: a project (`pipeline.yaml`, `sql/`), optional extra
//! arguments of `sqlplan plan` (`args`, one per line) and the snapshot of what
//! `plan` prints (`diag_<case>.snap`). A new case is a folder; no Rust to write.
//! The folder `valid` holds the project the cases are variations of: it plans.

use std::path::{Path, PathBuf};

use crate::common::{repo, settings, Project};

fn cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/diagnostics"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// The case's files (snapshot and args aside), relative to the case folder.
fn project_files(dir: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if path.is_dir() {
                walk(root, &path, out);
            } else if rel != "args" && !rel.ends_with(".snap") {
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn every_diagnostic_case_is_pinned_by_its_snapshot() {
    let cases = cases();
    assert!(cases.len() > 25, "{cases:?}");
    for dir in cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let files = project_files(&dir);
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, t)| (p.as_str(), t.as_str()))
            .collect();
        let project = Project::new(&files);
        let before = project.listing();
        let extra = std::fs::read_to_string(dir.join("args")).unwrap_or_default();
        let mut args = vec!["plan", "pipeline.yaml"];
        args.extend(extra.lines().filter(|l| !l.is_empty()));
        let out = project.sqlplan(&args);
        if name == "valid" {
            assert_eq!(out.code, 0, "valid: {}", out.stderr);
            continue;
        }
        assert_eq!(
            out.code, 2,
            "{name}: expected exit 2\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        );
        assert!(
            out.stdout.is_empty(),
            "{name}: nothing on stdout, got {}",
            out.stdout
        );
        assert!(
            !out.stderr.contains("panicked"),
            "{name}: panic\n{}",
            out.stderr
        );
        assert!(
            !out.stderr.contains('\u{1b}'),
            "{name}: colour codes in\n{}",
            out.stderr
        );
        assert_eq!(
            project.listing(),
            before,
            "{name}: plan touched the project"
        );
        let mut settings = settings(Some(project.path()));
        settings.set_snapshot_path(&dir);
        settings.bind(|| insta::assert_snapshot!(format!("diag_{name}"), out.stderr));
    }
}
