//! Input a run cannot trust: vars read back from a table's log, a second run of the
//! same pipeline, another writer committing to a table during a run.

use crate::common::{create_table, id_text, ids, Project};

/// A state variable recorded on `marks`: the `mark` stage returns its value.
fn state_pipeline(state_type: &str, mark_sql: &str) -> String {
    let marks_schema = "[{name: id, type: BIGINT}, {name: mark, type: STRING}]";
    format!(
        r#"name: marked
state: {{mark: {{table: marks, type: {state_type}, default: "2000-01-01"}}}}
tables:
  src: {{location: warehouse/src}}
  marks: {{location: warehouse/marks, schema: {marks_schema}}}
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
    create_table(&p.warehouse().join("src"), ids(&[1, 2]), &[]).await;
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

const TWO_STAGES: &str = r#"name: two
state: {mark: {table: b, type: int, default: 0}}
tables:
  src: {location: warehouse/src}
  a: {location: warehouse/a, schema: [{name: id, type: BIGINT}, {name: v, type: STRING}]}
  b: {location: warehouse/b, schema: [{name: id, type: BIGINT}, {name: v, type: STRING}]}
stages:
  - name: write_a
    query: "INSERT INTO a SELECT id, 'run' FROM src"
  - name: write_b
    query: "INSERT INTO b SELECT id, 'run' FROM src"
    after: [write_a]
  - name: mark
    query: SELECT max(id) AS mark FROM src
    materialize: true
    state: mark
"#;

async fn two_stages() -> Project {
    let p = Project::new(&[("pipeline.yaml", TWO_STAGES)]);
    create_table(&p.warehouse().join("src"), ids(&[1, 2]), &[]).await;
    p
}

/// A `sqlplan run` process held at a failpoint (`<point>=pause`) until released.
struct Paused {
    child: std::process::Child,
    stderr: std::io::BufReader<std::process::ChildStderr>,
}

impl Paused {
    fn start(project: &Project, point: &str) -> Paused {
        Paused::start_with(project, point, &[])
    }

    /// With this environment added (an S3 server's, a lease length).
    fn start_with(project: &Project, point: &str, env: &[(&str, String)]) -> Paused {
        use std::io::BufRead;
        let mut child = std::process::Command::new(crate::common::bin())
            .args(["run", "pipeline.yaml"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(project.path())
            .env("NO_COLOR", "1")
            .env("SQLPLAN_FAILPOINT", format!("{point}=pause"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = stderr.read_line(&mut line).unwrap();
            assert!(n > 0, "the run ended before {point}: {seen}");
            seen.push_str(&line);
            if line.contains(&format!("failpoint {point}: paused")) {
                break;
            }
        }
        Paused { child, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the run go on and waits for it: (exit code, the rest of its stderr).
    fn release(mut self) -> (i32, String) {
        use std::io::{Read, Write};
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"\n").unwrap();
        drop(stdin);
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), rest)
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn runs(p: &Project) -> Vec<serde_json::Value> {
    let out = p.sqlplan(&["runs", "pipeline.yaml", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// Two processes: the second refuses at once, naming the first, and writes nothing;
/// the ledger shows the first as running. Killed, the first blocks nobody: the next
/// run resumes it, and the ledger shows both attempts.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_refuses_while_one_lives_and_a_killed_run_is_resumed() {
    let p = two_stages().await;
    let first = Paused::start(&p, "before:write_b");
    let second = p.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(second.code, 1, "{}", second.stderr);
    assert!(
        second.stderr.contains("run_in_progress"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains(&format!(
            "another run of pipeline `two` is in progress on this warehouse (process {} since",
            first.pid()
        )),
        "{}",
        second.stderr
    );
    let ledger = runs(&p);
    assert_eq!(ledger.len(), 1, "the refused run is not a run: {ledger:#?}");
    assert_eq!(ledger[0]["status"], "running");
    assert_eq!(ledger[0]["run"], 1);

    first.kill();
    let ledger = runs(&p);
    assert_eq!(ledger[0]["status"], "interrupted");

    let third = p.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert!(
        third.stdout.contains("run 1 of two (resumed)"),
        "{}",
        third.stdout
    );
    let ledger = runs(&p);
    assert_eq!(ledger.len(), 2, "{ledger:#?}");
    let (resumed, killed) = (&ledger[0], &ledger[1]);
    assert_eq!(resumed["status"], "succeeded");
    assert_eq!(resumed["resumed"], true);
    assert_eq!(resumed["run"], 1);
    assert_eq!(killed["status"], "interrupted");
    let stage = |name: &str| {
        resumed["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(stage("write_a")["status"], "committed");
    assert_eq!(stage("write_a")["version"], 1);
    assert_eq!(stage("write_b")["status"], "succeeded");
    assert_eq!(stage("write_b")["version"], 1);
    // What the run read: every table's version at its start (a, b just created).
    assert_eq!(
        resumed["read_versions"],
        serde_json::json!({"a": 0, "b": 0, "src": 1})
    );
    assert_eq!(resumed["read_versions"], killed["read_versions"]);
    assert_eq!(resumed["plan_hash"], killed["plan_hash"]);

    let text = p.sqlplan(&["runs", "pipeline.yaml"]);
    assert!(text.stdout.contains("interrupted"), "{}", text.stdout);
    assert!(
        text.stdout.contains("the next run resumes it"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("1 committed, 2 succeeded"),
        "{}",
        text.stdout
    );
}

/// On an S3 warehouse, two processes in two project folders (no lock file in
/// common): the second is refused at once, naming the first, and writes
/// nothing. Killed, the first holds its lease until it expires (2 s here);
/// until then a run is refused, after it the next run takes the lease over and
/// resumes the killed run.
#[tokio::test(flavor = "multi_thread")]
async fn on_s3_a_lease_lets_one_run_of_two_processes_and_a_killed_runs_lease_expires() {
    let Some(s3) = crate::s3::S3::start() else {
        return;
    };
    let pipeline = TWO_STAGES
        .replace("warehouse/", "s3://warehouse/lease-wh/")
        .replace("  src: {location: s3://warehouse/lease-wh/src}\n", "")
        .replace(
            "FROM src",
            "FROM (SELECT CAST(1 AS BIGINT) AS id UNION ALL SELECT CAST(2 AS BIGINT))",
        );
    let (one, two) = (
        Project::new(&[("pipeline.yaml", &pipeline)]),
        Project::new(&[("pipeline.yaml", &pipeline)]),
    );
    let mut env = s3.env();
    env.push(("SQLPLAN_LEASE_SECONDS", "2".into()));
    let run = |p: &Project| {
        crate::common::sqlplan_with_env(p.path(), &["run", "pipeline.yaml"], env.clone())
    };
    let first = Paused::start_with(&one, "before:write_b", &env);
    // The second run goes through a proxy that records its requests.
    let proxy =
        crate::faults::FaultyStore::start(&s3.endpoint, std::time::Duration::from_secs(300));
    let proxied = proxy.in_front(&env);
    let second = crate::common::sqlplan_with_env(two.path(), &["run", "pipeline.yaml"], proxied);
    assert_eq!(second.code, 1, "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!(
            "another run of pipeline `two` is in progress on this warehouse (process {} on",
            first.pid()
        )),
        "{}",
        second.stderr
    );
    assert!(
        second
            .stderr
            .contains("holds its lease until the lease expires"),
        "{}",
        second.stderr
    );
    assert_eq!(
        s3.version("s3://warehouse/lease-wh", "b").await,
        Some(0),
        "nothing written by the refused run"
    );
    // Refused after planning, which reads the tables' logs: it read no data file
    // and wrote nothing but its attempt at the lease.
    let seen = proxy.seen();
    assert!(seen.iter().any(|r| r.contains("two.lease")), "{seen:#?}");
    for request in &seen {
        let read_log = request.starts_with("GET ")
            && (request.contains("_delta_log") || request.contains("list-type"));
        let lease = request.contains("/_sqlplan/two.lease");
        assert!(read_log || lease, "the refused run asked for {request}");
    }
    // `runs` from the other folder tells the run's state by its lease.
    let status = || {
        let out = crate::common::sqlplan_with_env(
            two.path(),
            &["runs", "pipeline.yaml", "--format", "json"],
            env.clone(),
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        runs[0]["status"].as_str().unwrap().to_string()
    };
    assert_eq!(status(), "running");
    first.kill();
    // Seen from any host, a killed run holds its lease until it expires.
    assert_eq!(status(), "running", "its lease has not expired");
    let refused = run(&two);
    assert_eq!(
        refused.code, 1,
        "the killed run's lease still lives: {}",
        refused.stderr
    );
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(status(), "interrupted", "its lease expired");
    let third = run(&two);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert!(
        third.stdout.contains("run 1 of two (resumed)"),
        "{}",
        third.stdout
    );
    assert_eq!(
        s3.rows("s3://warehouse/lease-wh", "b").await,
        ["| 1  | run |", "| 2  | run |"]
    );
}

/// Another writer appends to `b` after the run wrote its data files and before it
/// commits them: two blind appends do not conflict, so Delta's conflict check lets
/// the run's commit through at the next version, and both writes are kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_append_during_an_insert_is_retried_past() {
    let p = two_stages().await;
    let first = Paused::start(&p, "commit:write_b");
    foreign_append(&p.warehouse().join("b"), 100).await;
    let (code, stderr) = first.release();
    assert_eq!(code, 0, "{stderr}");
    let rows =
        crate::common::read_table(&p.warehouse().join("b"), "SELECT * FROM t ORDER BY id").await;
    assert_eq!(rows, ["1,run", "2,run", "100,foreign"]);
    assert_eq!(runs(&p)[0]["status"], "succeeded");
}

async fn foreign_append(table: &std::path::Path, id: i64) {
    let batch = id_text(&[id], "v", &["foreign"]);
    let url = url::Url::from_directory_path(table).unwrap();
    let t = deltalake::open_table(url).await.unwrap();
    t.write(vec![batch])
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .await
        .unwrap();
}

const UPSERT: &str = r#"name: upsert
tables:
  src: {location: warehouse/src}
  t: {location: warehouse/t}
stages:
  - name: upsert
    query: |
      MERGE INTO t USING src ON t.id = src.id
      WHEN MATCHED THEN UPDATE SET v = 'run'
      WHEN NOT MATCHED THEN INSERT (id, v) VALUES (src.id, 'run')
"#;

/// Another writer deletes the rows the run's MERGE rewrites, between the MERGE's
/// read and its commit: the commits conflict (both remove the same file), Delta's
/// check refuses the run's commit, and the run fails clean: nothing of its MERGE is
/// in the table, the other writer's delete stands, and the message says what
/// happened and what to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_conflicting_foreign_write_during_a_merge_fails_the_run_clean() {
    conflicting_foreign_write(UPSERT, 1).await;
}

/// The same with deletion vectors: sqlplan's own MERGE commit (a vector on the file
/// the other writer removed) goes through the same check. The run turns vectors on
/// first (one commit), so the MERGE reads version 2.
#[tokio::test(flavor = "multi_thread")]
async fn a_conflicting_foreign_write_during_a_merge_with_vectors_fails_the_run_clean() {
    let pipeline = UPSERT.replace(
        "t: {location: warehouse/t}",
        "t: {location: warehouse/t, deletion_vectors: true}",
    );
    conflicting_foreign_write(&pipeline, 2).await;
}

async fn conflicting_foreign_write(pipeline: &str, read: i64) {
    let p = Project::new(&[("pipeline.yaml", pipeline)]);
    create_table(
        &p.warehouse().join("src"),
        crate::common::id_v_ds(&[1, 3], &["s", "s"], &["x", "x"]),
        &[],
    )
    .await;
    let t = p.warehouse().join("t");
    create_table(&t, id_text(&[1, 2], "v", &["old", "old"]), &[]).await;
    let first = Paused::start(&p, "commit:upsert");
    {
        let url = url::Url::from_directory_path(&t).unwrap();
        let table = deltalake::open_table(url).await.unwrap();
        table.delete().with_predicate("id = 2").await.unwrap();
    }
    let (code, stderr) = first.release();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("FAILED upsert after"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another writer committed to `t` after this stage read version {read} (version {}: DELETE by delta-rs",
            read + 1
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("Delta's conflict check refused this stage's commit"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Nothing of the stage was committed"),
        "{stderr}"
    );
    let rows = crate::common::read_table(&t, "SELECT * FROM t ORDER BY id").await;
    assert_eq!(
        rows,
        ["1,old"],
        "the other writer's delete stands, the MERGE is not in"
    );
    let ledger = runs(&p);
    assert_eq!(ledger[0]["status"], "failed");
    assert!(
        ledger[0]["error"]
            .as_str()
            .unwrap()
            .contains("another writer"),
        "{ledger:#?}"
    );
    // Nothing of the run committed: the next run starts afresh on the table as it is.
    let again = p.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let rows = crate::common::read_table(&t, "SELECT * FROM t ORDER BY id").await;
    assert_eq!(rows, ["1,run", "3,run"]);
}

/// `--abandon` restores the tables the unfinished run wrote to their start versions;
/// when another writer committed to one of them since, that restore would undo its
/// work too, so it is refused and nothing is restored.
#[tokio::test(flavor = "multi_thread")]
async fn abandon_refuses_to_undo_another_writers_commit() {
    let p = two_stages().await;
    let crashed = std::process::Command::new(crate::common::bin())
        .args(["run", "pipeline.yaml"])
        .current_dir(p.path())
        .env("SQLPLAN_FAILPOINT", "after:write_a")
        .output()
        .unwrap();
    assert_ne!(crashed.status.code(), Some(0));
    foreign_append(&p.warehouse().join("a"), 100).await;
    let out = p.sqlplan(&["run", "pipeline.yaml", "--abandon"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stdout.is_empty(), "no stage ran: {}", out.stdout);
    let message = out.stderr.replace('\n', " ");
    assert!(
        message.contains("--abandon would restore `a` to version 0"),
        "{}",
        out.stderr
    );
    assert!(message.contains("nothing was restored"), "{}", out.stderr);
    let rows =
        crate::common::read_table(&p.warehouse().join("a"), "SELECT * FROM t ORDER BY id").await;
    assert_eq!(rows, ["1,run", "2,run", "100,foreign"]);
    // Resuming is still possible: run 1 finishes (b is written once).
    let resumed = p.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(resumed.stdout.contains("(resumed)"), "{}", resumed.stdout);
}

const VACUUM: &str = r#"name: keep
tables:
  src: {location: warehouse/src}
  a: {location: warehouse/a, schema: [{name: id, type: BIGINT}]}
  b: {location: warehouse/b, schema: [{name: n, type: BIGINT}]}
stages:
  - name: snap
    # sum reads the data files (count(*) would be answered from the log's statistics)
    query: SELECT coalesce(sum(id), 0) AS n FROM a
    materialize: true
  - name: overwrite_a
    query: INSERT OVERWRITE a SELECT id FROM src
    after: [snap]
  - name: clean
    vacuum: {table: a, retain_hours: 0, below_delta_default: true}
    after: [overwrite_a]
  - name: write_b
    query: INSERT INTO b SELECT n FROM snap
    after: [clean]
"#;

/// A vacuum inside a run keeps what a resumption needs: here `snap` reads `a` as of
/// the run's start, the run overwrites `a`, vacuums it with no retention, and dies.
/// The resumed run computes `snap` again from `a` at its start version, whose files
/// the vacuum would have removed; it raises its retention to keep them instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_vacuum_keeps_the_files_an_unfinished_run_reads() {
    let p = Project::new(&[("pipeline.yaml", VACUUM)]);
    create_table(&p.warehouse().join("src"), ids(&[1, 2, 3]), &[]).await;
    let first = p.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let crashed = std::process::Command::new(crate::common::bin())
        .args(["run", "pipeline.yaml"])
        .current_dir(p.path())
        .env("SQLPLAN_FAILPOINT", "after:clean")
        .output()
        .unwrap();
    assert_ne!(crashed.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert!(
        stderr.contains("vacuum `a`: retention raised from 0 h to")
            && stderr.contains("min to keep version 1: this run (run 2) started from it"),
        "{stderr}"
    );
    let resumed = p.sqlplan(&["run", "pipeline.yaml"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(
        resumed.stdout.contains("run 2 of keep (resumed)"),
        "{}",
        resumed.stdout
    );
    // Run 1 saw an empty `a`, run 2 the rows 1, 2, 3 run 1 wrote. Without the raised
    // retention the resumption fails: the files of `a` at version 1 are gone.
    let rows =
        crate::common::read_table(&p.warehouse().join("b"), "SELECT * FROM t ORDER BY n").await;
    assert_eq!(rows, ["0", "6"]);
}
