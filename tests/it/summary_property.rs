//! Property test: random small histories and batches through the summary pipeline
//! (driven by `sqlplan test` fixtures) give the tables of the sequential model.
//! Cases: 4 by default; SQLPLAN_PROPTEST_CASES=N for more.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::common::{repo, sqlplan_in, Project};
use crate::summary_model::{apply, latest, Record, Summary};

/// (key, month offset from 2023-01, value: None = NULL, Some(-1) = sentinel, delete code, time)
type Raw = (i64, i32, Option<i64>, Option<&'static str>, i64);

fn raw_record() -> impl Strategy<Value = Raw> {
    (
        1i64..=3,
        0i32..42,
        prop_oneof![3 => (1i64..1000).prop_map(Some), 1 => Just(None), 1 => Just(Some(-1))],
        prop_oneof![6 => Just(None), 1 => Just(Some("1")), 1 => Just(Some("4"))],
        0i64..50,
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

/// Records with distinct timestamps (ties would make dedup arbitrary): the
/// generated time orders them, the index breaks ties.
fn records(raw: &[Raw], first_index: usize) -> Vec<Record> {
    raw.iter()
        .enumerate()
        .map(|(i, (key, month, value, delete, t))| {
            let ts = t * 1000 + (first_index + i) as i64;
            Record {
                key: *key,
                month: crate::summary_model::m(&month_name(*month)),
                // The pipeline turns the sentinel -1 into NULL.
                values: vec![value.filter(|v| *v != -1)],
                scalars: ts,
                soft_del_cd: delete.map(str::to_string),
                base_ts: ts,
                insert_ts: 0,
                update_ts: 0,
            }
        })
        .collect()
}

fn accounts_rows(raw: &[Raw], first_index: usize) -> Vec<Value> {
    raw.iter()
        .enumerate()
        .map(|(i, (key, month, value, delete, t))| {
            let ts = t * 1000 + (first_index + i) as i64;
            json!({"cons_acct_key": key, "rpt_as_of_mo": month_name(*month), "acct_bal_am": value,
                   "soft_del_cd": delete, "base_ts": timestamp(ts)})
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

fn expected(s: &Summary) -> Value {
    let summary: Vec<Value> = s
        .iter()
        .flat_map(|(k, rows)| {
            rows.iter().map(move |(m, r)| {
                json!({"cons_acct_key": k, "rpt_as_of_mo": month_text(*m), "balance_am_history": trimmed(&r.arrays[0]),
                       "soft_del_cd": r.soft_del_cd, "base_ts": timestamp(r.base_ts)})
            })
        })
        .collect();
    let latest: Vec<Value> = latest(s)
        .iter()
        .map(|(k, (m, r))| json!({"cons_acct_key": k, "rpt_as_of_mo": month_text(*m), "balance_am_history": trimmed(&r.arrays[0])}))
        .collect();
    json!({"summary": summary, "latest_summary": latest})
}

fn cases() -> u32 {
    std::env::var("SQLPLAN_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 20, ..ProptestConfig::default() })]
    #[test]
    fn the_pipeline_equals_the_sequential_model(
        first in prop::collection::vec(raw_record(), 0..10),
        second in prop::collection::vec(raw_record(), 0..10),
    ) {
        // The second run reads the accounts rows after the watermark the first run
        // recorded: the greatest base_ts of its batch.
        let mut model = Summary::new();
        let b1 = records(&first, 0);
        apply(&mut model, &b1);
        let after_first = expected(&model);
        let watermark = b1.iter().map(|r| r.base_ts).max();
        let b2: Vec<Record> = records(&second, first.len()).into_iter().filter(|r| watermark.is_none_or(|w| r.base_ts > w)).collect();
        apply(&mut model, &b2);
        let after_second = expected(&model);

        let fixture = json!({"cases": [{"name": "random", "steps": [
            {"given": {"accounts": accounts_rows(&first, 0)}, "expect": after_first},
            {"given": {"accounts": accounts_rows(&second, first.len())}, "expect": after_second},
        ]}]});
        let project = Project::new(&[("random.tests.yaml", &fixture.to_string())]);
        let path = project.path().join("random.tests.yaml");
        let out = sqlplan_in(&repo(), &["test", "pipelines/summary.yaml", "--fixtures", path.to_str().unwrap()]);
        prop_assert_eq!(out.code, 0, "first {:?}\nsecond {:?}\n{}\n{}", first, second, out.stdout, out.stderr);
    }
}
