//! Tables on object storage: an S3-compatible server (moto's server mode, from the
//! package registry: `pip install "moto[server]"`) started on 127.0.0.1 by the test.
//! Where python3 cannot import moto, the tests skip, unless SQLPLAN_REQUIRE_MOTO is
//! set (as in CI).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::common::{free_port, repo, sqlplan_with_env, wait_for, Output};

/// An S3 server for one test, stopped when dropped.
pub struct S3 {
    child: Child,
    pub endpoint: String,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3 {
    /// Starts moto's server with bucket `warehouse`, or None (skipped) without moto.
    pub fn start() -> Option<S3> {
        let probe = Command::new("python3")
            .args(["-c", "import moto.server, boto3"])
            .output();
        if !probe.as_ref().is_ok_and(|o| o.status.success()) {
            assert!(
                std::env::var_os("SQLPLAN_REQUIRE_MOTO").is_none(),
                "python3 with moto's server is required here (pip install \"moto[server]\")"
            );
            eprintln!("skipped: python3 cannot import moto.server");
            return None;
        }
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let s3 = S3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        wait_for(port, "moto");
        let create = format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\
             .create_bucket(Bucket='warehouse')",
            s3.endpoint
        );
        let made = Command::new("python3")
            .args(["-c", &create])
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        Some(s3)
    }

    /// The environment the AWS tools (and sqlplan) read.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// `sqlplan ARGS` from the repository root with this server's environment.
    pub fn sqlplan(&self, args: &[&str]) -> Output {
        sqlplan_with_env(&repo(), args, self.env())
    }

    /// The newest version of `table` under `warehouse`: how many commits it has had.
    pub async fn version(&self, warehouse: &str, table: &str) -> Option<u64> {
        self.open(warehouse, table).await.version()
    }

    async fn open(&self, warehouse: &str, table: &str) -> deltalake::DeltaTable {
        deltalake::aws::register_handlers(None);
        let location = if warehouse.starts_with("s3://") {
            url::Url::parse(&format!("{warehouse}/{table}/")).unwrap()
        } else {
            url::Url::from_directory_path(Path::new(warehouse).join(table)).unwrap()
        };
        let options: std::collections::HashMap<String, String> = self
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        deltalake::DeltaTableBuilder::from_url(location)
            .unwrap()
            .with_storage_options(options)
            .load()
            .await
            .unwrap()
    }

    /// Each commit of `table` under `warehouse`, oldest first: its version and its
    /// commit metadata (values as JSON text, strings unquoted).
    pub async fn history(
        &self,
        warehouse: &str,
        table: &str,
    ) -> Vec<(u64, BTreeMap<String, String>)> {
        use futures::TryStreamExt;
        let table = self.open(warehouse, table).await;
        let newest = table.version().unwrap();
        let infos: Vec<_> = table.history(None).try_collect().await.unwrap();
        infos
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let info = c
                    .info
                    .into_iter()
                    .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                    .collect();
                (newest - i as u64, info)
            })
            .rev()
            .collect()
    }

    /// Every row of `table` under `warehouse` (a local folder or an s3:// URL), all
    /// columns, sorted; read by a fresh delta-rs load.
    pub async fn rows(&self, warehouse: &str, table: &str) -> Vec<String> {
        let table = self.open(warehouse, table).await;
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        let batches = ctx
            .sql("SELECT * FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut rows: Vec<String> =
            datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string()
                .lines()
                .filter(|l| l.starts_with('|'))
                .skip(1)
                .map(str::to_string)
                .collect();
        rows.sort();
        rows
    }
}

pub fn ok(out: Output) -> String {
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    out.stdout
}

/// The summary pipeline's month, then the next month's batch and its run, on a
/// warehouse: what every table holds after each run.
pub async fn two_months(
    s3: &S3,
    warehouse: &str,
    run_extra: &[&str],
) -> Vec<BTreeMap<String, Vec<String>>> {
    two_months_with(s3, warehouse, run_extra, &[]).await
}

/// `two_months`, each run with `run_env` added to the server's environment.
pub async fn two_months_with(
    s3: &S3,
    warehouse: &str,
    run_extra: &[&str],
    run_env: &[(&'static str, String)],
) -> Vec<BTreeMap<String, Vec<String>>> {
    let var = format!("warehouse={warehouse}");
    ok(s3.sqlplan(&[
        "generate",
        "summary",
        "--warehouse",
        warehouse,
        "--accounts",
        "400",
        "--seed",
        "7",
        "--bad-records",
        "3",
    ]));
    let mut states = Vec::new();
    for month in 0..2 {
        if month > 0 {
            ok(s3.sqlplan(&[
                "generate",
                "summary",
                "--warehouse",
                warehouse,
                "--next-batch",
            ]));
        }
        let mut args = vec!["run", "pipelines/summary.yaml", "--var", &var];
        args.extend_from_slice(run_extra);
        let env = s3.env().into_iter().chain(run_env.iter().cloned());
        ok(sqlplan_with_env(&repo(), &args, env));
        let mut tables = BTreeMap::new();
        for t in ["summary", "latest_summary", "rejected_records"] {
            tables.insert(t.to_string(), s3.rows(warehouse, t).await);
        }
        states.push(tables);
    }
    states
}

/// `generate`, `plan` and `run` on an `s3://` warehouse give exactly the tables a
/// local warehouse gets, the second month reading tables with deletion vectors.
#[tokio::test(flavor = "multi_thread")]
async fn the_summary_pipeline_on_s3_equals_a_local_run() {
    let Some(s3) = S3::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let local_wh = local.path().join("wh").to_string_lossy().into_owned();
    let expected = two_months(&s3, &local_wh, &[]).await;
    let actual = two_months(&s3, "s3://warehouse/summary-wh", &[]).await;
    assert!(!expected[1]["summary"].is_empty());
    same_months(&actual, &expected);

    let plan = ok(s3.sqlplan(&[
        "plan",
        "pipelines/summary.yaml",
        "--var",
        "warehouse=s3://warehouse/summary-wh",
    ]));
    assert!(plan.contains("s3://warehouse/summary-wh/summary"), "{plan}");
}

/// Two pipelines committing to one S3 table at once, several times: conditional put
/// lets one commit take each version and the other retry on the next, so none is
/// lost (an unsafe rename would let one overwrite the other's commit).
#[tokio::test(flavor = "multi_thread")]
async fn two_writers_on_s3_lose_no_commit() {
    let Some(s3) = S3::start() else { return };
    let pipeline = |name: &str| {
        format!(
            "name: {name}\nvars: {{n: 0}}\ntables:\n  t: {{location: s3://warehouse/two/t, schema: [{{name: id, type: BIGINT}}, {{name: tag, type: STRING}}]}}\nstages:\n  - name: add\n    query: \"INSERT INTO t SELECT {{{{ n }}}} AS id, '{name}' AS tag\"\n"
        )
    };
    let (a, b) = (pipeline("a"), pipeline("b"));
    let project = super::common::Project::new(&[("a.yaml", a.as_str()), ("b.yaml", b.as_str())]);
    let run = |file: &str, n: usize| {
        Command::new(crate::common::bin())
            .args(["run", file, "--var", &format!("n={n}")])
            .current_dir(project.path())
            .envs(s3.env())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The first run creates the table; then both pipelines write at once.
    let first = run("a.yaml", 0).wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for n in 1..=3 {
        let writers = [run("a.yaml", n), run("b.yaml", n)];
        for w in writers {
            let out = w.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let rows = s3.rows("s3://warehouse/two", "t").await;
    assert_eq!(rows.len(), 7, "{rows:?}");
}

/// Each month's tables equal; a difference is shown as the rows only one side has
/// (the first few, shortened), not as two dumps of every row.
pub fn same_months(
    actual: &[BTreeMap<String, Vec<String>>],
    expected: &[BTreeMap<String, Vec<String>>],
) {
    assert_eq!(actual.len(), expected.len(), "months");
    for (month, (a, e)) in actual.iter().zip(expected).enumerate() {
        for (table, rows) in e {
            let got = &a[table];
            if got == rows {
                continue;
            }
            // Rows counted, so a repeated row shows as well as a missing one.
            let only = |x: &Vec<String>, y: &Vec<String>| -> Vec<String> {
                let mut left: BTreeMap<&String, i64> = BTreeMap::new();
                for r in y {
                    *left.entry(r).or_default() += 1;
                }
                x.iter()
                    .filter(|r| {
                        let n = left.entry(r).or_default();
                        *n -= 1;
                        *n < 0
                    })
                    .take(3)
                    .map(|r| r.chars().take(240).collect())
                    .collect()
            };
            panic!(
                "month {month}, `{table}`: {} rows, expected {}\nonly in the actual:\n{}\nonly in the expected:\n{}",
                got.len(),
                rows.len(),
                only(got, rows).join("\n"),
                only(rows, got).join("\n"),
            );
        }
    }
}
