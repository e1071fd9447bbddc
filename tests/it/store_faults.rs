//! Runs on an S3 warehouse behind a store that misbehaves (`faults::FaultyStore`):
//! what is survived, what fails a run, and that nothing is lost or written twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::common::{repo, sqlplan_with_env, Output};
use super::faults::{Fault, FaultyStore, Scripted};
use super::s3::{ok, S3};

/// The server's environment with the endpoint pointed at the proxy.
fn through(s3: &S3, proxy: &FaultyStore) -> Vec<(&'static str, String)> {
    s3.env()
        .into_iter()
        .map(|(k, v)| match k {
            "AWS_ENDPOINT_URL" => (k, proxy.endpoint.clone()),
            _ => (k, v),
        })
        .collect()
}

pub fn generate(s3: &S3, warehouse: &str, next: bool) {
    let mut args = vec!["generate", "summary", "--warehouse", warehouse];
    if next {
        args.push("--next-batch");
    } else {
        args.extend(["--accounts", "400", "--seed", "7", "--bad-records", "3"]);
    }
    ok(s3.sqlplan(&args));
}

pub fn run(env: &[(&'static str, String)], warehouse: &str) -> Output {
    let var = format!("warehouse={warehouse}");
    sqlplan_with_env(
        &repo(),
        &["run", "pipelines/summary.yaml", "--var", &var],
        env.iter().cloned(),
    )
}

pub const TABLES: [&str; 3] = ["summary", "latest_summary", "rejected_records"];

pub async fn tables(s3: &S3, warehouse: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for t in TABLES {
        out.insert(t.to_string(), s3.rows(warehouse, t).await);
    }
    out
}

/// Every table's commits made by a stage of a run, each at most once: a commit
/// retried after its answer was lost must not land twice.
pub async fn no_commit_twice(s3: &S3, warehouse: &str) -> usize {
    let mut commits = 0;
    for t in TABLES.iter().chain(&["_sqlplan/runs"]) {
        let mut seen = BTreeSet::new();
        for (version, info) in s3.history(warehouse, t).await {
            let key = (
                info.get("sqlplan.stage").cloned(),
                info.get("sqlplan.run").cloned(),
                info.get("sqlplan.ledger").cloned(),
            );
            if key == (None, None, None) {
                continue;
            }
            assert!(
                seen.insert(key.clone()),
                "`{t}` version {version} repeats the commit {key:?}"
            );
            commits += 1;
        }
    }
    commits
}

/// The ledger's attempts (newest first), as `sqlplan runs` reads them.
pub fn ledger(s3: &S3, warehouse: &str) -> Vec<serde_json::Value> {
    let var = format!("warehouse={warehouse}");
    let out = ok(s3.sqlplan(&[
        "runs",
        "pipelines/summary.yaml",
        "--var",
        &var,
        "--format",
        "json",
    ]));
    serde_json::from_str(&out).unwrap()
}

/// One month through a proxy whose script loses the answer of each table's first
/// commit and of a ledger commit, throttles and fails reads of the logs, cuts a
/// data file's upload and a data file's download: the run succeeds, the tables
/// equal an undisturbed run's, and no commit is in a log twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_survives_lost_answers_throttling_and_cut_connections() {
    let Some(s3) = S3::start() else { return };
    let proxy = FaultyStore::start(&s3.endpoint, Duration::from_secs(600));
    let (calm, faulty) = ("s3://warehouse/calm", "s3://warehouse/faulty");
    for wh in [calm, faulty] {
        generate(&s3, wh, false);
    }
    ok(run(&s3.env(), calm));
    let rule = |method, path: &str, nth, fault| Scripted {
        method,
        path: path.to_string(),
        nth,
        fault,
    };
    proxy.script(vec![
        rule("PUT", "/summary/_delta_log/0", 0, Fault::LostAnswer),
        rule("PUT", "latest_summary/_delta_log/0", 0, Fault::LostAnswer),
        rule("PUT", "_sqlplan/runs/_delta_log/0", 1, Fault::LostAnswer),
        rule("PUT", ".lease", 0, Fault::LostAnswer),
        rule("GET", "_delta_log", 2, Fault::SlowDown),
        rule("GET", "_delta_log", 3, Fault::InternalError),
        rule("GET", ".parquet", 1, Fault::Reset),
        rule("PUT", ".parquet", 0, Fault::Reset),
        rule("PUT", ".parquet", 2, Fault::InternalError),
        rule("GET", ".parquet", 4, Fault::Delay),
    ]);
    let out = run(&through(&s3, &proxy), faulty);
    let injected = proxy.injected();
    assert_eq!(
        out.code,
        0,
        "injected {:?}\n{}\n{}",
        proxy.log(),
        out.stdout,
        out.stderr
    );
    assert_eq!(injected.values().sum::<usize>(), 10, "{:?}", proxy.log());
    for stage in ["merge_summary", "merge_latest"] {
        assert!(
            out.stderr
                .contains(&format!("the store lost the answer to `{stage}`'s commit")),
            "{}",
            out.stderr
        );
    }
    // The ledger row whose commit answer was lost is there once.
    let runs = ledger(&s3, faulty);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "succeeded", "{runs:?}");
    assert_eq!(tables(&s3, faulty).await, tables(&s3, calm).await);
    assert!(no_commit_twice(&s3, faulty).await > 0);
}
