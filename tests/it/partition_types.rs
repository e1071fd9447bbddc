//! Deletion vectors on every partition type: a differential test. For each type a
//! table partitioned by a column of that type (three values and NULL) goes through
//! random MERGE and DELETE sequences twice: with deletion vectors and with
//! copy-on-write. After every run both tables must hold the rows a plain model
//! computes, read by delta-rs, by sqlplan's own scan (a stage of the run), and at
//! the end by Python's `deltalake` and DuckDB's delta reader; `verify-vectors` must
//! find nothing wrong with the vectors.
//!
//! The partition values are compared through a `vals` table (index → value)
//! joined on the typed value, so no reader's formatting of a type enters the
//! comparison. `SQLPLAN_PARTITION_STEPS` (default 3) sets the runs per type and
//! `SQLPLAN_PARTITION_SEEDS` (default 1) the sequences.
//!
//! Before the fix, the MERGE key pass compared the log's partition strings with
//! Arrow's printing of the source's values (a timestamp MERGE inserted every
//! matched row again), and paths of escaped partition folders were encoded twice
//! (`x y` could not be read back once it had a vector): `the_probe_*` below are
//! those reports, kept as they were filed.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::ScalarValue;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{create_table, overwrite_table, query_tables, stage, Project};
use crate::readers::{duckdb_lines, python_lines};

/// A partition type: its Arrow type, three values (as Arrow casts them from text)
/// and a SQL literal equal to the first.
struct Case {
    data_type: DataType,
    values: [&'static str; 3],
    first_literal: &'static str,
}

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn case(name: &str) -> Case {
    let (data_type, values, first_literal) = match name {
        "bigint" => (DataType::Int64, ["-5", "0", "9007199254740993"], "-5"),
        "int" => (DataType::Int32, ["1", "2", "-7"], "1"),
        "date" => (
            DataType::Date32,
            ["2024-02-29", "1970-01-01", "2024-01-01"],
            "DATE '2024-02-29'",
        ),
        "timestamp" => (
            utc(),
            [
                "2024-01-01T10:30:00Z",
                "2024-02-01T00:00:00Z",
                "2024-02-01T00:00:00.000001Z",
            ],
            // delta-rs's copy-on-write DELETE prints its predicate into the commit
            // and cannot print `TIMESTAMP '…'` (a cast); it prints arrow_cast.
            "arrow_cast('2024-01-01T10:30:00', 'Timestamp(Microsecond, Some(\"UTC\"))')",
        ),
        "timestamp_ntz" => (
            DataType::Timestamp(TimeUnit::Microsecond, None),
            [
                "2024-01-01T10:30:00",
                "1999-12-31T23:59:59.999999",
                "2024-02-01T00:00:00",
            ],
            "arrow_cast('2024-01-01T10:30:00', 'Timestamp(Microsecond, None)')",
        ),
        "decimal" => (
            DataType::Decimal128(10, 2),
            ["1.50", "-0.05", "12345678.90"],
            "CAST('1.50' AS DECIMAL(10, 2))",
        ),
        "double" => (DataType::Float64, ["1.5", "-0.25", "10000000000"], "1.5"),
        "boolean" => (DataType::Boolean, ["true", "false", "true"], "true"),
        "string" => (DataType::Utf8, ["x y", "a:b%c/d=e", "é ü"], "'x y'"),
        other => panic!("no case {other}"),
    };
    Case {
        data_type,
        values,
        first_literal,
    }
}

impl Case {
    /// The number of distinct values (a boolean has two).
    fn distinct(&self) -> usize {
        if self.data_type == DataType::Boolean {
            2
        } else {
            3
        }
    }

    /// A column of this type: each entry an index into `values`, None for NULL.
    fn column(&self, indices: &[Option<usize>]) -> ArrayRef {
        let scalars = indices.iter().map(|i| match i {
            Some(i) => {
                ScalarValue::try_from_string(self.values[*i].to_string(), &self.data_type).unwrap()
            }
            None => ScalarValue::try_from(&self.data_type).unwrap(),
        });
        ScalarValue::iter_to_array(scalars).unwrap()
    }
}

/// A row of the model: key, partition value (an index into the case's values) and
/// value.
#[derive(Clone, Debug)]
struct Row {
    id: i64,
    p: Option<usize>,
    v: String,
}

fn line(r: &Row) -> String {
    let p = r.p.map_or("null".to_string(), |p| p.to_string());
    format!("{},{p},{}", r.id, r.v)
}

fn lines(rows: &[Row]) -> Vec<String> {
    let mut out: Vec<String> = rows.iter().map(line).collect();
    out.sort();
    out
}

/// The rows as `id,index,v` lines, from any reader that speaks SQL: `t` the table,
/// `vals` the index → value table.
const LINES: &str = "SELECT CAST(t.id AS VARCHAR) || ',' \
                     || COALESCE(CAST(vals.i AS VARCHAR), 'null') || ',' || t.v AS line \
                     FROM t LEFT JOIN vals ON t.p = vals.p";

fn rows_batch(case: &Case, rows: &[Row], op: Option<&[&str]>) -> RecordBatch {
    let mut fields = vec![
        Field::new("id", DataType::Int64, false),
        Field::new("p", case.data_type.clone(), true),
        Field::new("v", DataType::Utf8, true),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
        case.column(&rows.iter().map(|r| r.p).collect::<Vec<_>>()),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.v.as_str()),
        )),
    ];
    if let Some(op) = op {
        fields.push(Field::new("op", DataType::Utf8, false));
        columns.push(Arc::new(StringArray::from(op.to_vec())));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

fn vals_batch(case: &Case) -> RecordBatch {
    let n = case.distinct();
    let indices: Vec<Option<usize>> = (0..n).map(Some).collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int32, false),
            Field::new("p", case.data_type.clone(), true),
        ])),
        vec![
            Arc::new(Int32Array::from_iter_values(0..n as i32)),
            case.column(&indices),
        ],
    )
    .unwrap()
}

const MERGE: &str = "USING changes c ON t.id = c.id AND t.p = c.p \
                     WHEN MATCHED AND c.op = 'delete' THEN DELETE \
                     WHEN MATCHED THEN UPDATE SET v = c.v \
                     WHEN NOT MATCHED AND c.op = 'upsert' \
                     THEN INSERT (id, p, v) VALUES (c.id, c.p, c.v)";

/// Two targets (`dv` with vectors, `cow` without), each MERGEd from `changes`,
/// then rows of the first partition value marked `d…` deleted; `seen` reads `dv`
/// through sqlplan's scan.
fn pipeline(case: &Case) -> String {
    let lit = case.first_literal;
    format!(
        "name: differential
tables:
  dv:
    location: warehouse/dv
    deletion_vectors: {{rewrite_above: 0.6}}
  cow:
    location: warehouse/cow
  changes:
    location: warehouse/changes
  vals:
    location: warehouse/vals
stages:
  - name: merge_dv
    query: MERGE INTO dv t {MERGE}
  - name: merge_cow
    query: MERGE INTO cow t {MERGE}
  - name: delete_dv
    query: DELETE FROM dv WHERE p = {lit} AND v LIKE 'd%'
  - name: delete_cow
    query: DELETE FROM cow WHERE p = {lit} AND v LIKE 'd%'
  - name: seen
    query: SELECT COUNT(*) AS n, string_agg(line, ';' ORDER BY line) AS rows FROM ({}) AS l
    materialize: true
    report: true
",
        LINES.replace("FROM t ", "FROM dv t ")
    )
}

/// The model of one run: the MERGE (each source row matches at most one target
/// row: keys with a partition value are unique on both sides), then the DELETE.
fn apply(rows: &mut Vec<Row>, changes: &[Row], ops: &[&str]) {
    for (c, op) in changes.iter().zip(ops) {
        let hit = rows
            .iter()
            .position(|r| r.id == c.id && r.p.is_some() && r.p == c.p);
        match (hit, *op) {
            (Some(i), "delete") => {
                rows.remove(i);
            }
            (Some(i), _) => rows[i].v = c.v.clone(),
            (None, "upsert") => rows.push(c.clone()),
            (None, _) => {}
        }
    }
    rows.retain(|r| !(r.p == Some(0) && r.v.starts_with('d')));
}

/// A batch of changes: updates and deletes of existing rows, rows of an existing
/// key under another partition value (inserted: the partition value is part of
/// the key), new keys, NULL partition values (never matched), values marked for
/// the DELETE.
fn changes(
    rng: &mut ChaCha8Rng,
    case: &Case,
    rows: &[Row],
    step: usize,
) -> (Vec<Row>, Vec<&'static str>) {
    let p = |rng: &mut ChaCha8Rng| {
        let i = rng.random_range(0..=case.distinct());
        (i < case.distinct()).then_some(i)
    };
    let mut out: Vec<Row> = Vec::new();
    let mut ops = Vec::new();
    let next_id = rows.iter().map(|r| r.id).max().unwrap_or(0) + 1;
    for n in 0..rng.random_range(4..12) {
        let mark = if rng.random_bool(0.3) { "d" } else { "u" };
        let v = format!("{mark}{step}_{n}");
        let (row, op) = match rng.random_range(0..5) {
            0..=2 if !rows.is_empty() => {
                let r = &rows[rng.random_range(0..rows.len())];
                let op = if rng.random_bool(0.25) {
                    "delete"
                } else {
                    "upsert"
                };
                (
                    Row {
                        id: r.id,
                        p: r.p,
                        v,
                    },
                    op,
                )
            }
            3 if !rows.is_empty() => {
                let r = &rows[rng.random_range(0..rows.len())];
                (
                    Row {
                        id: r.id,
                        p: p(rng),
                        v,
                    },
                    "upsert",
                )
            }
            _ => (
                Row {
                    id: next_id + n as i64,
                    p: p(rng),
                    v,
                },
                "upsert",
            ),
        };
        // One source row per target row (for a key with a partition value).
        let duplicate = row.p.is_some() && out.iter().any(|o| o.id == row.id && o.p == row.p);
        if !duplicate {
            out.push(row);
            ops.push(op);
        }
    }
    (out, ops)
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn read_lines(project: &Project, table: &str) -> Vec<String> {
    let wh = project.warehouse();
    let mut out = query_tables(&[("t", &wh.join(table)), ("vals", &wh.join("vals"))], LINES).await;
    out.sort();
    out
}

async fn differential(name: &str) {
    let seeds = env_count("SQLPLAN_PARTITION_SEEDS", 1);
    let steps = env_count("SQLPLAN_PARTITION_STEPS", 3);
    differential_on(name, None, seeds, steps).await;
}

/// The differential of type `name`, run locally or with `--engine engine`.
async fn differential_on(name: &str, engine: Option<&str>, seeds: usize, steps: usize) {
    let case = case(name);
    for seed in 0..seeds as u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let project = Project::new(&[("pipeline.yaml", &pipeline(&case))]);
        let wh = project.warehouse();
        let mut rows: Vec<Row> = (1..=24)
            .map(|id| Row {
                id,
                p: {
                    let i = rng.random_range(0..=case.distinct());
                    (i < case.distinct()).then_some(i)
                },
                v: format!("s{id}"),
            })
            .collect();
        for table in ["dv", "cow"] {
            create_table(&wh.join(table), rows_batch(&case, &rows, None), &["p"]).await;
        }
        create_table(&wh.join("vals"), vals_batch(&case), &[]).await;
        let (first, ops) = changes(&mut rng, &case, &rows, 0);
        create_table(
            &wh.join("changes"),
            rows_batch(&case, &first, Some(&ops)),
            &[],
        )
        .await;
        let mut pending = Some((first, ops));
        let mut rewritten = 0;
        for step in 0..steps {
            let (batch, ops) = match pending.take() {
                Some(c) => c,
                None => {
                    let (c, ops) = changes(&mut rng, &case, &rows, step);
                    overwrite_table(&wh.join("changes"), rows_batch(&case, &c, Some(&ops))).await;
                    (c, ops)
                }
            };
            apply(&mut rows, &batch, &ops);
            let context = format!(
                "{name}, seed {seed}, step {step}, engine {engine:?}, changes {batch:?} {ops:?}"
            );
            let mut args = vec!["run", "pipeline.yaml", "--report", "report.json"];
            args.extend(engine.iter().flat_map(|e| ["--engine", e]));
            let out = project.sqlplan(&args);
            assert_eq!(out.code, 0, "{context}\n{}\n{}", out.stdout, out.stderr);
            let expected = lines(&rows);
            assert_eq!(
                read_lines(&project, "dv").await,
                expected,
                "dv (delta-rs): {context}"
            );
            assert_eq!(
                read_lines(&project, "cow").await,
                expected,
                "cow (delta-rs): {context}"
            );
            let report: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(project.path().join("report.json")).unwrap(),
            )
            .unwrap();
            if engine.is_some() {
                // Both MERGEs ran on the executors (with and without vectors),
                // and so did the copy-on-write DELETE (sqlplan's rewrites).
                for merge in ["merge_dv", "merge_cow"] {
                    let metrics = &stage(&report, merge)["metrics"];
                    assert_eq!(metrics["key_pass"], "key sets", "{merge}: {context}");
                }
                for cow in ["merge_cow", "delete_cow"] {
                    let metrics = &stage(&report, cow)["metrics"];
                    let n = metrics["files_rewritten"].as_u64();
                    assert!(n.is_some(), "{cow}: {metrics} {context}");
                    rewritten += n.unwrap_or(0);
                }
            }
            let seen = &stage(&report, "seen")["metrics"]["reported"][0];
            assert_eq!(
                seen["rows"].as_str().unwrap_or(""),
                expected.join(";"),
                "dv (sqlplan's scan): {context}"
            );
            let verify = project.sqlplan(&["verify-vectors", "warehouse/dv"]);
            assert_eq!(
                verify.code, 0,
                "{context}\n{}{}",
                verify.stdout, verify.stderr
            );
        }
        if engine.is_some() {
            assert!(rewritten > 0, "{name}: the executors rewrote no file");
        }
        let expected = lines(&rows);
        for table in ["dv", "cow"] {
            if let Some(python) = python_lines(&wh.join(table), &wh.join("vals"), LINES) {
                assert_eq!(
                    python, expected,
                    "{table} (Python deltalake): {name}, seed {seed}"
                );
            }
            if let Some(duck) = duckdb_lines(&wh.join(table), &wh.join("vals"), LINES) {
                assert_eq!(duck, expected, "{table} (DuckDB): {name}, seed {seed}");
            }
        }
    }
}

macro_rules! differential_tests {
    ($($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                differential(stringify!($name)).await;
            }
        )*
    };
}

mod vectors_equal_copy_on_write_partitioned_by {
    use super::differential;
    differential_tests!(
        bigint,
        int,
        date,
        timestamp,
        timestamp_ntz,
        decimal,
        double,
        boolean,
        string
    );
}

/// On a 2-executor cluster (over local files): MERGE and DELETE of both tables run
/// on the executors, with vectors in `dv` and rewriting every changed file in
/// `cow`; each type's tables must hold the model's rows, read by every reader.
/// `SQLPLAN_CLUSTER_PARTITION_STEPS` (default 2) sets the runs per type.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_cluster_vectors_and_copy_on_write_equal_the_model_for_every_type() {
    let cluster = crate::cluster::Cluster::start_local(2);
    let steps = env_count("SQLPLAN_CLUSTER_PARTITION_STEPS", 2);
    for name in [
        "bigint",
        "int",
        "date",
        "timestamp",
        "timestamp_ntz",
        "decimal",
        "double",
        "boolean",
        "string",
    ] {
        differential_on(name, Some(cluster.engine()), 1, steps).await;
    }
}

/// The reports as filed: 2,000 rows under two partition values, a MERGE of 41 keys
/// that all exist, run twice. Each run must update the 41 rows in place (no
/// duplicate key), and the table must read back the same in sqlplan, delta-rs,
/// Python's deltalake and DuckDB.
async fn probe(case: &Case) {
    let project = Project::new(&[(
        "pipeline.yaml",
        "name: probe
tables:
  t:
    location: warehouse/t
    deletion_vectors: true
  changes:
    location: warehouse/changes
  vals:
    location: warehouse/vals
stages:
  - name: apply
    query: MERGE INTO t USING changes s ON t.id = s.id AND t.p = s.p \
           WHEN MATCHED THEN UPDATE SET v = s.v \
           WHEN NOT MATCHED THEN INSERT (id, p, v) VALUES (s.id, s.p, s.v)
  - name: seen
    query: SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS keys FROM t
    materialize: true
    report: true
",
    )]);
    let wh = project.warehouse();
    let mut rows: Vec<Row> = (0..2000)
        .map(|id| Row {
            id,
            p: Some((id % 2) as usize),
            v: format!("s{id}"),
        })
        .collect();
    create_table(&wh.join("t"), rows_batch(case, &rows, None), &["p"]).await;
    create_table(&wh.join("vals"), vals_batch(case), &[]).await;
    for round in 0..2 {
        let changes: Vec<Row> = (0..41)
            .map(|k| {
                let id = k * 47 + round;
                Row {
                    id,
                    p: Some((id % 2) as usize),
                    v: format!("r{round}_{id}"),
                }
            })
            .collect();
        let ops = vec!["upsert"; changes.len()];
        let batch = rows_batch(case, &changes, None);
        if round == 0 {
            create_table(&wh.join("changes"), batch, &[]).await;
        } else {
            overwrite_table(&wh.join("changes"), batch).await;
        }
        apply(&mut rows, &changes, &ops);
        let out = project.sqlplan(&["run", "pipeline.yaml", "--report", "report.json"]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(project.path().join("report.json")).unwrap(),
        )
        .unwrap();
        let m = &stage(&report, "apply")["metrics"];
        assert_eq!(
            (m["rows_updated"].as_u64(), m["rows_inserted"].as_u64()),
            (Some(41), Some(0)),
            "round {round}: {m}"
        );
        let seen = &stage(&report, "seen")["metrics"]["reported"][0];
        assert_eq!(
            (seen["n"].as_i64(), seen["keys"].as_i64()),
            (Some(2000), Some(2000))
        );
    }
    let expected = lines(&rows);
    let mut rust = query_tables(&[("t", &wh.join("t")), ("vals", &wh.join("vals"))], LINES).await;
    rust.sort();
    assert_eq!(rust, expected, "delta-rs");
    if let Some(python) = python_lines(&wh.join("t"), &wh.join("vals"), LINES) {
        assert_eq!(python, expected, "Python deltalake");
    }
    if let Some(duck) = duckdb_lines(&wh.join("t"), &wh.join("vals"), LINES) {
        assert_eq!(duck, expected, "DuckDB");
    }
    let verify = project.sqlplan(&["verify-vectors", "warehouse/t"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains("2 with deletion vectors"),
        "{}",
        verify.stdout
    );
}

#[tokio::test]
async fn the_probe_timestamp_partition_merge_updates_in_place() {
    let mut c = case("timestamp");
    c.values = [
        "2024-01-01T10:30:00Z",
        "2024-02-01T00:00:00Z",
        "2024-03-01T00:00:00Z",
    ];
    probe(&c).await;
}

#[tokio::test]
async fn the_probe_string_partition_with_a_space_reads_back() {
    let mut c = case("string");
    c.values = ["x y", "plain", "z"];
    probe(&c).await;
}
