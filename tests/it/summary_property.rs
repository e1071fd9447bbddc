//! Property test: random small histories and batches through the summary pipeline
//! (driven by `sqlplan test` fixtures) give the tables of the sequential model: two
//! rolling columns, the scalars (which record they come from), soft_del_cd and
//! base_ts of every row, latest_summary, and the run's counts by kind (§3.1).
//! Between the two random batches, a run deletes the newest months of some accounts,
//! so that deleted rows often lie above the latest month.
//! A second property runs several batches in a row on one warehouse, compacting
//! the partitions with rows deleted by vectors after some of them.
//! Cases: 4 by default; SQLPLAN_PROPTEST_CASES=N for more.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::common::{repo, sqlplan_in, Project};
use crate::summary_model::{apply, latest, Counts, Record, Summary};

/// One generated record: key, month offset from 2023-01, balance and past-due
/// amount (None = NULL, Some(-1) = a sentinel), delete code, time, insert time, and
/// whether it duplicates the previous record's key, month and time (a tie on
/// base_ts that insert_ts, then update_ts, break).
type Raw = (
    i64,
    i32,
    Option<i64>,
    Option<i64>,
    Option<&'static str>,
    i64,
    i64,
    bool,
);

fn value() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![3 => (1i64..1000).prop_map(Some), 1 => Just(None), 1 => Just(Some(-1))]
}

fn raw_record() -> impl Strategy<Value = Raw> {
    (
        1i64..=3,
        0i32..42,
        value(),
        value(),
        prop_oneof![6 => Just(None), 1 => Just(Some("1")), 1 => Just(Some("4"))],
        0i64..50,
        0i64..3,
        prop::bool::weighted(0.2),
    )
}

fn month_name(offset: i32) -> String {
    format!("{}-{:02}", 2023 + offset / 12, offset % 12 + 1)
}

fn timestamp(seconds: i64) -> String {
    let t = chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        + chrono::Duration::seconds(seconds);
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// The records of a batch. Every record has its own update_ts (its index), so
/// dedup is never arbitrary; a duplicate takes the previous record's key, month and
/// base_ts. The record's index also tags its scalars (`acct_stat_cd`).
fn records(raw: &[Raw], first_index: usize) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for (i, &(key, month, balance, past_due, delete, t, insert, dup)) in raw.iter().enumerate() {
        let index = (first_index + i) as i64;
        let (key, month, base_ts) = match (dup, out.last()) {
            (true, Some(prev)) => (prev.key, prev.month, prev.base_ts),
            _ => (key, crate::summary_model::m(&month_name(month)), t * 60),
        };
        out.push(Record {
            key,
            month,
            // The pipeline turns the sentinel -1 into NULL.
            values: vec![balance.filter(|v| *v != -1), past_due.filter(|v| *v != -1)],
            scalars: index,
            soft_del_cd: delete.map(str::to_string),
            base_ts,
            insert_ts: insert,
            update_ts: index,
        });
    }
    out
}

fn accounts_rows(raw: &[Raw], first_index: usize) -> Vec<Value> {
    accounts_rows_of(&records(raw, first_index), raw)
}

fn accounts_rows_of(records: &[Record], raw: &[Raw]) -> Vec<Value> {
    records
        .iter()
        .zip(raw)
        .map(|(r, &(_, _, balance, past_due, ..))| {
            json!({"cons_acct_key": r.key, "rpt_as_of_mo": month_text(r.month),
                   "acct_bal_am": balance, "past_due_am": past_due,
                   "acct_stat_cd": format!("r{}", r.scalars), "soft_del_cd": r.soft_del_cd,
                   "base_ts": timestamp(r.base_ts), "insert_ts": timestamp(r.insert_ts),
                   "update_ts": timestamp(r.update_ts)})
        })
        .collect()
}

fn month_text(m: i32) -> String {
    format!("{}-{:02}", m / 12, m % 12 + 1)
}

fn trimmed(a: &[Option<i64>]) -> Value {
    let mut a = a.to_vec();
    while a.last() == Some(&None) {
        a.pop();
    }
    json!(a)
}

fn expected(s: &Summary, counts: &Counts) -> Value {
    let summary: Vec<Value> = s
        .iter()
        .flat_map(|(k, rows)| {
            rows.iter().map(move |(m, r)| {
                json!({"cons_acct_key": k, "rpt_as_of_mo": month_text(*m),
                       "balance_am_history": trimmed(&r.arrays[0]), "past_due_am_history": trimmed(&r.arrays[1]),
                       "acct_stat_cd": format!("r{}", r.scalars), "soft_del_cd": r.soft_del_cd,
                       "base_ts": timestamp(r.base_ts)})
            })
        })
        .collect();
    let latest: Vec<Value> = latest(s)
        .iter()
        .map(|(k, (m, r))| json!({"cons_acct_key": k, "rpt_as_of_mo": month_text(*m),
                                  "balance_am_history": trimmed(&r.arrays[0]), "past_due_am_history": trimmed(&r.arrays[1]),
                                  "acct_stat_cd": format!("r{}", r.scalars)}))
        .collect();
    let counts: Vec<Value> = counts
        .0
        .iter()
        .map(|(kind, n)| json!({"kind": kind, "records": n}))
        .collect();
    json!({"summary": summary, "latest_summary": latest, "counts": counts})
}

/// Delete records (code "1") for the newest `n` months of the accounts chosen, at
/// `base_ts`; they get tags after `first_index`.
fn tail_deletes(s: &Summary, chosen: &[usize], base_ts: i64, first_index: usize) -> Vec<Record> {
    let mut out = Vec::new();
    for (key, rows) in s {
        let n = chosen.get((*key - 1) as usize).copied().unwrap_or(0);
        for month in rows.keys().rev().take(n) {
            out.push(Record {
                key: *key,
                month: *month,
                values: vec![None, None],
                scalars: (first_index + out.len()) as i64,
                soft_del_cd: Some("1".into()),
                base_ts,
                insert_ts: 0,
                update_ts: (first_index + out.len()) as i64,
            });
        }
    }
    out
}

fn rows_of(records: &[Record]) -> Vec<Value> {
    records
        .iter()
        .map(|r| {
            json!({"cons_acct_key": r.key, "rpt_as_of_mo": month_text(r.month),
                   "acct_stat_cd": format!("r{}", r.scalars), "soft_del_cd": r.soft_del_cd,
                   "base_ts": timestamp(r.base_ts), "insert_ts": timestamp(r.insert_ts),
                   "update_ts": timestamp(r.update_ts)})
        })
        .collect()
}

fn cases() -> u32 {
    std::env::var("SQLPLAN_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 20,
        ..ProptestConfig::default()
    })]
    #[test]
    fn the_pipeline_equals_the_sequential_model(
        first in prop::collection::vec(raw_record(), 0..10),
        deleted in prop::collection::vec(0usize..3, 3),
        second in prop::collection::vec(raw_record(), 0..10),
        reread in prop::bool::weighted(0.3),
    ) {
        // Each run reads the accounts rows after the watermark the previous run
        // recorded (the greatest base_ts of its batch) — or, with the watermark
        // overridden in the last run, every row again: records older than the rows
        // they hit are stale.
        let mut model = Summary::new();
        let b1 = records(&first, 0);
        let counts = apply(&mut model, &b1);
        let after_first = expected(&model, &counts);
        let w1 = b1.iter().map(|r| r.base_ts).max();
        let deletes = tail_deletes(&model, &deleted, w1.unwrap_or(0) + 1, first.len());
        let counts = apply(&mut model, &deletes);
        let after_deletes = expected(&model, &counts);
        let w2 = deletes.iter().map(|r| r.base_ts).max().or(w1);
        let watermark = w2.filter(|_| !reread);
        let mut b3: Vec<Record> = if reread {
            [b1.clone(), deletes.clone()].concat()
        } else {
            Vec::new()
        };
        let index = first.len() + deletes.len();
        b3.extend(
            records(&second, index)
                .into_iter()
                .filter(|r| watermark.is_none_or(|w| r.base_ts > w)),
        );
        let counts = apply(&mut model, &b3);
        let after_second = expected(&model, &counts);

        let mut last_step = json!({
            "given": {"accounts": accounts_rows(&second, index)},
            "expect": after_second,
        });
        if reread {
            last_step["vars"] = json!({"watermark": "1900-01-01T00:00:00"});
        }
        let fixture = json!({"cases": [{"name": "random", "steps": [
            {"given": {"accounts": accounts_rows(&first, 0)}, "expect": after_first},
            {"given": {"accounts": rows_of(&deletes)}, "expect": after_deletes},
            last_step,
        ]}]});
        let project = Project::new(&[("random.tests.yaml", &fixture.to_string())]);
        let path = project.path().join("random.tests.yaml");
        let out = sqlplan_in(
            &repo(),
            &["test", "pipelines/summary.yaml", "--fixtures", path.to_str().unwrap()],
        );
        prop_assert_eq!(
            out.code,
            0,
            "first {:?}\ndeleted {:?}\nsecond {:?}\nreread {}\n{}\n{}",
            first,
            deleted,
            second,
            reread,
            out.stdout,
            out.stderr
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 20,
        ..ProptestConfig::default()
    })]
    /// Each batch's times start later than the previous one's but overlap it, so
    /// some records fall at or below the watermark and are not read (the model
    /// skips them too). After a batch with `compact`, the run's compaction stages
    /// rewrite every partition that has a deleted row (`compact_deleted_above: 0`);
    /// after the others, none (`1`).
    #[test]
    fn several_batches_with_compaction_between_some_equal_the_model(
        batches in prop::collection::vec(
            (prop::collection::vec(raw_record(), 0..8), prop::bool::ANY),
            3..6,
        ),
    ) {
        let mut model = Summary::new();
        let mut watermark: Option<i64> = None;
        let mut index = 0;
        let mut steps = Vec::new();
        for (n, (raw, compact)) in batches.iter().enumerate() {
            let mut batch = records(raw, index);
            for r in &mut batch {
                r.base_ts += n as i64 * 1500;
            }
            let read: Vec<Record> = batch
                .iter()
                .filter(|r| watermark.is_none_or(|w| r.base_ts > w))
                .cloned()
                .collect();
            let counts = apply(&mut model, &read);
            watermark = read.iter().map(|r| r.base_ts).max().max(watermark);
            steps.push(json!({
                "given": {"accounts": accounts_rows_of(&batch, raw)},
                "expect": expected(&model, &counts),
                "vars": {"compact_deleted_above": if *compact { "0" } else { "1" }},
            }));
            index += raw.len();
        }
        let fixture = json!({"cases": [{"name": "batches", "steps": steps}]});
        let project = Project::new(&[("batches.tests.yaml", &fixture.to_string())]);
        let path = project.path().join("batches.tests.yaml");
        let out = sqlplan_in(
            &repo(),
            &["test", "pipelines/summary.yaml", "--fixtures", path.to_str().unwrap()],
        );
        prop_assert_eq!(out.code, 0, "batches {:?}\n{}\n{}", batches, out.stdout, out.stderr);
    }
}
