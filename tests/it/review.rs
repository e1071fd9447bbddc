//! `plan --baseline REF`: the review of a change, against a git revision of the
//! project or a saved plan, on the same warehouse. One snapshot per kind of change.

use crate::common::{create_table, settings, Project};

const PIPELINE: &str = r#"name: reviewed
tables:
  t: {location: warehouse/t, max_full_scans: 0}
  u: {location: warehouse/u}
stages:
  - name: part_b
    sql: sql/part_b.sql
    materialize: true
  - name: big_u
    sql: sql/big_u.sql
    materialize: true
  - name: small_u
    query: SELECT id FROM u WHERE id < 10
    materialize: true
"#;

fn rows(ids: &[i64], ds: &[&str]) -> datafusion::arrow::array::RecordBatch {
    crate::common::id_text(ids, "ds", ds)
}

fn git(p: &Project, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.email=ci@example.com", "-c", "user.name=ci"])
        .args(args)
        .current_dir(p.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A committed project (the baseline) over a warehouse with two tables.
async fn committed() -> Project {
    let p = Project::new(&[
        ("pipeline.yaml", PIPELINE),
        ("sql/part_b.sql", "SELECT id\nFROM t\nWHERE ds = 'b'\n"),
        ("sql/big_u.sql", "SELECT id\nFROM u\nWHERE id > 50\n"),
        (".gitignore", "warehouse/\n"),
    ]);
    create_table(
        &p.warehouse().join("t"),
        rows(&[1, 2, 3, 4], &["a", "a", "b", "b"]),
        &["ds"],
    )
    .await;
    create_table(&p.warehouse().join("u"), rows(&[1, 100], &["x", "y"]), &[]).await;
    git(&p, &["init", "-q"]);
    git(&p, &["add", "."]);
    git(&p, &["commit", "-q", "-m", "baseline"]);
    p
}

fn review(p: &Project, format: &str) -> (i32, String) {
    let out = p.sqlplan(&[
        "plan",
        "pipeline.yaml",
        "--baseline",
        "HEAD",
        "--format",
        format,
    ]);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    (out.code, out.stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_review_names_each_kind_of_change() {
    let p = committed().await;
    let (code, text) = review(&p, "text");
    assert_eq!(
        (code, text.trim()),
        (
            0,
            "review of pipeline reviewed: unchanged (baseline: git HEAD)"
        )
    );

    // A changed template line: the SQL diff, exit 3.
    p.write("sql/big_u.sql", "SELECT id\nFROM u\nWHERE id > 60\n");
    let (code, text) = review(&p, "text");
    assert_eq!(code, 3);
    settings(Some(p.path())).bind(|| insta::assert_snapshot!("review_changed_line", text));
    git(&p, &["checkout", "-q", "--", "."]);

    // A removed filter: the scan of `t` goes from pruned to full, past its budget.
    p.write("sql/part_b.sql", "SELECT id\nFROM t\n");
    let (code, text) = review(&p, "text");
    assert_eq!(code, 2, "a crossed budget makes the change invalid");
    settings(Some(p.path())).bind(|| insta::assert_snapshot!("review_removed_filter", text));
    let (_, markdown) = review(&p, "markdown");
    settings(Some(p.path()))
        .bind(|| insta::assert_snapshot!("review_removed_filter_markdown", markdown));
    git(&p, &["checkout", "-q", "--", "."]);

    // A new stage.
    p.write(
        "pipeline.yaml",
        &format!(
            "{PIPELINE}  - name: count_u\n    \
             query: SELECT count(*) AS n FROM u WHERE id > 5\n    \
             materialize: true\n"
        ),
    );
    let (code, text) = review(&p, "text");
    assert_eq!(code, 3);
    settings(Some(p.path())).bind(|| insta::assert_snapshot!("review_new_stage", text));
    git(&p, &["checkout", "-q", "--", "."]);

    // A reordered pair: small_u now comes before big_u in program order.
    let swapped = PIPELINE.replace(
        "  - name: big_u\n    sql: sql/big_u.sql\n    materialize: true\n  - name: small_u\n    query: SELECT id FROM u WHERE id < 10\n    materialize: true\n",
        "  - name: small_u\n    query: SELECT id FROM u WHERE id < 10\n    materialize: true\n  - name: big_u\n    sql: sql/big_u.sql\n    materialize: true\n",
    );
    assert_ne!(swapped, PIPELINE);
    p.write("pipeline.yaml", &swapped);
    let (code, json) = review(&p, "json");
    assert_eq!(code, 3);
    settings(Some(p.path())).bind(|| insta::assert_snapshot!("review_reordered_json", json));
}

/// The baseline may be a saved `plan --format json` instead of a git revision.
#[tokio::test(flavor = "multi_thread")]
async fn a_saved_plan_is_a_baseline_too() {
    let p = committed().await;
    let saved = p.sqlplan(&["plan", "pipeline.yaml", "--format", "json"]);
    assert_eq!(saved.code, 0, "{}", saved.stderr);
    p.write("base.json", &saved.stdout);
    let same = p.sqlplan(&["plan", "pipeline.yaml", "--baseline", "base.json"]);
    assert_eq!(same.code, 0, "{}{}", same.stdout, same.stderr);
    p.write("sql/big_u.sql", "SELECT id\nFROM u\nWHERE id > 60\n");
    let changed = p.sqlplan(&["plan", "pipeline.yaml", "--baseline", "base.json"]);
    assert_eq!(changed.code, 3, "{}{}", changed.stdout, changed.stderr);
    assert!(
        changed
            .stdout
            .contains("-WHERE id > 50\n    +WHERE id > 60"),
        "{}",
        changed.stdout
    );
    // Neither a file nor a revision: exit 2, said plainly.
    let bad = p.sqlplan(&["plan", "pipeline.yaml", "--baseline", "no-such-ref"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("bad_baseline"), "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("neither a plan file nor a git revision"),
        "{}",
        bad.stderr
    );
}
