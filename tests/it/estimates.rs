//! What `plan` says a run will read, from the Delta log, against what the run then
//! reads: equal where the log decides, within the range where a bound is only known
//! at run time; and byte budgets enforced by `plan`.

use crate::common::{create_table, settings, stage, Project};

fn rows(ids: &[i64], ds: &[&str]) -> datafusion::arrow::array::RecordBatch {
    crate::common::id_text(ids, "ds", ds)
}

const PIPELINE: &str = r#"name: estimated
tables:
  t: {location: warehouse/t}
  u: {location: warehouse/u}
stages:
  - name: part_b
    query: SELECT id FROM t WHERE ds = 'b'
    materialize: true
  - name: big_u
    query: SELECT id FROM u WHERE id > 50
    materialize: true
  - name: keys
    query: SELECT id FROM u WHERE id < 10
    materialize: true
  - name: joined
    query: SELECT t.id FROM t JOIN keys ON t.id = keys.id
    materialize: true
  - name: drop_b
    query: |
      MERGE INTO t USING keys ON t.id = keys.id AND t.ds = 'b'
      WHEN MATCHED THEN DELETE
"#;

/// `t`: three partitions, a file each; `u`: two files, ids 1–3 and 100–101.
async fn project(pipeline: &str) -> Project {
    let p = Project::new(&[("pipeline.yaml", pipeline)]);
    create_table(
        &p.warehouse().join("t"),
        rows(&[1, 2, 3, 4, 5, 6], &["a", "a", "b", "b", "c", "c"]),
        &["ds"],
    )
    .await;
    let u = create_table(
        &p.warehouse().join("u"),
        rows(&[1, 2, 3], &["x", "x", "x"]),
        &[],
    )
    .await;
    u.write(vec![rows(&[100, 101], &["y", "y"])])
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .await
        .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn estimates_from_the_log_match_what_the_run_reads() {
    let p = project(PIPELINE).await;
    let plan = p.sqlplan(&["plan", "pipeline.yaml", "--format", "json"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let run = p.sqlplan(&["run", "pipeline.yaml", "--report", "run.json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.path().join("run.json")).unwrap()).unwrap();
    // Machine contracts carry their format's version.
    assert_eq!(plan["format_version"], 1);
    assert_eq!(report["format_version"], 1);
    let scan = |table: &str, stage: &str| {
        plan["scans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .unwrap()["scans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == stage)
            .unwrap()["estimate"]
            .clone()
    };
    let measured = |name: &str| {
        let m = &stage(&report, name)["metrics"];
        (
            m["files_scanned"].as_u64().unwrap(),
            m["bytes_scanned"].as_u64().unwrap(),
        )
    };
    // Decided by the log: a partition, then file statistics. Exact, and equal.
    for (table, name, files) in [("t", "part_b", 1), ("u", "big_u", 1), ("u", "keys", 1)] {
        let e = scan(table, name);
        assert_eq!(e["files"]["min"], e["files"]["max"], "{name}: {e}");
        assert_eq!(e["files"]["max"], files, "{name}: {e}");
        let (files_read, bytes_read) = measured(name);
        assert_eq!(files_read, files, "{name}");
        assert!(
            bytes_read <= e["bytes"]["max"].as_u64().unwrap(),
            "{name}: {bytes_read} {e}"
        );
    }
    // Bounded at run time by `keys`: a range, and the run lands in it.
    let e = scan("t", "joined");
    assert_eq!(
        (e["files"]["min"].as_u64(), e["files"]["max"].as_u64()),
        (Some(0), Some(3)),
        "{e}"
    );
    let (files_read, _) = measured("joined");
    assert!(files_read <= 3, "{files_read}");
    // A MERGE target: the source's keys decide at run time, within the partition the
    // ON clause names.
    let e = scan("t", "drop_b");
    assert_eq!(
        (e["files"]["min"].as_u64(), e["files"]["max"].as_u64()),
        (Some(0), Some(1)),
        "{e}"
    );
    // The text plan says the same, with totals.
    let text = p.sqlplan(&["plan", "pipeline.yaml"]);
    assert!(
        text.stdout
            .contains("part_b: pruned by partition; 1 file, "),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("joined: pruned by key bounds of a materialized relation; 0–3 files, "),
        "{}",
        text.stdout
    );
}

/// A table's byte budget: `plan` refuses when the estimate's maximum passes it,
/// pointing at the budget and at the template of the stage that reads the most.
#[tokio::test(flavor = "multi_thread")]
async fn a_byte_budget_stops_plan_naming_the_stage() {
    let pipeline = PIPELINE.replace(
        "  t: {location: warehouse/t}",
        "  t: {location: warehouse/t, max_scan_bytes: 100 B}",
    );
    let p = project(&pipeline).await;
    let before = p.listing();
    let out = p.sqlplan(&["plan", "pipeline.yaml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(p.listing(), before, "nothing touched");
    settings(Some(p.path())).bind(|| insta::assert_snapshot!("plan_byte_budget", out.stderr));
    // A budget the estimate fits in plans.
    let fits = PIPELINE.replace(
        "  t: {location: warehouse/t}",
        "  t: {location: warehouse/t, max_scan_bytes: 1 MB}",
    );
    p.write("pipeline.yaml", &fits);
    let out = p.sqlplan(&["plan", "pipeline.yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("(budget 1.0 MB)"), "{}", out.stdout);
}

/// The same on a generated summary warehouse: for every stage, the estimate from the
/// plan against the files the run measured — equal where the log decides, within the
/// range where a bound is known only at run time.
#[tokio::test(flavor = "multi_thread")]
async fn estimates_hold_on_a_generated_summary_warehouse() {
    use crate::common::{repo, sqlplan_in};
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let warehouse = format!("warehouse={}", wh.display());
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
        ],
    );
    let plan = sqlplan_in(
        &repo(),
        &[
            "plan",
            "pipelines/summary.yaml",
            "--format",
            "json",
            "--var",
            &warehouse,
        ],
    );
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let report_path = dir.path().join("run.json");
    let run = sqlplan_in(
        &repo(),
        &[
            "run",
            "pipelines/summary.yaml",
            "--var",
            &warehouse,
            "--report",
            report_path.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report_path).unwrap()).unwrap();
    // Per stage: the sum of its scans' estimates.
    let mut estimated: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for table in plan["scans"].as_array().unwrap() {
        for scan in table["scans"].as_array().unwrap() {
            let e = estimated
                .entry(scan["stage"].as_str().unwrap().to_string())
                .or_default();
            e.0 += scan["estimate"]["files"]["min"].as_u64().unwrap();
            e.1 += scan["estimate"]["files"]["max"].as_u64().unwrap();
        }
    }
    let mut exact = 0;
    for (name, (min, max)) in &estimated {
        let Some(files) = stage(&report, name)["metrics"]["files_scanned"].as_u64() else {
            continue;
        };
        if min == max {
            assert_eq!(files, *max, "{name}: estimated {max} files, read {files}");
            exact += 1;
        } else {
            assert!(
                (*min..=*max).contains(&files),
                "{name}: estimated {min}–{max} files, read {files}"
            );
        }
    }
    assert!(
        exact >= 2,
        "the batch's scans are decided by the log: {estimated:?}"
    );
}
