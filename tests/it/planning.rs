//! Planning against real Delta tables: schemas from the log only, scan accounting,
//! levels, lints.

use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::StructType;
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::SaveMode;
use serde_json::Value;

use crate::common::Project;

/// A Delta table `orders(id BIGINT, amount DOUBLE, ds STRING)` partitioned by ds,
/// with two days of data: version 1.
async fn create_orders(path: &std::path::Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("ds", DataType::Utf8, false),
    ]));
    let kernel: StructType = schema.as_ref().try_into_kernel().unwrap();
    std::fs::create_dir_all(path).unwrap();
    let table = CreateBuilder::new()
        .with_location(path.to_str().unwrap())
        .with_columns(kernel.fields().cloned())
        .with_partition_columns(["ds"])
        .await
        .unwrap();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(Float64Array::from(vec![10.0, 20.0, 30.0, 40.0])),
            Arc::new(StringArray::from(vec![
                "2024-01-01",
                "2024-01-01",
                "2024-01-02",
                "2024-01-02",
            ])),
        ],
    )
    .unwrap();
    table
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .await
        .unwrap();
}

fn plan_json(project: &Project, extra: &[&str]) -> Value {
    let mut args = vec!["plan", "pipeline.yaml", "--format", "json"];
    args.extend_from_slice(extra);
    let out = project.sqlplan(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

const PIPELINE: &str = r#"name: scans
vars:
  warehouse: ./warehouse
tables:
  orders:
    location: "{{ warehouse }}/orders"
  daily:
    location: "{{ warehouse }}/daily"
    schema:
      - {name: ds, type: STRING}
      - {name: total, type: DOUBLE}
    partition_by: [ds]
stages:
  - name: all_orders
    query: SELECT id, amount, ds FROM orders
  - name: one_day
    query: SELECT id, amount FROM orders WHERE ds = '2024-01-02'
    materialize: true
  - name: big
    query: SELECT id FROM orders WHERE amount > 15
    materialize: true
  - name: daily_totals
    query: INSERT INTO daily SELECT ds, sum(amount) FROM all_orders GROUP BY ds
  - name: daily_max
    query: INSERT INTO daily SELECT ds, max(amount) FROM all_orders GROUP BY ds
  - name: joined
    query: SELECT o.id FROM one_day o JOIN big b ON o.id = b.id
"#;

#[tokio::test]
async fn schemas_come_from_the_delta_log_alone() {
    let project = Project::new(&[("pipeline.yaml", PIPELINE)]);
    create_orders(&project.warehouse().join("orders")).await;
    // Delete every data file: binding must need the log only.
    for entry in walk(&project.warehouse().join("orders")) {
        if entry.extension().is_some_and(|e| e == "parquet") {
            std::fs::remove_file(entry).unwrap();
        }
    }
    let plan = plan_json(&project, &[]);
    let orders = plan["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "orders")
        .unwrap();
    assert_eq!(orders["version"], 1);
    assert_eq!(orders["files"], 2);
    assert_eq!(orders["partition_by"], serde_json::json!(["ds"]));
    let columns: Vec<&str> = orders["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["id", "amount", "ds"]);
    let daily = plan["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "daily")
        .unwrap();
    assert_eq!(daily["version"], Value::Null, "daily is created by the run");
    assert!(
        !project.warehouse().join("daily").exists(),
        "plan must not create tables"
    );
}

#[tokio::test]
async fn scans_are_counted_and_classified_per_table() {
    let project = Project::new(&[("pipeline.yaml", PIPELINE)]);
    create_orders(&project.warehouse().join("orders")).await;
    let plan = plan_json(&project, &[]);
    let orders = plan["scans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "orders")
        .unwrap();
    let scans: Vec<(String, String, String)> = orders["scans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().into(),
                s["access"].as_str().unwrap().into(),
                s["via"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    // The view is evaluated by each of its two readers; materialized relations once.
    assert_eq!(
        scans,
        [
            ("one_day".into(), "partitions".into(), "".into()),
            ("big".into(), "statistics".into(), "".into()),
            ("daily_totals".into(), "full".into(), "all_orders".into()),
            ("daily_max".into(), "full".into(), "all_orders".into()),
        ]
    );
    assert_eq!(orders["full"], 2);
    assert_eq!(orders["pruned"], 2);
    let lint = &plan["warnings"][0];
    assert_eq!(lint["code"], "view_read_by_several_stages", "{lint}");
    assert!(lint["at"].as_str().unwrap().contains(".yaml:"), "{lint}");
    assert!(
        lint["help"].as_str().unwrap().contains("materialize: true"),
        "{lint}"
    );
    let warnings: Vec<&str> = plan["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["message"].as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("`all_orders` is a view read by 2 stages")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("`joined` defines a relation that no stage reads")),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn levels_follow_hazards() {
    let project = Project::new(&[("pipeline.yaml", PIPELINE)]);
    create_orders(&project.warehouse().join("orders")).await;
    let plan = plan_json(&project, &[]);
    let levels: Vec<Vec<&str>> = plan["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect()
        })
        .collect();
    // Two writers of `daily` keep program order (write after write); the rest is free.
    assert_eq!(
        levels,
        vec![
            vec!["all_orders", "one_day", "big"],
            vec!["daily_totals", "joined"],
            vec!["daily_max"]
        ]
    );
    let daily_max = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "daily_max")
        .unwrap();
    let reasons = daily_max["depends_on"].as_array().unwrap();
    assert!(
        reasons.iter().any(|d| d["stage"] == "daily_totals"
            && d["reasons"][0] == "writes daily after an earlier write"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn unknown_column_is_found_against_the_log_schema() {
    let project = Project::new(&[(
        "pipeline.yaml",
        &PIPELINE.replace(
            "SELECT id, amount, ds FROM orders",
            "SELECT id, price FROM orders",
        ),
    )]);
    create_orders(&project.warehouse().join("orders")).await;
    let out = project.sqlplan(&["plan", "pipeline.yaml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("price"), "{}", out.stderr);
    assert!(
        out.stderr.contains("pipeline.yaml:"),
        "points into the YAML for inline SQL: {}",
        out.stderr
    );
}

#[tokio::test]
async fn a_merge_target_is_pruned_by_key_range_or_partition() {
    let pipeline = r#"name: merges
tables:
  orders:
    location: ./warehouse/orders
stages:
  - name: by_key
    query: |
      MERGE INTO orders t USING (SELECT 1 AS id, 2.0 AS amount, '2024-01-01' AS ds) s
      ON t.id = s.id
      WHEN MATCHED THEN UPDATE SET amount = s.amount
  - name: by_partition
    query: |
      MERGE INTO orders t USING (SELECT 1 AS id, 2.0 AS amount, '2024-01-01' AS ds) s
      ON t.id = s.id AND t.ds = '2024-01-01'
      WHEN MATCHED THEN DELETE
"#;
    let project = Project::new(&[("pipeline.yaml", pipeline)]);
    create_orders(&project.warehouse().join("orders")).await;
    let plan = plan_json(&project, &[]);
    let scans = &plan["scans"][0]["scans"];
    assert_eq!(scans[0]["access"], "key_range");
    assert_eq!(scans[1]["access"], "partitions");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn plan_shows_scans_bounded_by_a_materialized_relation() {
    let pipeline = r#"name: bounded
tables:
  orders:
    location: ./warehouse/orders
stages:
  - name: wanted
    query: SELECT * FROM (VALUES (1, '2024-01-01')) AS v(id, ds)
    materialize: true
  - name: hits
    query: SELECT o.amount FROM orders o JOIN wanted w ON o.id = w.id AND o.ds = w.ds
    materialize: true
  - name: everything
    query: SELECT o.amount FROM orders o LEFT JOIN wanted w ON o.id = w.id
    materialize: true
"#;
    let project = Project::new(&[("pipeline.yaml", pipeline)]);
    create_orders(&project.warehouse().join("orders")).await;
    let plan = plan_json(&project, &[]);
    let scans = &plan["scans"][0]["scans"];
    assert_eq!(scans[0]["stage"], "hits");
    assert_eq!(scans[0]["access"], "bounds", "{scans}");
    let filters = scans[0]["filters"].to_string();
    assert!(
        filters.contains("BETWEEN min and max of wanted.id"),
        "{filters}"
    );
    assert!(filters.contains("IN (values of wanted.ds)"), "{filters}");
    assert_eq!(scans[1]["stage"], "everything");
    assert_eq!(
        scans[1]["access"], "full",
        "the preserved side of a LEFT JOIN is not bounded"
    );
}
