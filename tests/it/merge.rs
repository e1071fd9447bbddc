//! MERGE through `sqlplan run` on a temporary warehouse: its clauses, a source
//! that names one target row twice, and another Delta implementation reading
//! what it wrote.

use crate::common::{create_table, read_table, stage, Project};
use crate::run::{batch, report, TABLES};
use datafusion::arrow::array::RecordBatch;

/// A project whose one stage MERGEs `changes` into `target` with `clauses`, both
/// tables created with the given rows.
async fn merge_project(clauses: &str, target: RecordBatch, changes: RecordBatch) -> Project {
    let clauses: String = clauses.lines().map(|l| format!("      {l}\n")).collect();
    let pipeline = format!(
        "name: m\n{TABLES}stages:\n  - name: apply\n    query: |\n      MERGE INTO target t USING changes c ON t.id = c.id\n{clauses}"
    );
    let project = Project::new(&[("pipeline.yaml", &pipeline)]);
    create_table(&project.warehouse().join("target"), target, &[]).await;
    create_table(&project.warehouse().join("changes"), changes, &[]).await;
    project
}

#[tokio::test]
async fn merge_updates_deletes_and_inserts() {
    let project = merge_project(
        "WHEN MATCHED AND c.v = 'delete' THEN DELETE\nWHEN MATCHED THEN UPDATE SET v = c.v\nWHEN NOT MATCHED THEN INSERT (id, v, ds) VALUES (c.id, c.v, c.ds)",
        batch(&[1, 2, 3], &["a", "b", "c"], &["x", "x", "x"]),
        batch(&[2, 3, 4], &["B", "delete", "D"], &["x", "x", "y"]),
    )
    .await;
    let out = project.sqlplan(&["run", "pipeline.yaml", "--report", "report.json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        read_table(
            &project.warehouse().join("target"),
            "SELECT id, v FROM t ORDER BY id"
        )
        .await,
        ["1,a", "2,B", "4,D"]
    );
    let r = report(&project);
    let m = &stage(&r, "apply")["metrics"];
    assert_eq!(
        (
            m["rows_inserted"].as_u64(),
            m["rows_updated"].as_u64(),
            m["rows_deleted"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(m["version"], 2);
}

#[tokio::test]
async fn a_source_with_two_rows_for_one_key_fails_the_merge_and_names_the_key() {
    let project = merge_project(
        "WHEN MATCHED THEN UPDATE SET v = c.v",
        batch(&[1, 2], &["a", "b"], &["x", "x"]),
        batch(&[2, 2], &["B1", "B2"], &["x", "x"]),
    )
    .await;
    let out = project.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("stage `apply` failed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("c.id = 2"),
        "names the key: {}",
        out.stderr
    );
    assert_eq!(
        read_table(
            &project.warehouse().join("target"),
            "SELECT id, v FROM t ORDER BY id"
        )
        .await,
        ["1,a", "2,b"],
        "nothing written"
    );
}

/// Tables sqlplan writes are ordinary Delta tables: Python's `deltalake` (another
/// implementation's reader, pinned in .ci/run) reads the result of a MERGE. Skipped
/// only where the module is missing and SQLPLAN_REQUIRE_PYTHON_DELTALAKE is unset.
#[tokio::test]
async fn python_deltalake_reads_what_sqlplan_wrote() {
    if !crate::common::python_deltalake("import deltalake") {
        return;
    }
    let project = merge_project(
        "WHEN MATCHED THEN UPDATE SET v = c.v\nWHEN NOT MATCHED THEN INSERT (id, v, ds) VALUES (c.id, c.v, c.ds)",
        batch(&[1, 2], &["a", "b"], &["x", "x"]),
        batch(&[2, 3], &["B", "C"], &["x", "y"]),
    )
    .await;
    let out = project.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let script = "\
import sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1])
rows = sorted((r['id'], r['v'], r['ds']) for r in t.to_pyarrow_table().to_pylist())
print(t.version(), rows, flush=True)
# deltalake's runtime threads can abort at interpreter teardown; skip it.
import os
os._exit(0)
";
    let read = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            project.warehouse().join("target").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    // Version 3: the write of the test's rows (1), the MERGE (2), the run's finish
    // commit (3, no data).
    assert_eq!(
        String::from_utf8_lossy(&read.stdout).trim(),
        "3 [(1, 'a', 'x'), (2, 'B', 'x'), (3, 'C', 'y')]"
    );
}
