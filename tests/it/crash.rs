//! A run that dies at any point is repaired by running again: the next run gives
//! exactly the tables of an uninterrupted run (every column of every row), and no
//! write of the interrupted run is applied twice. Proven with failpoints (every
//! point of the summary pipeline) and with SIGKILL at random moments of the real
//! binary. `SQLPLAN_KILL_TRIALS` sets the number of kills (default 4).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rand::{Rng, SeedableRng};

use crate::common::{create_table, query_tables, repo, Project};

/// The tables the summary pipeline writes.
const WRITTEN: [&str; 3] = ["summary", "latest_summary", "rejected_records"];

/// A generated warehouse, small enough that a run takes a second or two.
fn generated(dir: &Path) -> PathBuf {
    let wh = dir.join("generated");
    crate::common::generate_summary(
        &wh,
        &[
            "--accounts",
            "150",
            "--months",
            "14",
            "--batch-records",
            "300",
            "--seed",
            "5",
            "--hist-rpt",
            "--bad-records",
            "5",
        ],
    );
    wh
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn command(args: &[&str], failpoint: Option<&str>) -> Command {
    command_in(&repo(), args, failpoint)
}

fn command_in(dir: &Path, args: &[&str], failpoint: Option<&str>) -> Command {
    let mut cmd = Command::new(crate::common::bin());
    cmd.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .env_remove("SQLPLAN_FAILPOINT");
    if let Some(point) = failpoint {
        cmd.env("SQLPLAN_FAILPOINT", point);
    }
    cmd
}

fn run_sqlplan(args: &[&str], failpoint: Option<&str>) -> std::process::Output {
    command(args, failpoint).output().expect("run sqlplan")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// With `compact_deleted_above=0` the compaction stages rewrite every partition
/// the run's vectors touched, so their commits are crash points too.
fn run_args(warehouse: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "pipelines/summary.yaml".into(),
        "--var".into(),
        format!("warehouse={}", warehouse.display()),
        "--var".into(),
        "compact_deleted_above=0".into(),
    ]
}

/// Runs the summary pipeline to the end (resuming whatever was interrupted).
fn run_to_completion(warehouse: &Path) -> String {
    let args = run_args(warehouse);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_sqlplan(&args, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every row of every written table, all columns, sorted.
async fn tables(warehouse: &Path) -> BTreeMap<&'static str, Vec<String>> {
    let mut out = BTreeMap::new();
    for name in WRITTEN {
        let mut rows = query_tables(&[("t", &warehouse.join(name))], "SELECT * FROM t").await;
        rows.sort();
        out.insert(name, rows);
    }
    out
}

/// (table, stage, run) of every sqlplan commit that appears more than once in a log.
fn writes_applied_twice(warehouse: &Path) -> Vec<String> {
    let mut seen = BTreeMap::new();
    for name in WRITTEN {
        let log = warehouse.join(name).join("_delta_log");
        for entry in std::fs::read_dir(&log).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let action: serde_json::Value = serde_json::from_str(line).unwrap();
                let Some(info) = action.get("commitInfo") else {
                    continue;
                };
                if let (Some(stage), Some(run)) =
                    (info.get("sqlplan.stage"), info.get("sqlplan.run"))
                {
                    *seen.entry(format!("{name} {stage} {run}")).or_insert(0) += 1;
                }
            }
        }
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect()
}

/// Every failpoint of the summary pipeline: before and after each stage, between
/// each write and its commit, and around the finish commit.
fn failpoints(warehouse: &Path) -> Vec<String> {
    let out = run_sqlplan(
        &[
            "plan",
            "pipelines/summary.yaml",
            "--format",
            "json",
            "--var",
            &format!("warehouse={}", warehouse.display()),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut points = Vec::new();
    for stage in plan["stages"].as_array().unwrap() {
        let name = stage["name"].as_str().unwrap();
        points.push(format!("before:{name}"));
        if stage.get("writes").is_some() {
            points.push(format!("commit:{name}"));
        }
        if stage.get("quarantine").is_some() {
            points.push(format!("commit:{name}:quarantine"));
        }
        points.push(format!("after:{name}"));
    }
    points.extend(["before:finish", "commit:finish", "after:finish"].map(String::from));
    points
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_every_failpoint_is_repaired_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let generated = generated(dir.path());
    let reference = dir.path().join("reference");
    copy_dir(&generated, &reference);
    run_to_completion(&reference);
    let expected = tables(&reference).await;

    let points = failpoints(&generated);
    assert!(points.len() > 40, "{points:?}");
    // A compaction commits only when some partition has rows deleted by vectors:
    // latest_summary's one file is rewritten by the MERGE (most rows change), so it
    // has none. summary's compaction must commit.
    let mut compactions_reached = Vec::new();
    for (i, point) in points.iter().enumerate() {
        let wh = dir.path().join(format!("point{i}"));
        copy_dir(&generated, &wh);
        let args = run_args(&wh);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let crashed = run_sqlplan(&args, Some(point));
        if point.starts_with("commit:compact_") {
            if crashed.status.code() == Some(0) {
                std::fs::remove_dir_all(&wh).unwrap();
                continue;
            }
            compactions_reached.push(point.clone());
        }
        assert_ne!(crashed.status.code(), Some(0), "{point} was never reached");
        assert!(
            stderr(&crashed).contains(&format!("failpoint `{point}`")),
            "{point}: {}",
            stderr(&crashed)
        );
        let resumed = run_to_completion(&wh);
        assert_eq!(tables(&wh).await, expected, "after a crash at {point}");
        assert_eq!(writes_applied_twice(&wh), Vec::<String>::new(), "{point}");
        // The state moved: one more run finds an empty batch and changes nothing.
        let before = tables(&wh).await;
        run_to_completion(&wh);
        assert_eq!(
            tables(&wh).await,
            before,
            "a run after {point} changed the tables"
        );
        if point.starts_with("after:merge") || point == "commit:finish" {
            assert!(resumed.contains("(resumed)"), "{point}: {resumed}");
        }
        // The resumed run's report names what it did not run again.
        if let Some(stage) = point
            .strip_prefix("after:merge_")
            .map(|s| format!("merge_{s}"))
        {
            let line = resumed
                .lines()
                .find(|l| l.starts_with(&format!("{stage} ")))
                .unwrap_or("");
            assert!(line.contains(" committed "), "{point}: {resumed}");
        }
        // The ledger holds the crashed attempt, then the one that finished.
        let ledger = run_sqlplan(
            &[
                "runs",
                "pipelines/summary.yaml",
                "--format",
                "json",
                "--var",
                &format!("warehouse={}", wh.display()),
            ],
            None,
        );
        let ledger: serde_json::Value = serde_json::from_slice(&ledger.stdout).unwrap();
        let statuses: Vec<&str> = ledger
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            statuses,
            ["succeeded", "succeeded", "interrupted"],
            "{point}"
        );
        std::fs::remove_dir_all(&wh).unwrap();
    }
    assert!(
        compactions_reached.contains(&"commit:compact_summary".to_string()),
        "{compactions_reached:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_at_random_moments_is_repaired_by_the_next_run() {
    let trials: usize = std::env::var("SQLPLAN_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let generated = generated(dir.path());
    let reference = dir.path().join("reference");
    copy_dir(&generated, &reference);
    let started = Instant::now();
    run_to_completion(&reference);
    let uninterrupted = started.elapsed();
    let expected = tables(&reference).await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut killed, mut resumed) = (0, 0);
    for trial in 0..trials {
        let wh = dir.path().join(format!("trial{trial}"));
        copy_dir(&generated, &wh);
        let delay = uninterrupted.mul_f64(rng.random_range(0.05..1.0));
        let mut child = command(
            &run_args(&wh).iter().map(String::as_str).collect::<Vec<_>>(),
            None,
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        resumed += usize::from(run_to_completion(&wh).contains("(resumed)"));
        assert_eq!(
            tables(&wh).await,
            expected,
            "trial {trial}: killed after {delay:?}"
        );
        assert_eq!(
            writes_applied_twice(&wh),
            Vec::<String>::new(),
            "trial {trial}"
        );
        std::fs::remove_dir_all(&wh).unwrap();
    }
    eprintln!(
        "{killed} of {trials} runs killed mid-run, {resumed} of them after a commit \
         (resumed); uninterrupted run: {uninterrupted:?}"
    );
    assert!(killed * 2 >= trials, "too few runs were killed mid-run");
}

const TWO_TABLES: &str = r#"name: two
vars: {tag: x}
state: {mark: {table: b, default: "none"}}
tables:
  src: {location: warehouse/src}
  a: {location: warehouse/a, schema: [{name: id, type: BIGINT}, {name: tag, type: STRING}]}
  b: {location: warehouse/b, schema: [{name: id, type: BIGINT}, {name: tag, type: STRING}]}
stages:
  - name: write_a
    query: "INSERT INTO a SELECT id, '{{ tag }}' FROM src"
  - name: write_b
    query: "INSERT INTO b SELECT id, '{{ tag }}' FROM src"
    after: [write_a]
  - name: mark
    query: SELECT CAST(max(id) AS VARCHAR) AS mark FROM src
    materialize: true
    state: mark
"#;

async fn two_tables() -> Project {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let p = Project::new(&[("pipeline.yaml", TWO_TABLES)]);
    let schema = Schema::new(vec![Field::new("id", DataType::Int64, true)]);
    let batch = RecordBatch::try_new(
        std::sync::Arc::new(schema),
        vec![std::sync::Arc::new(Int64Array::from(vec![1, 2]))],
    )
    .unwrap();
    create_table(&p.warehouse().join("src"), batch, &[]).await;
    p
}

fn run_two(p: &Project, extra: &[&str], failpoint: Option<&str>) -> std::process::Output {
    let mut args = vec!["run", "pipeline.yaml"];
    args.extend(extra);
    command_in(p.path(), &args, failpoint).output().unwrap()
}

async fn rows(p: &Project, table: &str) -> Vec<String> {
    let mut rows = query_tables(&[("t", &p.warehouse().join(table))], "SELECT * FROM t").await;
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_run_is_resumed_and_its_committed_writes_are_not_repeated() {
    let p = two_tables().await;
    let crashed = run_two(&p, &[], Some("after:write_a"));
    assert_ne!(crashed.status.code(), Some(0));
    assert_eq!(rows(&p, "a").await, ["1,x", "2,x"]);
    assert_eq!(rows(&p, "b").await, Vec::<String>::new());
    let resumed = run_two(&p, &["--report", "run.json"], None);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(stdout.contains("run 1 of two (resumed)"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.path().join("run.json")).unwrap()).unwrap();
    assert_eq!(report["resumed"], true);
    assert_eq!(report["stages"][0]["name"], "write_a");
    assert_eq!(report["stages"][0]["status"], "committed");
    assert_eq!(
        rows(&p, "a").await,
        ["1,x", "2,x"],
        "write_a is not applied twice"
    );
    assert_eq!(rows(&p, "b").await, ["1,x", "2,x"]);
    // Finished: the next run is run 2 and reads the recorded state.
    let next = run_two(&p, &[], None);
    assert_eq!(next.status.code(), Some(0), "{}", stderr(&next));
    assert!(String::from_utf8_lossy(&next.stdout).contains("run 2 of two:"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unfinished_run_with_another_plan_is_refused_or_abandoned() {
    let p = two_tables().await;
    let crashed = run_two(&p, &[], Some("after:write_a"));
    assert_ne!(crashed.status.code(), Some(0));
    let refused = run_two(&p, &["--var", "tag=y"], None);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert!(
        message.contains("run 1 of pipeline `two` did not finish"),
        "{message}"
    );
    assert!(message.contains("`write_a` (a version 1)"), "{message}");
    assert!(message.contains("--abandon"), "{message}");
    assert_eq!(
        rows(&p, "b").await,
        Vec::<String>::new(),
        "nothing was written"
    );
    let abandoned = run_two(&p, &["--var", "tag=y", "--abandon"], None);
    assert_eq!(abandoned.status.code(), Some(0), "{}", stderr(&abandoned));
    assert!(stderr(&abandoned).contains("abandoned run 1: `a` restored to version 0"));
    assert!(String::from_utf8_lossy(&abandoned.stdout).contains("run 2 of two:"));
    assert_eq!(
        rows(&p, "a").await,
        ["1,y", "2,y"],
        "run 1's write to a was undone"
    );
    assert_eq!(rows(&p, "b").await, ["1,y", "2,y"]);
}

/// Two state tables: a crash between their finish commits leaves the run
/// unfinished; the next run writes only the missing one, and both record state.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_two_finish_commits_is_finished_by_the_next_run() {
    let pipeline = TWO_TABLES.replace(
        "state: {mark: {table: b, default: \"none\"}}",
        "state: {mark: {table: b, default: \"none\"}, first: {table: a, default: \"none\"}}",
    ) + "  - name: first\n    \
           query: SELECT CAST(min(id) AS VARCHAR) AS first FROM src\n    \
           materialize: true\n    \
           state: first\n";
    let p = two_tables().await;
    p.write("pipeline.yaml", &pipeline);
    let crashed = run_two(&p, &[], Some("after:finish:a"));
    assert_ne!(crashed.status.code(), Some(0), "{}", stderr(&crashed));
    let resumed = run_two(&p, &[], None);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("(resumed)"));
    let finishes = |table: &str| {
        let log = p.warehouse().join(table).join("_delta_log");
        std::fs::read_dir(log)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .filter(|t| t.contains("\"sqlplan.stage\":\"finish\""))
            .count()
    };
    assert_eq!(
        (finishes("a"), finishes("b")),
        (1, 1),
        "one finish commit per table"
    );
    // Both states were recorded: the next plan reads them back.
    let plan = command_in(
        p.path(),
        &["plan", "pipeline.yaml", "--format", "json"],
        None,
    )
    .output()
    .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(
        (
            plan["vars"]["first"].as_str(),
            plan["vars"]["mark"].as_str()
        ),
        (Some("1"), Some("2"))
    );
}

/// One run at a time: while another process holds the pipeline's run lock on the
/// warehouse, `run` refuses at once (exit 1), naming the holder, and writes
/// nothing; once the holder is gone (a killed run releases it with its process),
/// the next run proceeds.
#[tokio::test]
async fn a_second_run_refuses_while_one_holds_the_warehouse() {
    let p = two_tables().await;
    let dir = p.warehouse().join("_sqlplan");
    std::fs::create_dir_all(&dir).unwrap();
    let mut held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("two.lock"))
        .unwrap();
    held.lock().unwrap();
    std::io::Write::write_all(&mut held, b"process 4242 since 2026-12-03T10:00:00Z").unwrap();
    let refused = run_two(&p, &[], None);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    // miette wraps long messages: compare with the line breaks taken out.
    let message = stderr(&refused)
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        message.contains("another run of pipeline `two` is in progress")
            && message.contains("(process 4242 since 2026-12-"),
        "{message}"
    );
    assert!(
        !p.warehouse().join("a").join("_delta_log").exists(),
        "the refused run wrote nothing"
    );
    drop(held);
    let out = run_two(&p, &[], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(rows(&p, "a").await, ["1,x", "2,x"]);
}
