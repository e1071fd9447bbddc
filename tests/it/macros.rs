//! The shared SQL macros (`sql/macros/`), rendered with minijinja and evaluated by
//! DataFusion: what they compute, including edges.

use crate::common::repo;

/// Renders `expr` (a template using the macros) and evaluates it as a SQL value.
async fn eval(expr: &str) -> String {
    let root = repo();
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_filter("literal", sqlplan::literal);
    env.set_loader(move |name: &str| Ok(std::fs::read_to_string(root.join(name)).ok()));
    let template = format!(
        "{{% import \"sql/macros/months.sql\" as months %}}{{% import \"sql/macros/history.sql\" as history %}}SELECT CAST({expr} AS VARCHAR) AS v"
    );
    let sql = env.render_str(&template, ()).unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    let batches = ctx
        .sql(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap();
    datafusion::arrow::util::display::array_value_to_string(batches[0].column(0), 0).unwrap()
}

#[tokio::test]
async fn month_arithmetic() {
    assert_eq!(
        eval("{{ months.diff(\"'2026-01'\", \"'2025-11'\") }}").await,
        "2"
    );
    assert_eq!(
        eval("{{ months.diff(\"'2025-11'\", \"'2026-01'\") }}").await,
        "-2"
    );
    assert_eq!(eval("{{ months.add(\"'2025-11'\", 2) }}").await, "2026-01");
    assert_eq!(
        eval("{{ months.add(\"'2026-01'\", -13) }}").await,
        "2024-12"
    );
    assert_eq!(eval("{{ months.add(\"'2025-12'\", 0) }}").await, "2025-12");
}

#[tokio::test]
async fn history_arrays() {
    assert_eq!(
        eval("{{ history.start(100, 4, 'INT') }}").await,
        "[100, , , ]"
    );
    // Worked example 2: Dec [5000, 4500], Mar after a gap of 2 → [5400, N, N, 5000, 4500].
    let shift = "{{ history.shift(5400, 2, 'make_array(5000, 4500, NULL, NULL, NULL, NULL)', \
                 6, 'INT') }}";
    assert_eq!(eval(shift).await, "[5400, , , 5000, 4500, ]");
    // Values never move past the last element.
    assert_eq!(
        eval("{{ history.shift(9, 0, 'make_array(1, 2, 3)', 3, 'INT') }}").await,
        "[9, 1, 2]"
    );
    assert_eq!(
        eval("{{ history.shift(9, 5, 'make_array(1, 2, 3)', 3, 'INT') }}").await,
        "[9, , ]"
    );
    assert_eq!(
        eval("{{ history.shift(9, 1, 'CAST(NULL AS INT[])', 3, 'INT') }}").await,
        "[9, , ]"
    );
    assert_eq!(
        eval("{{ history.set('make_array(1, 2, 3)', 0, 7, 3, 'INT') }}").await,
        "[7, 2, 3]"
    );
    assert_eq!(
        eval("{{ history.set('make_array(1, 2, 3)', 2, 'NULL', 3, 'INT') }}").await,
        "[1, 2, ]"
    );
    assert_eq!(
        eval("{{ history.set('make_array(1, 2, 3)', 3, 7, 3, 'INT') }}").await,
        "[1, 2, 3]"
    );
    assert_eq!(
        eval("{{ history.grid(\"make_array('0', NULL, '1')\") }}").await,
        "0?1"
    );
}
