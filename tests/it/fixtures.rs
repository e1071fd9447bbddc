//! `sqlplan test`: the example's fixtures pass; a wrong expectation fails with a
//! row diff.

use crate::common::{repo, sqlplan_in, Project};

#[test]
fn the_example_fixtures_pass() {
    let out = sqlplan_in(&repo(), &["test", "pipelines/examples/orders.yaml"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("3 passed, 0 failed"), "{}", out.stdout);
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
  - name: a relation expected wrong
    steps:
      - given:
          orders:
            - {order_id: 1, customer_id: 7, amount: 10.0, status: placed, ds: "2024-01-02"}
        expect:
          day_totals:
            - {customer_id: 7, orders: 2}
  - name: a write stage is no relation
    steps:
      - given:
          orders:
            - {order_id: 1, customer_id: 7, amount: 10.0, status: placed, ds: "2024-01-02"}
        expect:
          merge_totals:
            - {customer_id: 7}
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
            "--junit",
            project.path().join("junit.xml").to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    // The relation's rows are compared like a table's.
    assert!(
        out.stdout
            .contains(r#"step 1, day_totals: missing    {"customer_id":7.0,"orders":2.0}"#),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(
            "FAIL a write stage is no relation: \
             `merge_totals` under `expect:` is a stage that writes"
        ),
        "{}",
        out.stdout
    );
    // JUnit: a diff is a failure, a case that cannot run an error.
    let xml = std::fs::read_to_string(project.path().join("junit.xml")).unwrap();
    assert!(
        xml.contains(r#"<testsuite name="orders" tests="3" disabled="0" errors="1" failures="2">"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase name="wrong total" classname="orders""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<failure message="2 row difference(s)">"#),
        "{xml}"
    );
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
    assert!(out.stdout.contains("0 passed, 3 failed"), "{}", out.stdout);
}

/// The spec's worked examples (docs/summary-pipeline.md §4) as fixtures of
/// the summary pipeline.
#[test]
fn the_summary_worked_examples_pass() {
    let out = sqlplan_in(&repo(), &["test", "pipelines/summary.yaml"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("17 passed, 0 failed"), "{}", out.stdout);
}

/// A fixture file that does not say what it means is an invalid input (exit 2),
/// never a silent pass with zero checks.
#[test]
fn fixture_files_are_checked_before_anything_runs() {
    let order = r#"{order_id: 1, customer_id: 7, amount: 10.0, status: placed, ds: "2024-01-02"}"#;
    let given = format!("given: {{orders: [{order}]}}");
    let cases = [
        (
            format!(
                "cases:\n  - name: typo\n    steps:\n      \
                 - {{{given}, expects: {{customer_totals: []}}}}\n"
            ),
            "unknown key `expects` in a step",
            "did you mean `expect`?",
        ),
        (
            "cases:\n  - name: no steps\n    stpes: []\n".to_string(),
            "unknown key `stpes` in a case",
            "did you mean `steps`?",
        ),
        (
            "cases:\n  - name: no steps at all\n".to_string(),
            "case `no steps at all` has no `steps:` list",
            "each step gives rows",
        ),
        (
            format!("cases:\n  - name: nothing checked\n    steps:\n      - {{{given}}}\n"),
            "case `nothing checked` checks nothing",
            "add `expect: {TABLE: [rows…]}` to a step",
        ),
        (
            format!(
                "cases:\n  - name: unknown table\n    steps:\n      \
                 - {{{given}, expect: {{customer_total: []}}}}\n"
            ),
            "`customer_total` under `expect:` is not a table of the pipeline",
            "did you mean `customer_totals`?",
        ),
    ];
    for (text, message, help) in cases {
        let project = Project::new(&[("bad.tests.yaml", &text)]);
        let path = project.path().join("bad.tests.yaml");
        let out = sqlplan_in(
            &repo(),
            &[
                "test",
                "pipelines/examples/orders.yaml",
                "--fixtures",
                path.to_str().unwrap(),
            ],
        );
        assert_eq!(out.code, 2, "{text}\n{}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(message), "{text}\n{}", out.stderr);
        assert!(out.stderr.contains(help), "{text}\n{}", out.stderr);
        assert!(out.stdout.is_empty(), "nothing ran: {}", out.stdout);
    }
}
