//! `sqlplan generate summary`: the generated history is consistent (the arrays
//! agree with the rows they describe, latest_summary is each account's newest
//! non-deleted row), deterministic for a seed, and the summary pipeline keeps it
//! consistent, reports the batch's mix, and changes nothing when the batch is
//! applied again.

use std::path::Path;

use crate::common::{query_tables, repo, sqlplan_in};

/// The rolling columns of pipelines/summary.yaml: (array, the column feeding it).
const ROLLING: [(&str, &str); 7] = [
    ("actual_payment_am_history", "actual_payment_am"),
    ("balance_am_history", "balance_am"),
    ("credit_limit_am_history", "credit_limit_am"),
    ("past_due_am_history", "past_due_am"),
    ("payment_rating_cd_history", "payment_rating_cd"),
    ("days_past_due_history", "days_past_due"),
    ("asset_class_cd_4in_history", "asset_class_cd"),
];

fn generate(warehouse: &Path, accounts: &str, batch: &str, seed: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "generate",
        "summary",
        "--warehouse",
        warehouse.to_str().unwrap(),
        "--accounts",
        accounts,
        "--months",
        "14",
        "--batch-records",
        batch,
        "--seed",
        seed,
    ];
    args.extend(extra);
    let out = sqlplan_in(&repo(), &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
}

/// Rows breaking spec §1.3/§1.4 consistency, described; empty when consistent.
/// Element p of the row at month S must be the value of the row at month S − p
/// when that row exists and is not soft-deleted, else NULL (element 0 is the
/// row's own value); the grid spells the ratings; latest_summary is a full copy
/// of the newest non-deleted row (or newest row when all are deleted).
async fn inconsistencies(warehouse: &Path) -> Vec<String> {
    let tables = [
        ("summary", warehouse.join("summary")),
        ("latest", warehouse.join("latest_summary")),
    ];
    let tables: Vec<(&str, &Path)> = tables.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let mut problems = Vec::new();
    for (array, from) in ROLLING {
        let sql = format!(
            "WITH r AS (
               SELECT cons_acct_key AS k,
                      CAST(substr(rpt_as_of_mo, 1, 4) AS BIGINT) * 12
                        + CAST(substr(rpt_as_of_mo, 6, 2) AS BIGINT) AS mi,
                      coalesce(soft_del_cd IN ('1', '4'), false) AS del,
                      {from} AS v, {array} AS h
               FROM summary),
             pos AS (SELECT k, mi, v, h, unnest(range(0, 36)) AS p FROM r)
             SELECT '{array}', pos.k, pos.mi, pos.p FROM pos
             LEFT JOIN r AS q ON q.k = pos.k AND q.mi = pos.mi - pos.p
             WHERE (array_length(pos.h) <> 36)
                OR (pos.h[pos.p + 1] IS DISTINCT FROM
                    (CASE WHEN pos.p = 0 THEN pos.v WHEN q.del THEN NULL ELSE q.v END))
             ORDER BY 2, 3, 4 LIMIT 5"
        );
        problems.extend(query_tables(&tables, &sql).await);
    }
    problems.extend(
        query_tables(
            &tables,
            "SELECT 'grid', cons_acct_key, rpt_as_of_mo FROM summary
             WHERE (payment_history_grid IS DISTINCT FROM
                    array_to_string(payment_rating_cd_history, '', '?'))
                OR (length(payment_history_grid) <> 36)
             LIMIT 5",
        )
        .await,
    );
    let newest = "SELECT * EXCLUDE (rn) FROM (
        SELECT *, row_number() OVER (PARTITION BY cons_acct_key
          ORDER BY coalesce(soft_del_cd IN ('1', '4'), false), rpt_as_of_mo DESC) AS rn
        FROM summary) WHERE rn = 1";
    for (label, a, b) in [
        (
            "latest row missing",
            newest.to_string(),
            "SELECT * FROM latest".to_string(),
        ),
        (
            "latest row wrong",
            "SELECT * FROM latest".to_string(),
            newest.to_string(),
        ),
    ] {
        let sql =
            format!("SELECT '{label}', cons_acct_key, rpt_as_of_mo FROM ({a} EXCEPT {b}) LIMIT 5");
        problems.extend(query_tables(&tables, &sql).await);
    }
    problems
}

/// Every row of a table, sorted, as text.
async fn contents(table: &Path) -> Vec<String> {
    let mut rows = query_tables(&[("t", table)], "SELECT * FROM t").await;
    rows.sort();
    rows
}

async fn contents_without_base_ts(table: &Path) -> Vec<String> {
    let mut rows = query_tables(&[("t", table)], "SELECT * EXCLUDE (base_ts) FROM t").await;
    rows.sort();
    rows
}

/// base_ts by "key,month".
async fn base_ts(table: &Path) -> std::collections::BTreeMap<String, String> {
    query_tables(
        &[("t", table)],
        "SELECT cons_acct_key || ',' || rpt_as_of_mo, base_ts FROM t",
    )
    .await
    .into_iter()
    .filter_map(|l| {
        l.rsplit_once(',')
            .map(|(k, v)| (k.to_string(), v.to_string()))
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generated_history_is_consistent_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let printed = generate(&a, "300", "600", "7", &[]);
    assert!(printed.contains("forward (case II)"), "{printed}");
    generate(&b, "300", "600", "7", &[]);
    generate(&c, "300", "600", "8", &[]);
    assert_eq!(inconsistencies(&a).await, Vec::<String>::new());
    for table in ["summary", "latest_summary", "accounts"] {
        assert_eq!(
            contents(&a.join(table)).await,
            contents(&b.join(table)).await,
            "{table} differs for the same seed"
        );
    }
    assert_ne!(
        contents(&a.join("accounts")).await,
        contents(&c.join("accounts")).await
    );
    // Partitioned by month (14 partitions), one file per partition for 300 accounts.
    let months = query_tables(
        &[("t", a.join("summary").as_path())],
        "SELECT count(DISTINCT rpt_as_of_mo) FROM t",
    )
    .await;
    assert_eq!(months, ["14"]);
    assert_eq!(crate::common::file_count(&a.join("summary")).await, 14);
    // An existing warehouse is not overwritten without --replace.
    let again = sqlplan_in(
        &repo(),
        &[
            "generate",
            "summary",
            "--warehouse",
            a.to_str().unwrap(),
            "--accounts",
            "10",
        ],
    );
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("--replace"), "{}", again.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_keeps_a_generated_warehouse_consistent_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    // With hist_rpt rows, so that spec §2.1 resolution runs too.
    let printed = generate(&wh, "400", "2000", "3", &["--hist-rpt"]);
    assert!(printed.contains("consumer_account_hist_rpt"), "{printed}");
    let generated_keys: std::collections::BTreeSet<String> =
        base_ts(&wh.join("summary")).await.into_keys().collect();
    let var = format!("warehouse={}", wh.display());
    let report = dir.path().join("run.json");
    let out = sqlplan_in(
        &repo(),
        &[
            "run",
            "pipelines/summary.yaml",
            "--var",
            &var,
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(inconsistencies(&wh).await, Vec::<String>::new());
    // The batch's mix is reported: every kind of §3.1 occurs in this batch.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let counts = json.to_string();
    for kind in [
        "case I:",
        "case II:",
        "case III:",
        "case IV:",
        "delete",
        "stale",
        "ignored",
    ] {
        assert!(counts.contains(kind), "{kind} not reported: {}", out.stdout);
    }
    // The same batch again (watermark reset) changes nothing but the base_ts of
    // some rows the first run created. That is the spec's own rule, not a bug: a new
    // row takes its record's base_ts (§3, §3.0), yet once the row exists a record
    // for an earlier month of the batch with a later base_ts raises it (§3 "then, in
    // every row at month S…").
    let summary_before = contents_without_base_ts(&wh.join("summary")).await;
    let latest_before = contents_without_base_ts(&wh.join("latest_summary")).await;
    let ts_before = base_ts(&wh.join("summary")).await;
    let out = sqlplan_in(
        &repo(),
        &[
            "run",
            "pipelines/summary.yaml",
            "--var",
            &var,
            "--var",
            "watermark=1900-01-01T00:00:00",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        summary_before == contents_without_base_ts(&wh.join("summary")).await,
        "summary changed"
    );
    assert!(
        latest_before == contents_without_base_ts(&wh.join("latest_summary")).await,
        "latest_summary changed"
    );
    let ts_after = base_ts(&wh.join("summary")).await;
    for (key, ts) in &ts_after {
        let old = &ts_before[key];
        if ts != old {
            assert!(ts > old, "base_ts of {key} went down: {old} → {ts}");
            assert!(
                !generated_keys.contains(key),
                "base_ts of the stored row {key} changed: {old} → {ts}"
            );
        }
    }
    assert_eq!(inconsistencies(&wh).await, Vec::<String>::new());
    // The next run, with the recorded watermark, finds an empty batch: nothing changes.
    let summary = contents(&wh.join("summary")).await;
    let latest = contents(&wh.join("latest_summary")).await;
    let out = sqlplan_in(&repo(), &["run", "pipelines/summary.yaml", "--var", &var]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let batch_rows = out
        .stdout
        .lines()
        .find(|l| l.starts_with("batch "))
        .and_then(|l| l.split_whitespace().nth(5));
    assert_eq!(batch_rows, Some("0"), "{}", out.stdout);
    assert!(
        summary == contents(&wh.join("summary")).await,
        "an empty batch changed summary"
    );
    assert!(
        latest == contents(&wh.join("latest_summary")).await,
        "an empty batch changed latest_summary"
    );
}

#[test]
fn the_demo_generates_plans_runs_and_reports_and_only_replaces_its_own_warehouse() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("demo");
    let args = [
        "demo",
        "--warehouse",
        wh.to_str().unwrap(),
        "--accounts",
        "200",
    ];
    for _ in 0..2 {
        let out = sqlplan_in(&repo(), &args);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        for expected in [
            "1/3 generating",
            "summary: 4 scans (0 full, 4 pruned, budget 0 full)",
            "3/3 running",
            "merge_summary",
            "case II: forward month",
            "demo done",
        ] {
            assert!(out.stdout.contains(expected), "{expected}:\n{}", out.stdout);
        }
    }
    let foreign = dir.path().join("mine");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "keep").unwrap();
    let out = sqlplan_in(&repo(), &["demo", "--warehouse", foreign.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(foreign.join("precious.txt").exists());
}

#[test]
fn generate_rejects_bad_arguments_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    for (args, says) in [
        (vec!["--last-month", "2026-13"], "not a month YYYY-MM"),
        (vec!["--months", "0"], "--months must be between 1 and 600"),
        (
            vec!["--pipeline", "pipelines/examples/orders.yaml"],
            "has no table `summary`",
        ),
    ] {
        let mut all = vec!["generate", "summary", "--warehouse", wh.to_str().unwrap()];
        all.extend(args);
        let out = sqlplan_in(&repo(), &all);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(out.stderr.contains(says), "{says}: {}", out.stderr);
        assert!(!wh.exists());
    }
}

/// Several months in a row: each next batch (generated from latest_summary) is run
/// on the same warehouse, which stays consistent; the state moves month by month.
#[tokio::test(flavor = "multi_thread")]
async fn monthly_batches_in_a_row_keep_the_warehouse_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    generate(&wh, "200", "200", "4", &[]);
    let var = format!("warehouse={}", wh.display());
    for month in ["2026-02", "2026-03"] {
        let run = sqlplan_in(&repo(), &["run", "pipelines/summary.yaml", "--var", &var]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let next = sqlplan_in(
            &repo(),
            &[
                "generate",
                "summary",
                "--warehouse",
                wh.to_str().unwrap(),
                "--next-batch",
                "--seed",
                "4",
            ],
        );
        assert_eq!(next.code, 0, "{}", next.stderr);
        assert!(
            next.stdout.contains(&format!("the batch for {month}")),
            "{}",
            next.stdout
        );
        assert!(next.stdout.contains("forward (case II)"), "{}", next.stdout);
    }
    let run = sqlplan_in(&repo(), &["run", "pipelines/summary.yaml", "--var", &var]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("case II: forward month"),
        "{}",
        run.stdout
    );
    assert_eq!(inconsistencies(&wh).await, Vec::<String>::new());
    let months = query_tables(
        &[("t", wh.join("summary").as_path())],
        "SELECT max(rpt_as_of_mo) FROM t",
    )
    .await;
    assert!(months[0].as_str() >= "2026-03", "{months:?}");
}
