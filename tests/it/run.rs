//! `sqlplan run` on temporary warehouses: writes read back through a fresh
//! delta-rs load, concurrency, failures and drift.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use serde_json::Value;

use crate::common::{create_table, file_count, read_table, stage, Project};

pub(crate) fn batch(ids: &[i64], values: &[&str], ds: &[&str]) -> RecordBatch {
    crate::common::id_v_ds(ids, values, ds)
}

pub(crate) fn report(project: &Project) -> Value {
    serde_json::from_str(&std::fs::read_to_string(project.path().join("report.json")).unwrap())
        .unwrap()
}

pub(crate) const TABLES: &str = r#"tables:
  target:
    location: warehouse/target
  changes:
    location: warehouse/changes
"#;

/// A materialized relation feeds two writers with the same rows: computed once.
/// (`random()` would differ between two computations; as a view it does.)
#[tokio::test]
async fn a_materialized_relation_is_computed_once_for_all_readers() {
    // (materialize, spill threshold, the readers see the same rows, spilled)
    for (materialize, threshold, same, spilled) in [
        (true, "1000000", true, false),
        (true, "0", true, true),
        (false, "0", false, false),
    ] {
        let pipeline = format!(
            r#"name: once
tables:
  src:
    location: warehouse/src
  a:
    location: warehouse/a
    schema: [{{name: id, type: BIGINT}}, {{name: r, type: DOUBLE}}]
  b:
    location: warehouse/b
    schema: [{{name: id, type: BIGINT}}, {{name: r, type: DOUBLE}}]
stages:
  - name: rolled
    query: SELECT id, random() AS r FROM src
    materialize: {materialize}
  - name: to_a
    query: INSERT INTO a SELECT id, r FROM rolled
  - name: to_b
    query: INSERT INTO b SELECT id, r FROM rolled
"#
        );
        let project = Project::new(&[("pipeline.yaml", &pipeline)]);
        create_table(
            &project.warehouse().join("src"),
            batch(&[1, 2, 3], &["a", "b", "c"], &["x", "x", "x"]),
            &[],
        )
        .await;
        let out = project.sqlplan(&[
            "run",
            "pipeline.yaml",
            "--spill-threshold",
            threshold,
            "--report",
            "report.json",
        ]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let r = report(&project);
        assert_eq!(
            stage(&r, "rolled")["metrics"]["spilled_bytes"].is_u64(),
            spilled,
            "{r}"
        );
        let a = read_table(
            &project.warehouse().join("a"),
            "SELECT id, r FROM t ORDER BY id",
        )
        .await;
        let b = read_table(
            &project.warehouse().join("b"),
            "SELECT id, r FROM t ORDER BY id",
        )
        .await;
        assert_eq!(a.len(), 3);
        assert_eq!(a == b, same, "materialize={materialize}: {a:?} vs {b:?}");
    }
}

#[tokio::test]
async fn independent_stages_run_concurrently() {
    let heavy = "SELECT sum(value % 7) AS s FROM generate_series(1, 30000000)";
    let pipeline = format!(
        "name: par\nstages:\n  - name: left\n    query: {heavy}\n    materialize: true\n  - name: right\n    query: {heavy}\n    materialize: true\n  - name: both\n    query: SELECT * FROM left JOIN right ON true\n    materialize: true\n"
    );
    let project = Project::new(&[("pipeline.yaml", &pipeline)]);
    let interval = |r: &Value, s: &str| {
        (
            stage(r, s)["started_ms"].as_f64().unwrap(),
            stage(r, s)["finished_ms"].as_f64().unwrap(),
        )
    };
    let out = project.sqlplan(&[
        "run",
        "pipeline.yaml",
        "--jobs",
        "2",
        "--report",
        "report.json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = report(&project);
    let (l, rt) = (interval(&r, "left"), interval(&r, "right"));
    assert!(
        l.0 < rt.1 && rt.0 < l.1,
        "executions overlap: left {l:?} right {rt:?}"
    );
    assert!(
        interval(&r, "both").0 >= l.1.max(rt.1),
        "the reader starts after both"
    );
    let out = project.sqlplan(&[
        "run",
        "pipeline.yaml",
        "--jobs",
        "1",
        "--report",
        "report.json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = report(&project);
    let (l, rt) = (interval(&r, "left"), interval(&r, "right"));
    assert!(
        l.1 <= rt.0 || rt.1 <= l.0,
        "with --jobs 1 they do not overlap: {l:?} {rt:?}"
    );
}

#[tokio::test]
async fn append_and_partition_overwrite() {
    let pipeline = r#"name: writes
tables:
  src:
    location: warehouse/src
  daily:
    location: warehouse/daily
stages:
  - name: add
    query: INSERT INTO daily SELECT id, v, ds FROM src WHERE ds = 'c'
  - name: replace_b
    query: INSERT OVERWRITE daily SELECT id, upper(v), ds FROM src WHERE ds = 'b'
"#;
    let project = Project::new(&[("pipeline.yaml", pipeline)]);
    create_table(
        &project.warehouse().join("src"),
        batch(&[10, 11, 12], &["n", "m", "k"], &["b", "b", "c"]),
        &[],
    )
    .await;
    create_table(
        &project.warehouse().join("daily"),
        batch(&[1, 2, 3], &["a", "b", "b2"], &["a", "b", "b"]),
        &["ds"],
    )
    .await;
    let out = project.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        read_table(
            &project.warehouse().join("daily"),
            "SELECT id, v, ds FROM t ORDER BY id"
        )
        .await,
        ["1,a,a", "10,N,b", "11,M,b", "12,k,c"],
        "partition a untouched, b replaced, c appended"
    );
}

#[tokio::test]
async fn optimize_compacts_a_partition() {
    let pipeline = r#"name: opt
tables:
  src:
    location: warehouse/src
  daily:
    location: warehouse/daily
stages:
  - name: add1
    query: INSERT INTO daily SELECT id, v, ds FROM src
  - name: add2
    query: INSERT INTO daily SELECT id + 100, v, ds FROM src
  - name: compact
    optimize: {table: daily, where: "ds = 'a'"}
"#;
    let project = Project::new(&[("pipeline.yaml", pipeline)]);
    create_table(
        &project.warehouse().join("src"),
        batch(&[1, 2], &["x", "y"], &["a", "b"]),
        &[],
    )
    .await;
    create_table(
        &project.warehouse().join("daily"),
        batch(&[0], &["z"], &["a"]),
        &["ds"],
    )
    .await;
    assert_eq!(file_count(&project.warehouse().join("daily")).await, 1);
    let out = project.sqlplan(&["run", "pipeline.yaml", "--report", "report.json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // ds=a had 3 files (initial + two appends) → 1; ds=b keeps its 2.
    let r = report(&project);
    let m = &stage(&r, "compact")["metrics"];
    assert_eq!(
        (m["files_removed"].as_u64(), m["files_added"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(file_count(&project.warehouse().join("daily")).await, 3);
    assert_eq!(
        read_table(&project.warehouse().join("daily"), "SELECT count(*) FROM t").await,
        ["5"]
    );
    // The compacted file is written as sqlplan writes every file, not with
    // delta-rs's defaults (ZSTD).
    let compacted = crate::common::only_file(&project.warehouse().join("daily"), "ds=a").await;
    let metadata = crate::common::parquet_metadata(&compacted);
    assert!(
        metadata
            .file_metadata()
            .created_by()
            .unwrap_or("")
            .starts_with("sqlplan"),
        "{:?}",
        metadata.file_metadata().created_by()
    );
    let column = metadata.row_group(0).column(0);
    assert_eq!(
        column.compression(),
        deltalake::parquet::basic::Compression::SNAPPY
    );
}

/// The plan binds to a schema; a table changed before the run starts is refused
/// before anything is written.
#[tokio::test]
async fn schema_drift_and_missing_sources_stop_the_run_before_any_write() {
    let pipeline = r#"name: drift
vars:
  warehouse: ./warehouse
tables:
  src:
    location: "{{ warehouse }}/src"
  out:
    location: "{{ warehouse }}/out"
    schema: [{name: id, type: BIGINT}]
stages:
  - name: copy
    query: INSERT INTO out SELECT id FROM src
"#;
    let project = Project::new(&[("pipeline.yaml", pipeline)]);
    let src = project.warehouse().join("src");
    create_table(&src, batch(&[1], &["x"], &["a"]), &[]).await;
    let vars = [(
        "warehouse".to_string(),
        project.warehouse().display().to_string(),
    )];
    let plan = sqlplan::build_plan(
        &project.path().join("pipeline.yaml"),
        Some(project.path()),
        &vars,
    )
    .await
    .unwrap();
    // The table is replaced by one with another schema.
    std::fs::remove_dir_all(&src).unwrap();
    let other = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)])),
        vec![Arc::new(StringArray::from(vec!["1"]))],
    )
    .unwrap();
    create_table(&src, other, &[]).await;
    let err = sqlplan::run(plan.clone(), &Default::default())
        .await
        .unwrap_err();
    assert!(
        err.message.contains("schema drift in `src`"),
        "{}",
        err.message
    );
    assert_eq!(err.exit_code(), 1);
    assert!(!project.warehouse().join("out").exists(), "nothing created");
    std::fs::remove_dir_all(&src).unwrap();
    let err = sqlplan::run(plan, &Default::default()).await.unwrap_err();
    assert!(err.message.contains("`src`"), "{}", err.message);
    assert!(!project.warehouse().join("out").exists(), "nothing created");
}

#[tokio::test]
async fn a_failing_stage_names_itself_and_skips_the_rest() {
    let pipeline = r#"name: fail
tables:
  src:
    location: warehouse/src
  out:
    location: warehouse/out
    schema: [{name: id, type: BIGINT}]
stages:
  - name: boom
    query: SELECT CAST(v AS BIGINT) AS id FROM src
    materialize: true
  - name: write
    query: INSERT INTO out SELECT id FROM boom
"#;
    let project = Project::new(&[("pipeline.yaml", pipeline)]);
    create_table(
        &project.warehouse().join("src"),
        batch(&[1], &["not a number"], &["a"]),
        &[],
    )
    .await;
    let out = project.sqlplan(&["run", "pipeline.yaml", "--report", "report.json"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("stage `boom` failed"), "{}", out.stderr);
    let r = report(&project);
    assert_eq!(stage(&r, "boom")["status"], "failed");
    assert_eq!(stage(&r, "boom")["error_kind"], "engine");
    assert_eq!(stage(&r, "write")["status"], "skipped");
    assert!(stage(&r, "write").get("error_kind").is_none());
}

/// Each commit carries an application transaction; the run number grows per run.
#[tokio::test]
async fn commits_carry_the_run_number_and_scans_are_measured() {
    let pipeline = r#"name: txn
tables:
  src:
    location: warehouse/src
  out:
    location: warehouse/out
    schema: [{name: id, type: BIGINT}]
stages:
  - name: picked
    query: SELECT id FROM src WHERE id > 1
    materialize: true
  - name: copy
    query: INSERT INTO out SELECT id FROM picked
"#;
    let project = Project::new(&[("pipeline.yaml", pipeline)]);
    create_table(
        &project.warehouse().join("src"),
        batch(&[1, 2, 3], &["a", "b", "c"], &["x", "x", "x"]),
        &[],
    )
    .await;
    for expected in [1, 2] {
        let out = project.sqlplan(&["run", "pipeline.yaml", "--report", "report.json"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let r = report(&project);
        assert_eq!(r["run_number"], expected);
        let picked = &stage(&r, "picked")["metrics"];
        assert_eq!(picked["files_scanned"], 1);
        assert!(picked["bytes_scanned"].as_u64().unwrap() > 0);
    }
    let url = url::Url::from_directory_path(
        std::fs::canonicalize(project.warehouse().join("out")).unwrap(),
    )
    .unwrap();
    let table = deltalake::open_table(url).await.unwrap();
    let v = table
        .snapshot()
        .unwrap()
        .transaction_version(table.log_store().as_ref(), "sqlplan:txn:copy")
        .await
        .unwrap();
    assert_eq!(v, Some(2));
}

/// Ctrl-C while a stage computes: the run stops, exit 1, and nothing is committed.
#[tokio::test]
async fn an_interrupt_cancels_running_stages_without_committing() {
    let pipeline = r#"name: long
tables:
  out:
    location: warehouse/out
    schema: [{name: s, type: BIGINT}]
stages:
  - name: slow
    query: INSERT INTO out SELECT sum(value % 7) FROM generate_series(1, 20000000000)
"#;
    let project = Project::new(&[("pipeline.yaml", pipeline)]);
    let child = std::process::Command::new(crate::common::bin())
        .args(["run", "pipeline.yaml", "--report", "report.json"])
        .current_dir(project.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the table exists (created before any stage starts), then interrupt.
    let log = project.warehouse().join("out/_delta_log");
    for _ in 0..200 {
        if log.is_dir() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let r = report(&project);
    assert_eq!(stage(&r, "slow")["status"], "cancelled");
    // Version 0 is the creation; no data commit followed.
    let url = url::Url::from_directory_path(
        std::fs::canonicalize(project.warehouse().join("out")).unwrap(),
    )
    .unwrap();
    assert_eq!(deltalake::open_table(url).await.unwrap().version(), Some(0));
}

/// Program order: a view read after a write to its table sees the write, as if the
/// stages ran one by one.
#[tokio::test]
async fn a_view_read_after_a_write_sees_the_write() {
    let pipeline = r#"name: order
tables:
  src:
    location: warehouse/src
  out:
    location: warehouse/out
    schema: [{name: id, type: BIGINT}]
stages:
  - name: ids
    query: SELECT id FROM src
  - name: grow
    query: INSERT INTO src SELECT id + 10, v, ds FROM src
  - name: copy
    query: INSERT INTO out SELECT id FROM ids
"#;
    let project = Project::new(&[("pipeline.yaml", pipeline)]);
    create_table(
        &project.warehouse().join("src"),
        batch(&[1, 2], &["a", "b"], &["x", "x"]),
        &[],
    )
    .await;
    let out = project.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        read_table(
            &project.warehouse().join("out"),
            "SELECT id FROM t ORDER BY id"
        )
        .await,
        ["1", "2", "11", "12"]
    );
}

/// A materialized relation's key range and partition values become literal
/// predicates on the Delta table it is joined with, so Delta skips files; never on
/// the preserved side of an outer join.
#[tokio::test]
async fn materialized_keys_prune_the_delta_tables_they_join() {
    let pipeline = r#"name: prune
tables:
  big:
    location: warehouse/big
stages:
  - name: keys
    query: SELECT * FROM (VALUES (150, 'p1'), (160, 'p1')) AS v(id, ds)
    materialize: true
  - name: by_partition
    query: SELECT b.id FROM keys k JOIN big b ON b.ds = k.ds AND b.id = k.id
    materialize: true
  - name: by_key
    query: SELECT b.id FROM big b JOIN keys k ON b.id = k.id
    materialize: true
  - name: preserved
    query: SELECT b.id FROM big b LEFT JOIN keys k ON b.id = k.id
    materialize: true
  - name: days
    query: SELECT DISTINCT ds FROM keys
    materialize: true
  - name: chained
    query: SELECT b.id FROM big b JOIN days d ON b.ds = d.ds JOIN keys k ON b.id = k.id
    materialize: true
"#;
    let project = Project::new(&[("pipeline.yaml", pipeline)]);
    let ids: Vec<i64> = (0..400).collect();
    let parts: Vec<String> = ids.iter().map(|i| format!("p{}", i / 100)).collect();
    let values: Vec<&str> = ids.iter().map(|_| "v").collect();
    let part_refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    create_table(
        &project.warehouse().join("big"),
        batch(&ids, &values, &part_refs),
        &["ds"],
    )
    .await;
    assert_eq!(file_count(&project.warehouse().join("big")).await, 4);
    let out = project.sqlplan(&["run", "pipeline.yaml", "--report", "report.json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = report(&project);
    let m = |s: &str| stage(&r, s)["metrics"].clone();
    assert_eq!(m("by_partition")["rows_out"], 2);
    assert_eq!(
        m("by_partition")["files_scanned"],
        1,
        "{}",
        m("by_partition")
    );
    assert!(
        m("by_partition")["literal_bounds"]
            .to_string()
            .contains("IN"),
        "{}",
        m("by_partition")
    );
    assert_eq!(m("by_key")["rows_out"], 2);
    assert_eq!(m("by_key")["files_scanned"], 1, "{}", m("by_key"));
    assert_eq!(m("preserved")["rows_out"], 400);
    assert_eq!(m("preserved")["files_scanned"], 4);
    assert!(m("preserved")["literal_bounds"].is_null());
    // Through a chain of inner joins, each materialized relation bounds `big`.
    assert_eq!(m("chained")["rows_out"], 2);
    assert_eq!(m("chained")["files_scanned"], 1, "{}", m("chained"));
    let bounds = m("chained")["literal_bounds"].to_string();
    assert!(
        bounds.contains("from days.ds") && bounds.contains("from keys.id"),
        "{bounds}"
    );
}

/// `report: true` puts a relation's rows in the report: the summary pipeline's
/// spec §3.1 counts.
#[tokio::test]
async fn the_summary_run_reports_its_counts() {
    let project = Project::new(&[]);
    let wh = project.warehouse().display().to_string();
    let vars = [("warehouse".to_string(), wh.clone())];
    let pipeline = crate::common::repo().join("pipelines/summary.yaml");
    let plan = sqlplan::build_plan(&pipeline, None, &vars).await.unwrap();
    let ts = "2026-01-01T00:00:00";
    let rows = serde_json::json!([
        {"cons_acct_key": 1, "rpt_as_of_mo": "2025-12", "acct_bal_am": 1, "base_ts": ts},
        {"cons_acct_key": 2, "rpt_as_of_mo": "2025-11", "acct_bal_am": 1, "base_ts": ts},
        {"cons_acct_key": 2, "rpt_as_of_mo": "2025-12", "acct_bal_am": 1, "base_ts": ts},
        {"cons_acct_key": 3, "rpt_as_of_mo": "2025-12", "soft_del_cd": "1", "base_ts": ts}
    ]);
    sqlplan::append_rows(&plan, "accounts", &rows)
        .await
        .unwrap();
    let var = format!("warehouse={wh}");
    let out = crate::common::sqlplan_in(
        &crate::common::repo(),
        &[
            "run",
            "pipelines/summary.yaml",
            "--var",
            &var,
            "--report",
            project.path().join("report.json").to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = report(&project);
    let counts = &stage(&r, "counts")["metrics"]["reported"];
    assert_eq!(
        counts,
        &serde_json::json!([
            {"kind": "case I: new account, one month", "records": 1},
            {"kind": "case IV: new account, several months", "records": 2},
            {"kind": "ignored", "records": 1}
        ])
    );
    assert!(out.stdout.contains("counts:"), "{}", out.stdout);
}
