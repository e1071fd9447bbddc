//! Every kind of bad input: a miette diagnostic naming file, line and column,
//! exit code 2, nothing touched, never a panic. Each is pinned by a snapshot.

use crate::common::{settings, Project};

/// A valid pipeline to start from: one source table (declared, so nothing needs to
/// exist), a view and a MERGE.
const BASE: &str = r#"name: demo
vars:
  warehouse: ./wh
  min_amount: 10
tables:
  orders:
    location: "{{ warehouse }}/orders"
    schema:
      - {name: id, type: BIGINT, nullable: false}
      - {name: amount, type: DOUBLE}
      - {name: ds, type: STRING}
    partition_by: [ds]
  totals:
    location: "{{ warehouse }}/totals"
    schema:
      - {name: id, type: BIGINT, nullable: false}
      - {name: amount, type: DOUBLE}
stages:
  - name: big_orders
    sql: sql/big_orders.sql
  - name: upsert
    sql: sql/upsert.sql
"#;

const BIG_ORDERS: &str = "SELECT id, amount\nFROM orders\nWHERE amount > {{ min_amount }}\n";
const UPSERT: &str = "MERGE INTO totals t\nUSING big_orders b\nON t.id = b.id\nWHEN MATCHED THEN UPDATE SET amount = b.amount\nWHEN NOT MATCHED THEN INSERT (id, amount) VALUES (b.id, b.amount)\n";

/// Runs `plan` on a project made of BASE with `edits` applied, expecting exit 2.
fn diagnose(name: &str, pipeline: &str, files: &[(&str, &str)], extra: &[&str]) {
    let mut all = vec![
        ("pipeline.yaml", pipeline),
        ("sql/big_orders.sql", BIG_ORDERS),
        ("sql/upsert.sql", UPSERT),
    ];
    all.extend_from_slice(files);
    let project = Project::new(&all);
    let before = project.listing();
    let mut args = vec!["plan", "pipeline.yaml"];
    args.extend_from_slice(extra);
    let out = project.sqlplan(&args);
    assert_eq!(
        out.code, 2,
        "{name}: expected exit 2\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.is_empty(),
        "{name}: nothing on stdout, got {}",
        out.stdout
    );
    assert!(
        !out.stderr.contains("panicked"),
        "{name}: panic\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains('\u{1b}'),
        "{name}: colour codes in\n{}",
        out.stderr
    );
    assert_eq!(
        project.listing(),
        before,
        "{name}: plan touched the project"
    );
    settings(Some(project.path()))
        .bind(|| insta::assert_snapshot!(format!("diag_{name}"), out.stderr));
}

fn with(pipeline_edit: (&str, &str)) -> String {
    assert!(
        BASE.contains(pipeline_edit.0),
        "edit target missing: {}",
        pipeline_edit.0
    );
    BASE.replacen(pipeline_edit.0, pipeline_edit.1, 1)
}

#[test]
fn the_base_pipeline_is_valid() {
    let project = Project::new(&[
        ("pipeline.yaml", BASE),
        ("sql/big_orders.sql", BIG_ORDERS),
        ("sql/upsert.sql", UPSERT),
    ]);
    let out = project.sqlplan(&["plan", "pipeline.yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn malformed_yaml() {
    diagnose(
        "malformed_yaml",
        &with(("  min_amount: 10\n", "  min_amount: [10\n")),
        &[],
        &[],
    );
}

#[test]
fn unknown_key_with_suggestion() {
    diagnose(
        "unknown_key",
        &with((
            "    sql: sql/upsert.sql",
            "    sql: sql/upsert.sql\n    materialise: true",
        )),
        &[],
        &[],
    );
}

#[test]
fn missing_sql_file() {
    diagnose(
        "missing_sql_file",
        &with(("sql/upsert.sql", "sql/upsret.sql")),
        &[],
        &[],
    );
}

#[test]
fn duplicate_stage_names() {
    diagnose(
        "duplicate_stage",
        &with(("  - name: upsert", "  - name: big_orders")),
        &[],
        &[],
    );
}

#[test]
fn undefined_template_variable() {
    diagnose(
        "undefined_variable",
        BASE,
        &[(
            "sql/big_orders.sql",
            "SELECT id, amount\nFROM orders\nWHERE amount > {{ min_amont }}\n",
        )],
        &[],
    );
}

#[test]
fn template_syntax_error() {
    diagnose("template_syntax", BASE, &[("sql/big_orders.sql", "SELECT id, amount\nFROM orders\n{% if min_amount %}\nWHERE amount > {{ min_amount }}\n")], &[]);
}

#[test]
fn error_inside_an_imported_macro_points_at_the_macro_file() {
    diagnose(
        "macro_error",
        BASE,
        &[
            ("sql/macros/m.sql", "{% macro threshold() %}\n{{ no_such_var }}\n{% endmacro %}\n"),
            ("sql/big_orders.sql", "{% import \"sql/macros/m.sql\" as m %}\nSELECT id, amount FROM orders WHERE amount > {{ m.threshold() }}\n"),
        ],
        &[],
    );
}

#[test]
fn sql_syntax_error() {
    diagnose(
        "sql_syntax",
        BASE,
        &[(
            "sql/big_orders.sql",
            "SELECT id, amount\nFROM orders\nWHERE amount > {{ min_amount }} AND AND ds = 'x'\n",
        )],
        &[],
    );
}

#[test]
fn sql_syntax_error_in_inline_query_points_into_the_yaml() {
    diagnose(
        "sql_syntax_inline",
        &with((
            "    sql: sql/big_orders.sql",
            "    query: |\n      SELECT id, amount\n      FROM orders WHERE WHERE amount > 1",
        )),
        &[],
        &[],
    );
}

#[test]
fn several_statements() {
    diagnose(
        "several_statements",
        BASE,
        &[(
            "sql/big_orders.sql",
            "SELECT id, amount FROM orders;\nSELECT 1;\n",
        )],
        &[],
    );
}

#[test]
fn statement_kind_not_allowed() {
    diagnose(
        "statement_not_allowed",
        BASE,
        &[("sql/big_orders.sql", "DROP TABLE orders\n")],
        &[],
    );
}

#[test]
fn unknown_table() {
    diagnose(
        "unknown_table",
        BASE,
        &[("sql/big_orders.sql", "SELECT id, amount\nFROM order\n")],
        &[],
    );
}

#[test]
fn unknown_column() {
    diagnose(
        "unknown_column",
        BASE,
        &[("sql/big_orders.sql", "SELECT id, amuont\nFROM orders\n")],
        &[],
    );
}

#[test]
fn unknown_column_in_a_templated_line() {
    diagnose(
        "unknown_column_templated",
        &with(("  min_amount: 10", "  min_amount: 10\n  columns: [id, amount, price]")),
        &[("sql/big_orders.sql", "SELECT\n{% for c in columns %}  {{ c }}{% if not loop.last %},{% endif %}\n{% endfor %}FROM orders\n")],
        &[],
    );
}

#[test]
fn type_error() {
    diagnose(
        "type_error",
        BASE,
        &[(
            "sql/big_orders.sql",
            "SELECT id, amount + DATE '2024-01-01' AS amount\nFROM orders\n",
        )],
        &[],
    );
}

#[test]
fn ambiguous_column() {
    diagnose(
        "ambiguous_column",
        BASE,
        &[(
            "sql/big_orders.sql",
            "SELECT id, amount\nFROM orders a JOIN orders b ON a.id = b.id\n",
        )],
        &[],
    );
}

#[test]
fn undeclared_var_on_the_command_line() {
    diagnose("undeclared_var", BASE, &[], &["--var", "min_amout=5"]);
}

#[test]
fn var_of_the_wrong_type() {
    diagnose("bad_var_value", BASE, &[], &["--var", "min_amount=lots"]);
}

#[test]
fn reading_a_relation_defined_later() {
    diagnose(
        "read_before_defined",
        &with(("  - name: big_orders\n    sql: sql/big_orders.sql\n  - name: upsert\n    sql: sql/upsert.sql\n", "  - name: upsert\n    sql: sql/upsert.sql\n  - name: big_orders\n    sql: sql/big_orders.sql\n")),
        &[],
        &[],
    );
}

#[test]
fn cycle_through_after() {
    diagnose(
        "cycle",
        &with((
            "    sql: sql/big_orders.sql\n",
            "    sql: sql/big_orders.sql\n    after: [upsert]\n",
        )),
        &[],
        &[],
    );
}

#[test]
fn after_naming_no_stage() {
    diagnose(
        "unknown_after",
        &with((
            "    sql: sql/upsert.sql\n",
            "    sql: sql/upsert.sql\n    after: [big_order]\n",
        )),
        &[],
        &[],
    );
}

#[test]
fn writing_an_undeclared_table() {
    diagnose(
        "unknown_target",
        BASE,
        &[(
            "sql/upsert.sql",
            &UPSERT.replace("MERGE INTO totals", "MERGE INTO total"),
        )],
        &[],
    );
}

#[test]
fn missing_table_without_schema() {
    diagnose("missing_table", &with(("    schema:\n      - {name: id, type: BIGINT, nullable: false}\n      - {name: amount, type: DOUBLE}\n      - {name: ds, type: STRING}\n    partition_by: [ds]\n", "")), &[], &[]);
}

#[test]
fn unknown_column_type() {
    diagnose(
        "unknown_type",
        &with((
            "{name: amount, type: DOUBLE}",
            "{name: amount, type: DUBBLE}",
        )),
        &[],
        &[],
    );
}

#[test]
fn scan_budget_exceeded() {
    diagnose(
        "scan_budget",
        &with((
            "    partition_by: [ds]\n",
            "    partition_by: [ds]\n    max_full_scans: 0\n",
        )),
        &[("sql/big_orders.sql", "SELECT id, amount FROM orders\n")],
        &[],
    );
}

#[test]
fn optimize_filter_on_a_data_column() {
    diagnose(
        "optimize_filter",
        &format!(
            "{BASE}  - name: compact\n    optimize: {{table: orders, where: \"amount > 1\"}}\n"
        ),
        &[],
        &[],
    );
}

#[test]
fn a_stage_with_two_bodies() {
    diagnose(
        "two_bodies",
        &with((
            "    sql: sql/upsert.sql\n",
            "    sql: sql/upsert.sql\n    query: SELECT 1\n",
        )),
        &[],
        &[],
    );
}
