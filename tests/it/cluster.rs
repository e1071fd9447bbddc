//! `run --engine df://…`: a scheduler and two executors started as separate
//! processes on 127.0.0.1 (`sqlplan scheduler`, `sqlplan executor`), a generated
//! warehouse on an S3 server; both months' tables equal a local run's.

use std::process::{Child, Command, Stdio};

use super::common::{free_port, wait_for};
use super::s3::{ok, two_months, S3};

/// A scheduler and executors, stopped when dropped.
pub(super) struct Cluster {
    processes: Vec<Child>,
    engine: String,
}

impl Cluster {
    /// Kills process `i` (0 is the scheduler).
    fn kill(&mut self, i: usize) {
        let _ = self.processes[i].kill();
        let _ = self.processes[i].wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Cluster {
    fn start(s3: &S3, executors: usize) -> Cluster {
        Cluster::start_with(&s3.env(), executors, &[], &[])
    }

    /// A cluster for local warehouses (its executors run on this machine).
    pub(super) fn start_local(executors: usize) -> Cluster {
        Cluster::start_with(&[], executors, &[], &[])
    }

    pub(super) fn engine(&self) -> &str {
        &self.engine
    }

    /// With this environment and extra arguments for the scheduler and for each
    /// executor.
    fn start_with(
        env: &[(&'static str, String)],
        executors: usize,
        scheduler_args: &[&str],
        executor_args: &[&str],
    ) -> Cluster {
        let spawn = |args: &[String]| {
            Command::new(crate::common::bin())
                .args(args)
                .envs(env.iter().cloned())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a cluster process")
        };
        let scheduler = free_port();
        let mut cluster = Cluster {
            processes: vec![spawn(
                &[
                    vec!["scheduler".into(), "--port".into(), scheduler.to_string()],
                    scheduler_args.iter().map(|a| a.to_string()).collect(),
                ]
                .concat(),
            )],
            engine: format!("df://127.0.0.1:{scheduler}"),
        };
        wait_for(scheduler, "the scheduler");
        for _ in 0..executors {
            let (port, grpc) = (free_port(), free_port());
            let args: Vec<String> = [
                "executor".into(),
                "--scheduler".into(),
                format!("127.0.0.1:{scheduler}"),
                "--port".into(),
                port.to_string(),
                "--grpc-port".into(),
                grpc.to_string(),
                "--concurrent-tasks".into(),
                "2".into(),
            ]
            .into_iter()
            .chain(executor_args.iter().map(|a| a.to_string()))
            .collect();
            cluster.processes.push(spawn(&args));
            wait_for(port, "an executor");
            wait_for(grpc, "an executor");
        }
        cluster
    }
}

/// Two months of the summary pipeline on a 2-executor cluster over S3 give exactly
/// the tables a local run gives: the second month reads `summary` and
/// `latest_summary` with deletion vectors, applied by the executors. With a key
/// set limit of 0, `merge_latest` (a source not split by partition) finds its
/// rows by a shuffle join and `merge_summary` (split by month) by key sets.
#[tokio::test(flavor = "multi_thread")]
async fn the_summary_pipeline_on_a_cluster_equals_a_local_run() {
    let Some(s3) = S3::start() else { return };
    let cluster = Cluster::start(&s3, 2);
    let local = tempfile::tempdir().unwrap();
    let local_wh = local.path().join("wh").to_string_lossy().into_owned();
    let expected = two_months(&s3, &local_wh, &[]).await;
    let report = local.path().join("cluster-report.json");
    let actual = super::s3::two_months_with(
        &s3,
        "s3://warehouse/cluster-wh",
        &[
            "--engine",
            cluster.engine.as_str(),
            "--report",
            report.to_str().unwrap(),
        ],
        &[("SQLPLAN_KEY_SET_LIMIT", "0".into())],
    )
    .await;
    assert!(!expected[1]["summary"].is_empty());
    super::s3::same_months(&actual, &expected);
    let report = std::fs::read_to_string(report).unwrap();
    relations_stay_on_the_cluster(&report);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    for (stage, pass) in [
        ("merge_summary", "key sets"),
        ("merge_latest", "shuffle join"),
    ] {
        let metrics = &stage_of(&report, stage)["metrics"];
        assert_eq!(metrics["key_pass"], pass, "{stage}: {metrics}");
    }
}

/// The executors wrote the relations where they computed them (a checked one
/// with its check columns): the process received fewer rows than those relations
/// hold (it used to receive every relation's rows, then the MERGE sources).
fn relations_stay_on_the_cluster(report: &str) {
    let report: serde_json::Value = serde_json::from_str(report).unwrap();
    let received = report["received"]["rows"].as_u64().expect("rows received");
    let stage = |name: &str| stage_of(&report, name);
    let mut relation_rows = 0;
    // `incoming` has checks: only its failing rows come back (quarantined).
    assert!(
        stage("incoming")["metrics"]["checks"].is_object(),
        "{report}"
    );
    for name in [
        "incoming",
        "existing",
        "updated",
        "latest_candidates",
        "new_latest",
    ] {
        let metrics = &stage(name)["metrics"];
        assert!(
            metrics["spilled_bytes"].as_u64().unwrap() > 0,
            "{name}: {metrics}"
        );
        relation_rows += metrics["rows_out"].as_u64().unwrap();
    }
    eprintln!("received {received} rows; the relations hold {relation_rows}");
    assert!(
        received < relation_rows,
        "received {received} rows, the relations hold {relation_rows}"
    );
}

/// A stage's entry in a run report.
fn stage_of(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("stage {name}"))
        .clone()
}

/// One of two executors is killed while a cluster run of the summary pipeline is
/// in its middle. The run either completes on the other executor (Ballista runs
/// the lost tasks again) or fails naming what was lost; either way, running again
/// gives the tables of a local run, with the same number of commits (none
/// repeated), and the files lost tasks left behind are never read.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_loses_an_executor_completes_or_is_repaired_by_the_next() {
    let Some(s3) = S3::start() else { return };
    let mut cluster = Cluster::start_with(
        &s3.env(),
        2,
        &["--executor-timeout", "4"],
        &["--heartbeat", "1"],
    );
    let local = tempfile::tempdir().unwrap();
    let local_wh = local.path().join("wh").to_string_lossy().into_owned();
    let cluster_wh = "s3://warehouse/fault-wh";
    for wh in [local_wh.as_str(), cluster_wh] {
        ok(s3.sqlplan(&[
            "generate",
            "summary",
            "--warehouse",
            wh,
            "--accounts",
            "400",
            "--seed",
            "7",
        ]));
    }
    ok(s3.sqlplan(&[
        "run",
        "pipelines/summary.yaml",
        "--var",
        &format!("warehouse={local_wh}"),
    ]));

    let var = format!("warehouse={cluster_wh}");
    let engine = cluster.engine.clone();
    let run = [
        "run",
        "pipelines/summary.yaml",
        "--var",
        &var,
        "--engine",
        &engine,
    ];
    let mut child = Command::new(crate::common::bin())
        .args(run)
        .current_dir(super::common::repo())
        .envs(s3.env())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The executor dies as `updated` starts: its job's tasks are running on both
    // executors, and the MERGEs are still to come.
    let (mut stderr, mut killed) = (String::new(), false);
    for line in std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap())) {
        let line = line.unwrap();
        if line.contains("start  updated") {
            cluster.kill(1);
            killed = true;
        }
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(killed, "the run never reached `existing`:\n{stderr}");
    eprintln!("the run that lost an executor: {status}\n{stderr}");
    if !status.success() {
        assert!(
            stderr.contains("executor"),
            "a failed run names the lost executor:\n{stderr}"
        );
        ok(s3.sqlplan(&run));
    }
    for table in ["summary", "latest_summary", "rejected_records"] {
        assert_eq!(
            s3.rows(cluster_wh, table).await,
            s3.rows(&local_wh, table).await,
            "{table}\n{stderr}"
        );
        assert_eq!(
            s3.version(cluster_wh, table).await,
            s3.version(&local_wh, table).await,
            "commits to {table}"
        );
    }
}

/// Two DELETEs on a table with deletion vectors, the second reading the first's
/// vectors, an INSERT of what is left into a new partitioned table, and two
/// INSERT OVERWRITEs: of the months from `since` on (partitioned) and of a whole
/// unpartitioned table.
const PURGE: &str = r#"name: purge
vars:
  warehouse: ./warehouse
  since: "2000-01"
  modulus: {type: int, default: 3}
tables:
  by_month:
    location: "{{ warehouse }}/by_month"
    schema:
      - {name: rpt_as_of_mo, type: STRING}
      - {name: n, type: BIGINT}
    partition_by: [rpt_as_of_mo]
  total:
    location: "{{ warehouse }}/total"
    schema:
      - {name: n, type: BIGINT}
      - {name: since, type: STRING}
  summary:
    location: "{{ warehouse }}/summary"
    partition_by: [rpt_as_of_mo]
    deletion_vectors: true
  picked:
    location: "{{ warehouse }}/picked"
    schema:
      - {name: cons_acct_key, type: BIGINT, nullable: false}
      - {name: rpt_as_of_mo, type: STRING}
    partition_by: [rpt_as_of_mo]
stages:
  - name: some_keys
    query: DELETE FROM summary WHERE cons_acct_key % 7 = 3
  - name: half_a_month
    query: DELETE FROM summary WHERE rpt_as_of_mo = '2025-06' AND cons_acct_key % 2 = 0
  - name: pick
    query: |
      INSERT INTO picked
      SELECT cons_acct_key, rpt_as_of_mo FROM summary WHERE cons_acct_key % 5 = 1
  - name: recount
    query: |
      INSERT OVERWRITE by_month
      SELECT rpt_as_of_mo, COUNT(*) AS n FROM summary
      WHERE cons_acct_key % {{ modulus }} = 1 AND rpt_as_of_mo >= {{ since | literal }}
      GROUP BY rpt_as_of_mo
  - name: retotal
    query: |
      INSERT OVERWRITE total
      SELECT COUNT(*) AS n, {{ since | literal }} AS since FROM summary
      WHERE cons_acct_key % {{ modulus }} = 1
"#;

/// DELETE on a cluster tests its predicate on the executors and deletes by vector
/// exactly the rows a local run deletes; INSERT's new files are written by the
/// executors and committed here, with a local run's rows.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_and_an_insert_on_a_cluster_equal_a_local_run() {
    let Some(s3) = S3::start() else { return };
    let cluster = Cluster::start(&s3, 2);
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("purge.yaml"), PURGE).unwrap();
    let local_wh = project.path().join("wh").to_string_lossy().into_owned();
    let cluster_wh = "s3://warehouse/purge-wh";
    for wh in [local_wh.as_str(), cluster_wh] {
        ok(s3.sqlplan(&[
            "generate",
            "summary",
            "--warehouse",
            wh,
            "--accounts",
            "400",
            "--seed",
            "7",
        ]));
    }
    let run = |wh: &str, extra: &[&str]| {
        let var = format!("warehouse={wh}");
        let args: Vec<&str> = ["run", "purge.yaml", "--var", &var]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        ok(super::common::sqlplan_with_env(
            project.path(),
            &args,
            s3.env(),
        ))
    };
    // The second run replaces only the months from 2025-07 on in `by_month`
    // (counted another way), and all of `total`.
    let second = ["--var", "since=2025-07", "--var", "modulus=4"];
    run(&local_wh, &[]);
    run(&local_wh, &second);
    let reports = [1, 2].map(|n| project.path().join(format!("report-{n}.json")));
    for (report, extra) in reports.iter().zip([&[][..], &second[..]]) {
        let mut args = vec![
            "--engine",
            &cluster.engine,
            "--report",
            report.to_str().unwrap(),
        ];
        args.extend(extra);
        run(cluster_wh, &args);
    }
    let months = s3.rows(&local_wh, "by_month").await;
    assert!(
        months.iter().any(|r| r.contains("2025-06"))
            && months.iter().any(|r| r.contains("2025-07")),
        "both runs' months are in by_month: {months:?}"
    );
    for table in ["summary", "picked", "by_month", "total"] {
        let expected = s3.rows(&local_wh, table).await;
        assert!(!expected.is_empty(), "{table}");
        assert_eq!(s3.rows(cluster_wh, table).await, expected, "{table}");
    }
    let [first, second] = reports.map(|r| {
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(r).unwrap()).unwrap()
    });
    let stage = |report: &serde_json::Value, name: &str| stage_of(report, name)["metrics"].clone();
    let positive = |report: &serde_json::Value, name: &str, metric: &str| {
        let metrics = stage(report, name);
        assert!(metrics[metric].as_u64() > Some(0), "{name}: {metrics}");
    };
    positive(&first, "pick", "files_added");
    positive(&first, "some_keys", "files_with_vectors");
    positive(&first, "half_a_month", "files_with_vectors");
    // The second run replaces the first's files: some months of `by_month`,
    // all of `total`.
    positive(&second, "recount", "files_removed");
    positive(&second, "retotal", "files_removed");
}

/// An engine that is not `df://HOST:PORT` is refused before anything runs (exit 2).
#[test]
fn an_engine_that_is_not_df_is_refused() {
    let out = super::common::sqlplan_in(
        &super::common::repo(),
        &[
            "run",
            "pipelines/summary.yaml",
            "--var",
            "warehouse=/nonexistent/wh",
            "--engine",
            "http://127.0.0.1:50050",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("expected df://HOST:PORT"),
        "{}",
        out.stderr
    );
}

/// `sqlplan test --engine`: the example pipeline's fixtures pass on a cluster,
/// whose executors then run its copy-on-write MERGE and its INSERT OVERWRITE.
#[test]
fn the_example_fixtures_pass_on_a_cluster() {
    let cluster = Cluster::start_local(2);
    let out = super::common::sqlplan_in(
        &super::common::repo(),
        &[
            "test",
            "pipelines/examples/orders.yaml",
            "--engine",
            cluster.engine(),
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("3 passed, 0 failed"), "{}", out.stdout);
}
