//! Runs on an S3 warehouse behind a store that misbehaves (`faults::FaultyStore`):
//! what is survived, what fails a run, and that nothing is lost or written twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::common::{repo, sqlplan_with_env, Output};
use super::faults::{Fault, FaultyStore, Scripted};
use super::s3::{ok, S3};

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
        "--limit",
        "100000",
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
    let out = run(&proxy.in_front(&s3.env()), faulty);
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

/// What the soak test did, for its report.
#[derive(Default, Debug, serde::Serialize)]
struct Soak {
    months: usize,
    attempts: usize,
    succeeded: usize,
    failed: usize,
    refused: usize,
    killed: usize,
    /// Why attempts failed: the first line of each error, counted.
    failures: BTreeMap<String, usize>,
    /// The warnings attempts printed, counted.
    warnings: BTreeMap<String, usize>,
    requests: usize,
    faults: BTreeMap<String, usize>,
    commits_checked: usize,
    seconds: f64,
}

fn setting(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The summary pipeline month after month on an S3 warehouse behind a store
/// that misbehaves at random, its runs killed now and then and run again until
/// one succeeds. After every month all tables equal an undisturbed warehouse's
/// (same generator, same batches, no proxy), no commit is in any log twice, and
/// the ledger holds one attempt per run that started: succeeded, failed, or
/// interrupted (killed).
///
/// Short here (2 months); `SQLPLAN_SOAK_MONTHS`, `SQLPLAN_SOAK_SEED`,
/// `SQLPLAN_SOAK_RATE` (faults per request) and `SQLPLAN_SOAK_KILLS` (the share
/// of attempts killed) make it longer or harsher; `SQLPLAN_SOAK_REPORT` names a
/// file for the JSON report.
#[tokio::test(flavor = "multi_thread")]
async fn soak_months_on_a_faulty_store_with_kills_equal_an_undisturbed_run() {
    use rand::{Rng, SeedableRng};
    let Some(s3) = S3::start() else { return };
    let months = setting("SQLPLAN_SOAK_MONTHS", 2.0) as usize;
    let seed = setting("SQLPLAN_SOAK_SEED", 1.0) as u64;
    let rate = setting("SQLPLAN_SOAK_RATE", 0.01);
    let kills = setting("SQLPLAN_SOAK_KILLS", 0.3);
    let started = std::time::Instant::now();
    let proxy = FaultyStore::start(&s3.endpoint, Duration::from_secs(6 * 3600));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (calm, faulty) = ("s3://warehouse/soak-calm", "s3://warehouse/soak-faulty");
    let mut env = proxy.in_front(&s3.env());
    env.push(("SQLPLAN_LEASE_SECONDS", "2".into()));
    let mut soak = Soak::default();
    // Attempts whose end row the store kept from the ledger (they show as
    // interrupted), by how they ended.
    let (mut succeeded_unrecorded, mut failed_unrecorded) = (0, 0);
    // Attempts that failed because their start row could not be written.
    let mut failed_unlisted = 0;
    for month in 0..months {
        for wh in [calm, faulty] {
            generate(&s3, wh, month > 0);
        }
        ok(run(&s3.env(), calm));
        let mut done = false;
        for tried in 0..20 {
            soak.attempts += 1;
            proxy.random(Some(super::faults::Random {
                seed: rng.random(),
                rate,
                kinds: Fault::ALL.to_vec(),
            }));
            let kill = rng
                .random_bool(kills)
                .then(|| Duration::from_millis(rng.random_range(200..8000)));
            let Some(out) = attempt(&env, faulty, kill) else {
                soak.killed += 1;
                // The killed run's lease expires (2 s here) before the next.
                std::thread::sleep(Duration::from_millis(2500));
                continue;
            };
            for warning in out.stderr.lines().filter(|l| l.contains("warning:")) {
                let text = warning.trim().chars().take(160).collect();
                *soak.warnings.entry(text).or_default() += 1;
            }
            let unrecorded = out.stderr.contains("the run's end was not recorded");
            match out.code {
                0 => {
                    soak.succeeded += 1;
                    succeeded_unrecorded += unrecorded as usize;
                    done = true;
                    break;
                }
                1 if out.stderr.contains("is in progress on this warehouse") => {
                    soak.refused += 1;
                    std::thread::sleep(Duration::from_millis(2500));
                }
                1 => {
                    soak.failed += 1;
                    failed_unrecorded += unrecorded as usize;
                    failed_unlisted +=
                        out.stderr.contains("cannot append to the run ledger") as usize;
                    let why = out
                        .stderr
                        .lines()
                        .find(|l| l.contains('×'))
                        .unwrap_or("(no error line)")
                        .trim()
                        .chars()
                        .take(160)
                        .collect();
                    *soak.failures.entry(why).or_default() += 1;
                }
                code => panic!(
                    "month {month}, attempt {tried}: exit {code}\n{}",
                    out.stderr
                ),
            }
        }
        assert!(done, "month {month}: no attempt succeeded in 20");
        proxy.random(None);
        let expected = tables(&s3, calm).await;
        assert_eq!(tables(&s3, faulty).await, expected, "month {month}");
        soak.commits_checked = no_commit_twice(&s3, faulty).await;
        soak.months += 1;
    }
    soak.requests = proxy.requests();
    soak.faults = proxy
        .injected()
        .into_iter()
        .map(|(k, v)| (format!("{k:?}"), v))
        .collect();
    soak.seconds = started.elapsed().as_secs_f64();
    eprintln!("soak: {soak:?}");
    if let Ok(path) = std::env::var("SQLPLAN_SOAK_REPORT") {
        std::fs::write(path, serde_json::to_string_pretty(&soak).unwrap()).unwrap();
    }
    // Every attempt that started is in the ledger once, as it ended.
    let attempts = ledger(&s3, faulty);
    let count = |status: &str| attempts.iter().filter(|a| a["status"] == status).count();
    let statuses: Vec<_> = attempts
        .iter()
        .map(|a| format!("run {} {}", a["run"], a["status"]))
        .collect();
    assert_eq!(
        count("succeeded") + succeeded_unrecorded,
        months,
        "{statuses:?} {soak:?}"
    );
    assert_eq!(count("running"), 0, "{statuses:?} {soak:?}");
    assert_eq!(
        count("failed") + failed_unrecorded + failed_unlisted,
        soak.failed,
        "{statuses:?} {soak:?}"
    );
    assert!(
        count("interrupted") <= soak.killed + succeeded_unrecorded + failed_unrecorded,
        "{statuses:?} {soak:?}"
    );
}

/// A run, killed after `kill` if it is still running then: its output, or
/// None if it was killed.
fn attempt(
    env: &[(&'static str, String)],
    warehouse: &str,
    kill: Option<Duration>,
) -> Option<Output> {
    use std::io::Read;
    let var = format!("warehouse={warehouse}");
    let mut child = std::process::Command::new(crate::common::bin())
        .args(["run", "pipelines/summary.yaml", "--var", &var])
        .current_dir(repo())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read while it runs, so a full pipe never holds it up.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if kill.is_some_and(|k| started.elapsed() >= k) {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    status.map(|s| Output {
        code: s.code().unwrap_or(-1),
        stdout,
        stderr,
    })
}
