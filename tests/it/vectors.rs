//! MERGE into tables with deletion vectors: what each commit holds (vectors, their
//! union, removed and rewritten files, untouched files), the result read back by
//! delta-rs and by Python's `deltalake`, and the plan's account of it.

use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use serde_json::Value;

use crate::common::{create_table, read_table, stage, Project};

fn batch(ids: &[i64], values: &[&str], ds: &[&str]) -> RecordBatch {
    crate::common::id_v_ds(ids, values, ds)
}

/// `target` (partitioned by ds, created without vectors: the run turns them on)
/// holds ids 1–10 in ds=x (one file) and 11–12 in ds=y (one file); one stage MERGEs
/// `changes` into it with `clauses`.
async fn project(clauses: &str, rewrite_above: f64, changes: RecordBatch) -> Project {
    let clauses: String = clauses.lines().map(|l| format!("      {l}\n")).collect();
    let pipeline = format!(
        "name: m\ntables:\n  target:\n    location: warehouse/target\n    deletion_vectors: {{rewrite_above: {rewrite_above}}}\n  changes:\n    location: warehouse/changes\nstages:\n  - name: apply\n    query: |\n      MERGE INTO target t USING changes c ON t.id = c.id AND t.ds = c.ds\n{clauses}  - name: seen\n    query: SELECT id, v FROM target WHERE ds = 'x' AND id BETWEEN 2 AND 4 ORDER BY id\n    materialize: true\n    report: true\n"
    );
    let project = Project::new(&[("pipeline.yaml", &pipeline)]);
    let ids: Vec<i64> = (1..=12).collect();
    let values: Vec<String> = ids.iter().map(|i| format!("v{i}")).collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let ds: Vec<&str> = ids
        .iter()
        .map(|i| if *i <= 10 { "x" } else { "y" })
        .collect();
    create_table(
        &project.warehouse().join("target"),
        batch(&ids, &values, &ds),
        &["ds"],
    )
    .await;
    create_table(&project.warehouse().join("changes"), changes, &[]).await;
    project
}

async fn replace_changes(project: &Project, changes: RecordBatch) {
    crate::common::overwrite_table(&project.warehouse().join("changes"), changes).await;
}

/// The actions of commit `version` of the table at `path`.
fn commit(path: &Path, version: i64) -> Vec<Value> {
    let file = path.join("_delta_log").join(format!("{version:020}.json"));
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn actions<'a>(commit: &'a [Value], kind: &str) -> Vec<&'a Value> {
    commit.iter().filter_map(|a| a.get(kind)).collect()
}

/// Runs the pipeline; returns the MERGE's metrics and what the stage after it read
/// of the table (ds = 'x', ids 2 to 4: through sqlplan's scan of a table with
/// vectors).
fn run_and_read(project: &Project) -> (Value, Vec<String>) {
    let out = project.sqlplan(&["run", "pipeline.yaml", "--report", "report.json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(project.path().join("report.json")).unwrap())
            .unwrap();
    let seen = stage(&report, "seen")["metrics"]["reported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{},{}", r["id"], r["v"].as_str().unwrap()))
        .collect();
    (stage(&report, "apply")["metrics"].clone(), seen)
}

fn run(project: &Project) -> Value {
    run_and_read(project).0
}

async fn rows(project: &Project) -> Vec<String> {
    read_table(
        &project.warehouse().join("target"),
        "SELECT id, v, ds FROM t ORDER BY id",
    )
    .await
}

fn expected(changed: &[(i64, &str)], gone: &[i64], added: &[(i64, &str, &str)]) -> Vec<String> {
    let mut out: Vec<(i64, String)> = (1..=12)
        .filter(|i| !gone.contains(i))
        .map(|i| {
            let v = changed
                .iter()
                .find(|(c, _)| *c == i)
                .map(|(_, v)| v.to_string())
                .unwrap_or(format!("v{i}"));
            (i, format!("{i},{v},{}", if i <= 10 { "x" } else { "y" }))
        })
        .collect();
    out.extend(added.iter().map(|(i, v, d)| (*i, format!("{i},{v},{d}"))));
    out.sort();
    out.into_iter().map(|(_, r)| r).collect()
}

const UPSERT: &str = "WHEN MATCHED THEN UPDATE SET v = c.v\n\
                      WHEN NOT MATCHED THEN INSERT (id, v, ds) VALUES (c.id, c.v, c.ds)";

/// Versions of `target`: 0 create, 1 rows, 2 the run turning vectors on, 3 the
/// MERGE, 4 the run's finish.
#[tokio::test]
async fn a_merge_marks_changed_rows_deleted_and_leaves_other_files_alone() {
    let p = project(UPSERT, 0.5, batch(&[2, 13], &["B", "N"], &["x", "y"])).await;
    let target = p.warehouse().join("target");
    let files_before: Vec<String> = actions(&commit(&target, 1), "add")
        .iter()
        .map(|a| a["path"].as_str().unwrap().to_string())
        .collect();
    let m = run(&p);
    assert_eq!(
        rows(&p).await,
        expected(&[(2, "B")], &[], &[(13, "N", "y")])
    );
    assert_eq!(
        (
            m["files_with_vectors"].as_u64(),
            m["rows_deleted_by_vector"].as_u64(),
            m["files_rewritten"].as_u64(),
            m["files_removed"].as_u64(),
            m["rows_updated"].as_u64(),
            m["rows_inserted"].as_u64()
        ),
        (Some(1), Some(1), Some(0), Some(0), Some(1), Some(1))
    );
    // The run turned the feature on before writing, keeping what the table's
    // legacy protocol implied.
    let upgrade = commit(&target, 2);
    let protocol = actions(&upgrade, "protocol");
    assert!(
        protocol[0]["readerFeatures"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "deletionVectors")),
        "{upgrade:?}"
    );
    // delta-rs created the table at reader 1, writer 2 (append-only, invariants).
    let created = actions(&commit(&target, 0), "protocol")[0].clone();
    assert_eq!(created["minWriterVersion"], 2, "{created}");
    assert_eq!(
        protocol[0]["writerFeatures"],
        serde_json::json!(["appendOnly", "deletionVectors", "invariants"]),
        "{upgrade:?}"
    );
    let merge = commit(&target, 3);
    let x_file = files_before.iter().find(|f| f.starts_with("ds=x")).unwrap();
    let removes = actions(&merge, "remove");
    assert_eq!(removes.len(), 1, "only the file holding id 2: {merge:?}");
    assert_eq!(removes[0]["path"], x_file.as_str());
    let adds = actions(&merge, "add");
    let with_vector: Vec<&&Value> = adds
        .iter()
        .filter(|a| !a["deletionVector"].is_null())
        .collect();
    assert_eq!(with_vector.len(), 1);
    assert_eq!(with_vector[0]["path"], x_file.as_str());
    assert_eq!(with_vector[0]["deletionVector"]["cardinality"], 1);
    let stats: Value = serde_json::from_str(with_vector[0]["stats"].as_str().unwrap()).unwrap();
    assert_eq!(
        (&stats["numRecords"], &stats["tightBounds"]),
        (&serde_json::json!(10), &serde_json::json!(false)),
        "an Add with a vector: its physical rows, and bounds that are no longer tight"
    );
    assert_eq!(with_vector[0]["deletionVector"]["storageType"], "u");
    assert_eq!(
        adds.len(),
        3,
        "the re-added file and a new file per partition (id 2 in x, id 13 in y)"
    );
    assert!(
        actions(&merge, "txn").len() == 1,
        "the run's application transaction"
    );

    // Again, hitting the same file (id 3) and the row written last time (id 2):
    // the file's new vector is the union of the old one and the new position.
    replace_changes(&p, batch(&[2, 3], &["BB", "C"], &["x", "x"])).await;
    let m = run(&p);
    assert_eq!(
        rows(&p).await,
        expected(&[(2, "BB"), (3, "C")], &[], &[(13, "N", "y")])
    );
    // id 2 was alone in the file the first MERGE wrote for ds=x: that file goes.
    assert_eq!(
        (
            m["files_with_vectors"].as_u64(),
            m["files_removed"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let merge = commit(&target, 5);
    let vector = actions(&merge, "add")
        .into_iter()
        .find(|a| a["path"] == x_file.as_str())
        .unwrap()["deletionVector"]
        .clone();
    assert_eq!(vector["cardinality"], 2, "{merge:?}");
    let removed_x = actions(&merge, "remove")
        .into_iter()
        .find(|a| a["path"] == x_file.as_str())
        .unwrap()["deletionVector"]
        .clone();
    assert_eq!(
        removed_x["cardinality"], 1,
        "the remove carries the old vector"
    );
}

#[tokio::test]
async fn a_file_whose_every_row_goes_is_removed_not_given_a_full_vector() {
    let p = project(
        "WHEN MATCHED THEN DELETE",
        0.5,
        batch(&[11, 12, 5], &["", "", ""], &["y", "y", "x"]),
    )
    .await;
    let m = run(&p);
    assert_eq!(rows(&p).await, expected(&[], &[5, 11, 12], &[]));
    assert_eq!(
        (
            m["files_removed"].as_u64(),
            m["files_with_vectors"].as_u64(),
            m["rows_deleted"].as_u64(),
            m["files_added"].as_u64()
        ),
        (Some(1), Some(1), Some(3), Some(0))
    );
    let merge = commit(&p.warehouse().join("target"), 3);
    let adds = actions(&merge, "add");
    assert!(
        adds.iter()
            .all(|a| a["path"].as_str().unwrap().starts_with("ds=x")),
        "no entry for the emptied file: {merge:?}"
    );
}

#[tokio::test]
async fn a_file_with_most_rows_changed_is_rewritten_instead() {
    let p = project(
        UPSERT,
        0.5,
        batch(
            &[1, 2, 3, 4, 5, 6],
            &["a", "b", "c", "d", "e", "f"],
            &["x"; 6],
        ),
    )
    .await;
    let m = run(&p);
    let changed = [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e"), (6, "f")];
    assert_eq!(rows(&p).await, expected(&changed, &[], &[]));
    assert_eq!(
        (
            m["files_rewritten"].as_u64(),
            m["files_with_vectors"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let merge = commit(&p.warehouse().join("target"), 3);
    assert!(actions(&merge, "add")
        .iter()
        .all(|a| a["deletionVector"].is_null()));
}

#[tokio::test]
async fn the_plan_says_which_merge_writes_vectors_and_that_the_run_turns_them_on() {
    let p = project(UPSERT, 0.25, batch(&[1], &["a"], &["x"])).await;
    let out = p.sqlplan(&["plan", "pipeline.yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("deletion vectors (turned on by the run)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("a file is rewritten when over 25% of its live rows change"),
        "{}",
        out.stdout
    );
    run(&p);
    let out = p.sqlplan(&["plan", "pipeline.yaml"]);
    assert!(
        !out.stdout.contains("turned on by the run"),
        "{}",
        out.stdout
    );
}

/// Python's `deltalake` (its DataFusion reader, `QueryBuilder`, which applies
/// deletion vectors in 1.6.6) reads the summary tables of a run that wrote vectors
/// exactly as delta-rs does.
#[tokio::test]
async fn python_deltalake_reads_tables_with_vectors_like_delta_rs() {
    if !crate::common::python_deltalake("from deltalake import QueryBuilder") {
        return;
    }
    let project = Project::new(&[]);
    let wh = project.warehouse();
    let var = format!("warehouse={}", wh.display());
    crate::common::generate_summary(&wh, &["--accounts", "300", "--months", "12"]);
    let out = crate::common::sqlplan_in(
        &crate::common::repo(),
        &["run", "pipelines/summary.yaml", "--var", &var],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    // No NULLs and no formatting that could differ between the two DataFusions.
    let query = "SELECT cons_acct_key, rpt_as_of_mo, COALESCE(balance_am, -1) AS b, \
                 COALESCE(payment_history_grid, '-') AS g \
                 FROM t ORDER BY cons_acct_key, rpt_as_of_mo";
    for table in ["summary", "latest_summary"] {
        let path = wh.join(table);
        let log = std::fs::read_dir(path.join("_delta_log")).unwrap().count();
        assert!(log > 2);
        let script = "\
import sys, os
from deltalake import DeltaTable, QueryBuilder
t = DeltaTable(sys.argv[1])
r = QueryBuilder().register('t', t).execute(sys.argv[2]).read_all()
import pyarrow as pa
rows = pa.table(r).to_pylist()
for row in rows:
    print(','.join('' if v is None else str(v) for v in row.values()))
sys.stdout.flush()
os._exit(0)
";
        let read = std::process::Command::new("python3")
            .args(["-c", script, path.to_str().unwrap(), query])
            .output()
            .unwrap();
        assert!(
            read.status.success(),
            "{}",
            String::from_utf8_lossy(&read.stderr)
        );
        let python: Vec<String> = String::from_utf8_lossy(&read.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        let rust = read_table(&path, query).await;
        assert_eq!(python.len(), rust.len(), "{table}: row counts differ");
        assert_eq!(python, rust, "{table}");
        let has_vectors = std::fs::read_dir(&path).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("deletion_vector_")
        });
        assert!(
            has_vectors || table == "latest_summary",
            "{table} has no vector file"
        );
    }
}

/// After a MERGE wrote vectors, `vacuum` (retaining nothing) keeps the vector file the
/// live entries reference, delta-rs's `optimize` on the table still works, and the
/// table reads the same afterwards.
#[tokio::test]
async fn vacuum_keeps_referenced_vectors_and_optimize_still_works() {
    let p = project(UPSERT, 0.5, batch(&[2, 13], &["B", "N"], &["x", "y"])).await;
    let with_maintenance = std::fs::read_to_string(p.path().join("pipeline.yaml")).unwrap()
        + "  - name: clean\n    \
             vacuum: {table: target, retain_hours: 0, below_delta_default: true}\n  \
             - name: after_clean\n    \
             query: SELECT id, v FROM target ORDER BY id\n    \
             materialize: true\n    \
             report: true\n  \
             - name: compact\n    \
             optimize: {table: target}\n";
    std::fs::write(p.path().join("pipeline.yaml"), with_maintenance).unwrap();
    run(&p);
    let target = p.warehouse().join("target");
    let vector_files = std::fs::read_dir(&target)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("deletion_vector_")
        })
        .count();
    assert_eq!(
        vector_files, 1,
        "the referenced vector file survives vacuum"
    );
    assert_eq!(
        rows(&p).await,
        expected(&[(2, "B")], &[], &[(13, "N", "y")])
    );
}

/// DELETE on a table with vectors: the rows it hits are deleted by vector; a later
/// DELETE that takes a file's last live rows removes the file.
#[tokio::test]
async fn delete_writes_vectors_and_removes_emptied_files() {
    let p = project(UPSERT, 0.5, batch(&[], &[], &[])).await;
    let pipeline = "\
name: d
tables:
  target:
    location: warehouse/target
    deletion_vectors: true
stages:
  - name: first
    query: DELETE FROM target WHERE id IN (3, 4) OR v = 'v12'
  - name: second
    query: DELETE FROM target WHERE ds = 'y'
";
    std::fs::write(p.path().join("pipeline.yaml"), pipeline).unwrap();
    let out = p.sqlplan(&["run", "pipeline.yaml", "--report", "report.json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(p.path().join("report.json")).unwrap())
            .unwrap();
    let first = &stage(&report, "first")["metrics"];
    assert_eq!(
        (
            first["rows_deleted"].as_u64(),
            first["files_with_vectors"].as_u64(),
            first["rows_deleted_by_vector"].as_u64(),
            first["files_removed"].as_u64()
        ),
        (Some(3), Some(2), Some(3), Some(0))
    );
    let second = &stage(&report, "second")["metrics"];
    assert_eq!(
        (
            second["rows_deleted"].as_u64(),
            second["files_scanned"].as_u64(),
            second["files_removed"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "only the ds=y file is read; its last live row goes, and the file with it"
    );
    assert_eq!(rows(&p).await, expected(&[], &[3, 4, 11, 12], &[]));
}

/// Candidate files come from the log: partition values, then the key statistics
/// of each file against the source keys' range. Only the file that can hold id 2
/// is read.
#[tokio::test]
async fn only_files_whose_partition_and_key_statistics_fit_the_source_are_read() {
    let p = project(UPSERT, 0.5, batch(&[2], &["B"], &["x"])).await;
    let url = url::Url::from_directory_path(p.warehouse().join("target")).unwrap();
    deltalake::open_table(url)
        .await
        .unwrap()
        .write(vec![batch(&[101, 102], &["a", "b"], &["x", "x"])])
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .await
        .unwrap();
    let m = run(&p);
    assert_eq!(
        (
            m["files_scanned"].as_u64(),
            m["files_with_vectors"].as_u64()
        ),
        (Some(1), Some(1)),
        "{m}"
    );
    let mut want = expected(&[(2, "B")], &[], &[(101, "a", "x"), (102, "b", "x")]);
    want.sort_by_key(|r| r.split(',').next().unwrap().parse::<i64>().unwrap());
    assert_eq!(rows(&p).await, want);
}

/// `verify-vectors` finds nothing wrong with what a MERGE wrote, then names each
/// defect of a damaged copy: an Add claiming tight bounds, a vector file whose
/// bytes no longer match their checksum.
#[tokio::test]
async fn verify_vectors_accepts_what_a_merge_wrote_and_names_what_is_broken() {
    let p = project(UPSERT, 0.5, batch(&[2, 13], &["B", "N"], &["x", "y"])).await;
    run(&p);
    let ok = p.sqlplan(&["verify-vectors", "warehouse/target"]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout
            .contains("1 with deletion vectors (1 rows deleted)"),
        "{}",
        ok.stdout
    );

    let target = p.warehouse().join("target");
    let log = target.join("_delta_log").join(format!("{:020}.json", 3));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(r#"\"tightBounds\":false"#), "{text}");
    std::fs::write(
        &log,
        text.replace(r#"\"tightBounds\":false"#, r#"\"tightBounds\":true"#),
    )
    .unwrap();
    let vector = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("deletion_vector_")
        })
        .unwrap();
    let mut bytes = std::fs::read(&vector).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&vector, bytes).unwrap();

    let bad = p.sqlplan(&["verify-vectors", "warehouse/target", "--format", "json"]);
    assert_eq!(bad.code, 1, "{}{}", bad.stdout, bad.stderr);
    let check: Value = serde_json::from_str(&bad.stdout).unwrap();
    let problems: Vec<&str> = check["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("tightBounds is true (must be false)"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("the deletion vector cannot be read"),
        "{problems:?}"
    );
}
