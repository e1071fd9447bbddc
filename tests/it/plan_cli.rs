//! `sqlplan plan` and `sqlplan graph` on the shipped pipelines: snapshots of the
//! text and JSON plans and of the graphs, and byte-identical output across runs.

use crate::common::{repo, settings, sqlplan_in};

/// Runs `sqlplan ARGS[0] pipelines/examples/orders.yaml --var warehouse=TMP ARGS[1..]`
/// and checks it wrote nothing; returns stdout and the warehouse (for masking).
fn plan_example(args: &[&str]) -> (String, tempfile::TempDir) {
    let wh = tempfile::tempdir().unwrap();
    let var = format!("warehouse={}", wh.path().display());
    let mut all = vec![args[0], "pipelines/examples/orders.yaml", "--var", &var];
    all.extend_from_slice(&args[1..]);
    let out = sqlplan_in(&repo(), &all);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_dir(wh.path()).unwrap().count(),
        0,
        "plan wrote into the warehouse"
    );
    (out.stdout, wh)
}

#[test]
fn example_plan_text() {
    let (out, wh) = plan_example(&["plan"]);
    settings(Some(wh.path())).bind(|| insta::assert_snapshot!("plan_example_text", out));
}

#[test]
fn example_plan_json() {
    let (out, wh) = plan_example(&["plan", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(json["levels"][0][0], "day_orders");
    settings(Some(wh.path())).bind(|| insta::assert_snapshot!("plan_example_json", out));
}

#[test]
fn example_plan_explain_shows_logical_plans() {
    let (out, _wh) = plan_example(&["plan", "--explain"]);
    assert!(out.contains("logical plan:"), "{out}");
    assert!(out.contains("TableScan: orders"), "{out}");
}

#[test]
fn plan_output_is_byte_identical_across_runs() {
    let wh = tempfile::tempdir().unwrap();
    let var = format!("warehouse={}", wh.path().display());
    let runs: Vec<String> = (0..3)
        .map(|_| {
            sqlplan_in(
                &repo(),
                &[
                    "plan",
                    "pipelines/examples/orders.yaml",
                    "--var",
                    &var,
                    "--format",
                    "json",
                    "--explain",
                ],
            )
            .stdout
        })
        .collect();
    assert!(!runs[0].is_empty());
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[1], runs[2]);
}

#[test]
fn example_graphs() {
    let (mermaid, _) = plan_example(&["graph"]);
    let (dot, _) = plan_example(&["graph", "--format", "dot"]);
    assert!(mermaid.starts_with("flowchart TD"));
    assert!(dot.starts_with("digraph"));
    settings(None).bind(|| {
        insta::assert_snapshot!("graph_example_mermaid", mermaid);
        insta::assert_snapshot!("graph_example_dot", dot);
    });
}

#[test]
fn summary_pipeline_plans() {
    let wh = tempfile::tempdir().unwrap();
    let var = format!("warehouse={}", wh.path().display());
    let out = sqlplan_in(&repo(), &["plan", "pipelines/summary.yaml", "--var", &var]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    settings(Some(wh.path())).bind(|| insta::assert_snapshot!("plan_summary_text", out.stdout));
}

#[test]
fn help_teaches_the_commands() {
    let out = sqlplan_in(&repo(), &["plan", "--help"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("--var"));
    assert!(out.stdout.contains("Examples:"));
}

/// A pipeline may come from an untrusted pull request: a `sql:` file or an include
/// that is a symlink out of the project is refused (exit 2) and nothing of the
/// file it points at is printed. (Absolute paths and `..` escapes are diagnostic
/// cases in tests/diagnostics/outside_*.)
#[test]
fn a_symlink_out_of_the_project_is_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.sql");
    std::fs::write(&secret, "SELECT 'TOP-SECRET-VALUE' AS id").unwrap();
    let pipeline = "\
name: evil
tables:
  t:
    location: ./wh/t
    schema:
      - {name: id, type: BIGINT}
stages:
  - name: steal
    sql: sql/innocent.sql
  - name: steal_by_include
    sql: sql/includes.sql
";
    for (target, include) in [(true, false), (false, true)] {
        let project = crate::common::Project::new(&[("pipeline.yaml", pipeline)]);
        let sql = project.path().join("sql");
        std::fs::create_dir_all(&sql).unwrap();
        let plain = "SELECT CAST(1 AS BIGINT) AS id";
        if target {
            std::os::unix::fs::symlink(&secret, sql.join("innocent.sql")).unwrap();
        } else {
            std::fs::write(sql.join("innocent.sql"), plain).unwrap();
        }
        if include {
            std::os::unix::fs::symlink(&secret, sql.join("linked.sql")).unwrap();
            std::fs::write(sql.join("includes.sql"), "{% include \"sql/linked.sql\" %}").unwrap();
        } else {
            std::fs::write(sql.join("includes.sql"), plain).unwrap();
        }
        let out = project.sqlplan(&["plan", "pipeline.yaml"]);
        assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("is a link to a file"), "{}", out.stderr);
        assert!(!out.stderr.contains("TOP-SECRET"), "{}", out.stderr);
        assert!(!out.stdout.contains("TOP-SECRET"), "{}", out.stdout);
    }
}

/// A var cannot inject SQL. A typed var refuses a value that is not of its type: the
/// summary pipeline's watermark with an injection attempt is not a timestamp (exit 2).
#[test]
fn a_var_cannot_end_its_literal() {
    let wh = tempfile::tempdir().unwrap();
    let out = sqlplan_in(
        &repo(),
        &[
            "plan",
            "pipelines/summary.yaml",
            "--var",
            &format!("warehouse={}", wh.path().display()),
            "--var",
            "watermark=2020-01-01' OR true --",
        ],
    );
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    // Refused at the command line by the var's type, before any template renders.
    assert!(out.stderr.contains("bad_var_value"), "{}", out.stderr);
    assert!(
        out.stderr.contains("expected a timestamp"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("declared as timestamp"),
        "{}",
        out.stderr
    );
}

/// A string var may hold any text, quotes included: the templates put it in a
/// literal through the `literal` filter, so the quote stays inside the string and
/// the statement keeps its shape.
#[test]
fn a_quote_in_a_string_var_stays_inside_its_literal() {
    let wh = tempfile::tempdir().unwrap();
    let out = sqlplan_in(
        &repo(),
        &[
            "plan",
            "pipelines/examples/orders.yaml",
            "--var",
            &format!("warehouse={}", wh.path().display()),
            "--var",
            "statuses=[\"placed') OR true --\"]",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("AND status IN ('placed'') OR true --')"),
        "{}",
        out.stdout
    );
}

/// `sqlplan schema plan|report`: JSON Schemas that describe what `plan --format json`
/// and `run --report` write — every top-level field of a real plan and report is a
/// property of its schema, and the schema requires `format_version`.
#[test]
fn the_schemas_describe_the_plan_and_the_report() {
    let wh = tempfile::tempdir().unwrap();
    let warehouse = format!("warehouse={}", wh.path().display());
    let plan = sqlplan_in(
        &repo(),
        &[
            "plan",
            "pipelines/examples/orders.yaml",
            "--format",
            "json",
            "--var",
            &warehouse,
        ],
    );
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let report_path = wh.path().join("report.json");
    let run = sqlplan_in(
        &repo(),
        &[
            "run",
            "pipelines/examples/orders.yaml",
            "--var",
            &warehouse,
            "--report",
            report_path.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = std::fs::read_to_string(&report_path).unwrap();
    for (what, document) in [("plan", plan.stdout.as_str()), ("report", report.as_str())] {
        let out = sqlplan_in(&repo(), &["schema", what]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let schema: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let document: serde_json::Value = serde_json::from_str(document).unwrap();
        let properties = schema["properties"].as_object().unwrap();
        for key in document.as_object().unwrap().keys() {
            assert!(
                properties.contains_key(key),
                "{what}: `{key}` is not in the schema"
            );
        }
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(required.contains(&"format_version"), "{what}: {required:?}");
    }
}
