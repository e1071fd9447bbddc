//! `--select` / `--exclude`: part of a pipeline, with its inputs checked.

use crate::common::{create_table, ids, Project};

const PIPELINE: &str = r#"name: parts
tables:
  src: {location: warehouse/src}
  a: {location: warehouse/a, schema: [{name: id, type: BIGINT}]}
stages:
  - name: picked
    query: SELECT id FROM src WHERE id > 1
    materialize: true
  - name: write_a
    query: INSERT INTO a SELECT id FROM picked
  - name: read_a
    query: SELECT count(*) AS n FROM a
    materialize: true
    report: true
"#;

async fn project() -> Project {
    let p = Project::new(&[("pipeline.yaml", PIPELINE)]);
    create_table(&p.warehouse().join("src"), ids(&[1, 2, 3]), &[]).await;
    p
}

fn stages_run(out: &crate::common::Output) -> Vec<String> {
    out.stdout
        .lines()
        .filter(|l| l.contains(" succeeded ") && !l.starts_with("run "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_selection_runs_its_stages_and_refuses_missing_inputs() {
    let p = project().await;
    // A relation exists only inside a run: its stage must be selected too.
    let out = p.sqlplan(&["plan", "pipeline.yaml", "--select", "write_a"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("reads the relation `picked`, which is not selected"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("select `+write_a`"), "{}", out.stderr);
    // A table a left-out stage would create does not exist yet.
    let out = p.sqlplan(&["run", "pipeline.yaml", "--select", "read_a"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("reads `a`, which does not exist yet"),
        "{}",
        out.stderr
    );
    // `+write_a`: it and what it depends on, not what follows.
    let out = p.sqlplan(&["run", "pipeline.yaml", "--select", "+write_a"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(stages_run(&out), ["picked", "write_a"]);
    // Now `a` exists: `read_a` alone reads it as it is.
    let out = p.sqlplan(&["run", "pipeline.yaml", "--select", "read_a"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(stages_run(&out), ["read_a"]);
    // `picked+` is all three; minus `write_a`, `read_a` reads `a` as it is.
    let out = p.sqlplan(&[
        "plan",
        "pipeline.yaml",
        "--select",
        "picked+",
        "--exclude",
        "write_a",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("selection: 2 stages run; not selected: write_a"),
        "{}",
        out.stdout
    );
    // The estimates count the selected stages' scans only.
    let json = p.sqlplan(&[
        "plan",
        "pipeline.yaml",
        "--select",
        "read_a",
        "--format",
        "json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let src = json["scans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "src")
        .unwrap();
    assert_eq!(src["scans"].as_array().unwrap().len(), 0);
    assert_eq!(src["estimate"]["files"]["max"], 0, "{src}");
    assert!(
        json["scans"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["rewrites"].is_null()),
        "nothing selected writes"
    );
    // A name that is no stage.
    let out = p.sqlplan(&["plan", "pipeline.yaml", "--select", "red_a"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("did you mean `read_a`?"),
        "{}",
        out.stderr
    );
}
