//! Input a run cannot trust: vars read back from a table's log, a second run of the
//! same pipeline, another writer committing to a table during a run.

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use crate::common::{create_table, Project};

/// A state variable recorded on `marks`: the `mark` stage returns its value.
fn state_pipeline(state_type: &str, mark_sql: &str) -> String {
    format!(
        r#"name: marked
state: {{mark: {{table: marks, type: {state_type}, default: "2000-01-01"}}}}
tables:
  src: {{location: warehouse/src}}
  marks: {{location: warehouse/marks, schema: [{{name: id, type: BIGINT}}, {{name: mark, type: STRING}}]}}
stages:
  - name: write_marks
    query: "INSERT INTO marks SELECT id, {{{{ mark | literal }}}} FROM src"
  - name: mark
    query: "{mark_sql}"
    materialize: true
    state: mark
"#
    )
}

async fn state_project(state_type: &str, mark_sql: &str) -> Project {
    let p = Project::new(&[("pipeline.yaml", &state_pipeline(state_type, mark_sql))]);
    let schema = Schema::new(vec![Field::new("id", DataType::Int64, true)]);
    let batch = RecordBatch::try_new(
        std::sync::Arc::new(schema),
        vec![std::sync::Arc::new(Int64Array::from(vec![1, 2]))],
    )
    .unwrap();
    create_table(&p.warehouse().join("src"), batch, &[]).await;
    p
}

/// The log is input too: a value recorded while the var was a string (or written by
/// another tool) that is not of the type declared now stops `plan` and `run` with
/// exit 2, before any template renders it into SQL.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_value_read_back_from_the_log_is_checked_against_its_type() {
    let injected = "SELECT 'x'' OR true --' AS mark";
    let p = state_project("string", injected).await;
    let first = p.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let second = p.sqlplan(&["plan", "pipeline.yaml"]);
    assert_eq!(second.code, 0, "a string holds it: {}", second.stderr);
    assert!(
        second.stdout.contains("mark: string = \"x' OR true --\""),
        "{}",
        second.stdout
    );

    p.write("pipeline.yaml", &state_pipeline("timestamp", injected));
    let before = p.listing();
    for command in ["plan", "run"] {
        let out = p.sqlplan(&[command, "pipeline.yaml"]);
        assert_eq!(out.code, 2, "{command}: {}", out.stderr);
        assert!(out.stderr.contains("bad_state_value"), "{}", out.stderr);
        assert!(
            out.stderr
                .contains("state `mark` recorded on `marks` is not a timestamp"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(p.listing(), before, "nothing touched");
    // `--var` replaces the recorded value for one run.
    let fixed = p.sqlplan(&["plan", "pipeline.yaml", "--var", "mark=2024-01-01"]);
    assert_eq!(fixed.code, 0, "{}", fixed.stderr);
}

/// A `state:` stage that returns a value of another type fails the run: nothing is
/// recorded, and the next run reads the same state.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_stage_value_of_another_type_is_not_recorded() {
    let p = state_project("date", "SELECT CAST(max(id) AS VARCHAR) AS mark FROM src").await;
    let out = p.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("state stage `mark` returned `2` for `mark`: expected a date"),
        "{}",
        out.stderr
    );
    let plan = p.sqlplan(&["plan", "pipeline.yaml"]);
    assert!(
        plan.stdout.contains("mark: date = \"2000-01-01\""),
        "{}",
        plan.stdout
    );
}
