//! `sqlplan test`: the example's fixtures pass; a wrong expectation fails with a
//! row diff.

use crate::common::{repo, sqlplan_in, Project};

#[test]
fn the_example_fixtures_pass() {
    let out = sqlplan_in(&repo(), &["test", "pipelines/examples/orders.yaml"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("2 passed, 0 failed"), "{}", out.stdout);
    assert!(out.stderr.is_empty(), "quiet: {}", out.stderr);
}

#[test]
fn a_wrong_expectation_fails_with_a_diff() {
    let fixtures = r#"cases:
  - name: wrong total
    steps:
      - given:
          orders:
            - {order_id: 1, customer_id: 7, amount: 10.0, status: placed, ds: "2024-01-02"}
        expect:
          customer_totals:
            - {customer_id: 7, amount: 11}
"#;
    let project = Project::new(&[("wrong.tests.yaml", fixtures)]);
    let path = project.path().join("wrong.tests.yaml");
    let out = sqlplan_in(
        &repo(),
        &[
            "test",
            "pipelines/examples/orders.yaml",
            "--fixtures",
            path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("FAIL wrong total"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains(r#"missing    {"amount":11.0,"customer_id":7.0}"#),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(r#"unexpected {"amount":10.0,"customer_id":7.0}"#),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("0 passed, 1 failed"), "{}", out.stdout);
}

/// The spec's worked examples (docs/summary-pipeline.md §4) as fixtures of
/// the summary pipeline.
#[test]
fn the_summary_worked_examples_pass() {
    let out = sqlplan_in(&repo(), &["test", "pipelines/summary.yaml"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("17 passed, 0 failed"), "{}", out.stdout);
}
