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

/// Two MERGEs that are not by key alone: an ON with a condition besides the key
/// (`t.v <> c.v`: a row whose value is unchanged is not matched, so its source
/// row is inserted as a second row of its key), and `NOT MATCHED BY SOURCE`
/// clauses (delete some rows no source row names, update the others).
const GENERAL: &str = r#"name: general
tables:
  target:
    location: warehouse/target
    deletion_vectors: DV
  changes:
    location: warehouse/changes
stages:
  - name: conditional
    query: |
      MERGE INTO target t USING changes c ON t.id = c.id AND t.v <> c.v
      WHEN MATCHED AND c.v = 'delete' THEN DELETE
      WHEN MATCHED THEN UPDATE SET v = c.v
      WHEN NOT MATCHED THEN INSERT (id, v, ds) VALUES (c.id, c.v, c.ds)
  - name: by_source
    query: |
      MERGE INTO target t USING (SELECT * FROM changes WHERE id % 2 = 0) c ON t.id = c.id
      WHEN MATCHED THEN UPDATE SET ds = 'seen'
      WHEN NOT MATCHED BY SOURCE AND t.ds = 'x' THEN DELETE
      WHEN NOT MATCHED BY SOURCE THEN UPDATE SET v = 'orphan'
  - name: no_equality
    query: |
      MERGE INTO target t
      USING (SELECT max(id) AS top FROM changes UNION ALL SELECT 1000 AS top) c
      ON t.id > c.top - 8
      WHEN MATCHED AND t.v = 'delete' THEN DELETE
      WHEN MATCHED THEN UPDATE SET ds = 'tail'
      WHEN NOT MATCHED THEN INSERT (id, v, ds) VALUES (c.top + 1, 'after', 'z')
"#;

/// On a 2-executor cluster, MERGEs that are not by key alone run on the
/// executors (a join on the whole ON over every live row, FULL with `NOT
/// MATCHED BY SOURCE`; an ON without a key equality in one partition) and give
/// the rows of a local run (delta-rs's merge), on a table with deletion vectors
/// and on one without.
#[tokio::test(flavor = "multi_thread")]
async fn merges_not_by_key_alone_on_a_cluster_equal_a_local_run() {
    let cluster = crate::cluster::Cluster::start_local(2);
    let ids: Vec<i64> = (1..=40).collect();
    let values: Vec<String> = ids.iter().map(|i| format!("v{}", i % 3)).collect();
    let ds: Vec<&str> = ids
        .iter()
        .map(|i| if i % 4 == 0 { "y" } else { "x" })
        .collect();
    let change_ids: Vec<i64> = (30..=50).collect();
    let change_values: Vec<String> = change_ids
        .iter()
        .map(|i| match i % 5 {
            0 => "delete".to_string(),
            1 => format!("v{}", i % 3),
            _ => format!("new{i}"),
        })
        .collect();
    let change_ds = vec!["z"; change_ids.len()];
    for dv in ["true", "false"] {
        let mut tables = Vec::new();
        for engine in [None, Some(cluster.engine())] {
            let project = Project::new(&[("pipeline.yaml", &GENERAL.replace("DV", dv))]);
            let wh = project.warehouse();
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            create_table(&wh.join("target"), batch(&ids, &values, &ds), &[]).await;
            let change_values: Vec<&str> = change_values.iter().map(String::as_str).collect();
            let changes = batch(&change_ids, &change_values, &change_ds);
            create_table(&wh.join("changes"), changes, &[]).await;
            let mut args = vec!["run", "pipeline.yaml", "--report", "report.json"];
            args.extend(engine.iter().flat_map(|e| ["--engine", *e]));
            let out = project.sqlplan(&args);
            assert_eq!(
                out.code, 0,
                "{dv} {engine:?}\n{}\n{}",
                out.stdout, out.stderr
            );
            if engine.is_some() {
                let r = report(&project);
                for name in ["conditional", "by_source", "no_equality"] {
                    let m = &stage(&r, name)["metrics"];
                    assert_eq!(m["key_pass"], "full join", "{name}: {m}");
                }
                // With vectors, the first MERGE gives its file a vector; without,
                // it rewrites it.
                let m = &stage(&r, "conditional")["metrics"];
                let changed = if dv == "true" {
                    "files_with_vectors"
                } else {
                    "files_rewritten"
                };
                assert_eq!(m[changed], 1, "{dv}: {m}");
            }
            let rows = read_table(
                &wh.join("target"),
                "SELECT id, v, ds FROM t ORDER BY id, v, ds",
            )
            .await;
            if engine.is_some() {
                // What the executors wrote reads the same in two other Delta
                // implementations (its vectors included).
                let mut sorted = rows.clone();
                sorted.sort();
                let line = "SELECT CAST(id AS VARCHAR) || ',' || v || ',' || ds AS line FROM t";
                let (t, vals) = (wh.join("target"), wh.join("changes"));
                for other in [
                    crate::readers::python_lines(&t, &vals, line),
                    crate::readers::duckdb_lines(&t, &vals, line),
                ]
                .into_iter()
                .flatten()
                {
                    assert_eq!(other, sorted, "deletion vectors: {dv}");
                }
            }
            tables.push(rows);
        }
        assert!(
            tables[0].iter().any(|r| r.ends_with(",orphan,y")),
            "{tables:?}"
        );
        // The MERGE without a key equality updated the last ids and inserted
        // for the source row that matched none.
        let tail = tables[0].iter().filter(|r| r.ends_with(",tail")).count();
        assert!(tail >= 5, "{tables:?}");
        assert!(
            tables[0].contains(&"1001,after,z".to_string()),
            "{tables:?}"
        );
        assert_eq!(tables[1], tables[0], "deletion vectors: {dv}");
    }
}

const REPEATS: &str = r#"name: repeats
tables:
  target:
    location: warehouse/target
    deletion_vectors: true
  changes:
    location: warehouse/changes
stages:
  - name: overlapping
    query: |
      MERGE INTO target t USING changes c ON t.id > c.id + 5
      WHEN MATCHED THEN CLAUSE
"#;

/// Without a key equality in the ON, one target row may meet several source
/// rows: on a cluster, as locally, an UPDATE of such a row is refused and names
/// it, and an unconditional DELETE deletes it once.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_row_two_source_rows_match_is_refused_on_a_cluster_as_locally() {
    let cluster = crate::cluster::Cluster::start_local(2);
    for (clause, fails) in [("UPDATE SET v = c.v", true), ("DELETE", false)] {
        let mut tables = Vec::new();
        for engine in [None, Some(cluster.engine())] {
            let project = Project::new(&[("pipeline.yaml", &REPEATS.replace("CLAUSE", clause))]);
            let wh = project.warehouse();
            let target = batch(&[1, 2, 8, 9], &["a", "b", "c", "d"], &["x", "x", "x", "x"]);
            create_table(&wh.join("target"), target, &[]).await;
            let changes = batch(&[1, 2, 3], &["p", "q", "r"], &["z", "z", "z"]);
            create_table(&wh.join("changes"), changes, &[]).await;
            let mut args = vec!["run", "pipeline.yaml", "--report", "report.json"];
            args.extend(engine.iter().flat_map(|e| ["--engine", *e]));
            let out = project.sqlplan(&args);
            if fails {
                assert_eq!(out.code, 1, "{engine:?}\n{}", out.stderr);
                let says = match engine {
                    // The first row matched twice, by file and position: id 8
                    // (row 2), by source ids 1 and 2.
                    Some(_) => "the MERGE matched row 2 of target's file part-",
                    None => "multiple source rows",
                };
                assert!(out.stderr.contains(says), "{}", out.stderr);
                if engine.is_some() {
                    assert!(out.stderr.contains("with 2 source rows; a target row may be changed by one source row only"), "{}", out.stderr);
                }
            } else {
                assert_eq!(out.code, 0, "{engine:?}\n{}", out.stderr);
                if engine.is_some() {
                    let r = report(&project);
                    let m = &stage(&r, "overlapping")["metrics"];
                    assert_eq!(m["key_pass"], "full join", "{m}");
                    assert_eq!(m["rows_deleted"], 2, "{m}");
                }
            }
            let rows = read_table(&wh.join("target"), "SELECT id, v, ds FROM t ORDER BY id").await;
            tables.push(rows);
        }
        assert_eq!(tables[1], tables[0], "{clause}");
        let expected = if fails { 4 } else { 2 };
        assert_eq!(tables[0].len(), expected, "{clause}: {tables:?}");
    }
}
