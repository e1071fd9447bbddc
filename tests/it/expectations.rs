//! Row expectations (`expect:` on a materialized stage): `drop` checks move failing
//! rows into the quarantine table, counted per check in the report; `fail` checks
//! stop the run before any write; bad check definitions are invalid pipelines.

use serde_json::Value;

use crate::common::{query_tables, repo, sqlplan_in, stage, Project};

const PIPELINE: &str = r#"
name: checked
vars: {warehouse: ./warehouse}
tables:
  orders:
    location: "{{ warehouse }}/orders"
    schema: [{name: id, type: BIGINT}, {name: amount, type: INT}, {name: status, type: STRING}]
  totals:
    location: "{{ warehouse }}/totals"
    schema: [{name: status, type: STRING}, {name: total, type: BIGINT}]
  rejected:
    location: "{{ warehouse }}/rejected"
stages:
  - name: valid
    query: SELECT * FROM orders
    materialize: true
    expect:
      quarantine: rejected
      checks:
        - {name: id_present, check: id IS NOT NULL, action: drop}
        - {name: amount_positive, check: amount > 0, action: drop}
        - {name: status_known, check: "status IN ('placed', 'paid')", action: fail}
  - name: write_totals
    query: INSERT INTO totals SELECT status, sum(amount) FROM valid GROUP BY status
"#;

fn project() -> Project {
    Project::new(&[("pipeline.yaml", PIPELINE)])
}

async fn orders(p: &Project, rows: &[(Option<i64>, Option<i32>, &str)]) {
    use datafusion::arrow::array::{Int32Array, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("amount", DataType::Int32, true),
        Field::new("status", DataType::Utf8, true),
    ]);
    let batch = RecordBatch::try_new(
        std::sync::Arc::new(schema),
        vec![
            std::sync::Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            std::sync::Arc::new(Int32Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            std::sync::Arc::new(StringArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    let path = p.warehouse().join("orders");
    if path.exists() {
        crate::common::overwrite_table(&path, batch).await;
    } else {
        crate::common::create_table(&path, batch, &[]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_checks_quarantine_rows_and_count_them() {
    let p = project();
    orders(
        &p,
        &[
            (Some(1), Some(10), "placed"),
            (None, Some(5), "paid"),
            (Some(3), Some(-1), "paid"),
            (Some(4), None, "placed"),
        ],
    )
    .await;
    let out = p.sqlplan(&["run", "pipeline.yaml", "--report", "run.json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("valid checks (rows failing):"),
        "{}",
        out.stdout
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(p.path().join("run.json")).unwrap()).unwrap();
    let metrics = &stage(&report, "valid")["metrics"];
    assert_eq!(
        metrics["checks"],
        serde_json::json!({"amount_positive": 2, "id_present": 1, "status_known": 0})
    );
    assert_eq!(metrics["quarantined"], 3);
    assert_eq!(metrics["rows_out"], 1);
    let wh = p.warehouse();
    assert_eq!(
        query_tables(&[("t", &wh.join("totals"))], "SELECT * FROM t").await,
        ["placed,10"]
    );
    let rejected = query_tables(
        &[("t", &wh.join("rejected"))],
        "SELECT run, stage, check_name, record FROM t ORDER BY record",
    )
    .await;
    assert_eq!(
        rejected,
        [
            r#"1,valid,amount_positive,{"id":3,"amount":-1,"status":"paid"}"#,
            r#"1,valid,amount_positive,{"id":4,"amount":null,"status":"placed"}"#,
            r#"1,valid,id_present,{"id":null,"amount":5,"status":"paid"}"#,
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fail_check_stops_the_run_before_any_write() {
    let p = project();
    orders(
        &p,
        &[
            (Some(1), Some(10), "placed"),
            (None, Some(5), "lost"),
            (Some(7), Some(3), "lost"),
        ],
    )
    .await;
    let out = p.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("check `status_known`") && out.stderr.contains("failed for 2 rows"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(r#""status":"lost""#), "{}", out.stderr);
    // Neither the quarantine (the NULL id row fails a drop check too) nor the
    // totals were written: both tables are as the run created them.
    for table in ["totals", "rejected"] {
        let rows = query_tables(
            &[("t", &p.warehouse().join(table))],
            "SELECT count(*) FROM t",
        )
        .await;
        assert_eq!(rows, ["0"], "{table}");
    }
    // The writing stage waits for the checks, and the plan says so.
    let plan = p.sqlplan(&["plan", "pipeline.yaml"]);
    assert!(
        plan.stdout.contains(
            "after valid: reads valid after it is written; writes only after its checks pass"
        ),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("check status_known: status IN ('placed', 'paid') (else fail the run)"),
        "{}",
        plan.stdout
    );
}

#[test]
fn bad_expectations_are_invalid_pipelines() {
    let cases = [
        ("check: amount + 1", "is of type Int64, not a boolean"),
        ("check: nope > 0", "check `c` of stage `valid`"),
        ("action: quarantine", "unknown action `quarantine`"),
    ];
    for (edit, message) in cases {
        let (key, value) = edit.split_once(": ").unwrap();
        let mut check = serde_json::json!({"name": "c", "check": "amount > 0", "action": "drop"});
        check[key] = value.into();
        let yaml = PIPELINE.replace(
            "        - {name: id_present, check: id IS NOT NULL, action: drop}",
            &format!("        - {check}"),
        );
        let p = Project::new(&[("pipeline.yaml", &yaml)]);
        let out = p.sqlplan(&["plan", "pipeline.yaml"]);
        assert_eq!(out.code, 2, "{edit}: {}", out.stderr);
        assert!(out.stderr.contains(message), "{edit}: {}", out.stderr);
    }
    let structural = [
        (
            "      quarantine: rejected\n",
            "",
            "names no quarantine table",
        ),
        (
            "quarantine: rejected",
            "quarantine: rejectd",
            "did you mean",
        ),
        (
            "    location: \"{{ warehouse }}/rejected\"",
            "    location: \"{{ warehouse }}/rejected\"\n    schema: [{name: x, type: INT}]",
            "its columns are sqlplan's",
        ),
        (
            "    materialize: true\n",
            "",
            "is not a materialized SELECT",
        ),
    ];
    for (from, to, message) in structural {
        let p = Project::new(&[("pipeline.yaml", &PIPELINE.replacen(from, to, 1))]);
        let out = p.sqlplan(&["plan", "pipeline.yaml"]);
        assert_eq!(out.code, 2, "{from}: {}", out.stderr);
        assert!(out.stderr.contains(message), "{from}: {}", out.stderr);
    }
}

/// The summary pipeline on a generated batch with bad records: they are quarantined
/// with the check they failed, the rest of the batch is processed, and the next run
/// does not read them again.
#[tokio::test(flavor = "multi_thread")]
async fn the_summary_pipeline_quarantines_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let out = crate::common::generate_summary(
        &wh,
        &[
            "--accounts",
            "100",
            "--months",
            "6",
            "--batch-records",
            "100",
            "--bad-records",
            "10",
        ],
    );
    assert!(
        out.stdout.contains("bad: month not YYYY-MM"),
        "{}",
        out.stdout
    );
    let var = format!("warehouse={}", wh.display());
    let report = dir.path().join("run.json");
    let run = sqlplan_in(
        &repo(),
        &[
            "run",
            "pipelines/summary.yaml",
            "--var",
            &var,
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let metrics = &stage(&report, "incoming")["metrics"];
    assert_eq!(metrics["quarantined"], 10, "{metrics}");
    assert_eq!(metrics["checks"]["month_is_real"], 8, "{metrics}");
    assert_eq!(metrics["checks"]["base_ts_present"], 2, "{metrics}");
    let by_check = query_tables(
        &[("r", &wh.join("rejected_records"))],
        "SELECT check_name, count(*) FROM r GROUP BY check_name ORDER BY 1",
    )
    .await;
    assert_eq!(by_check, ["base_ts_present,2", "month_is_real,8"]);
    // Nothing was reinterpreted: every month in summary is a real YYYY-MM and no
    // quarantined account reached summary.
    let odd = query_tables(
        &[("s", &wh.join("summary"))],
        "SELECT count(*) FROM s WHERE NOT regexp_like(rpt_as_of_mo, '^[0-9]{4}-(0[1-9]|1[0-2])$') OR cons_acct_key >= 2000000",
    )
    .await;
    assert_eq!(odd, ["0"]);
    // The next run (an empty batch) does not quarantine them again.
    let again = sqlplan_in(&repo(), &["run", "pipelines/summary.yaml", "--var", &var]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let total = query_tables(
        &[("r", &wh.join("rejected_records"))],
        "SELECT count(*) FROM r",
    )
    .await;
    assert_eq!(total, ["10"]);
}
