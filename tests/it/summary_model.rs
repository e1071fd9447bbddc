//! A small sequential model of the summary pipeline's rule (docs/
//! summary-pipeline.md §2.3 and §3): records applied one at a time, per account in
//! ascending month order. It is the reference of the pipeline's property test;
//! here it is checked against the spec's worked examples.

use std::collections::BTreeMap;

pub const HISTORY: usize = 36;
pub const DELETE_CODES: [&str; 2] = ["1", "4"];

/// One value of a rolling column (strings are encoded as numbers by the caller).
pub type V = Option<i64>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Tag of the record whose scalars the row carries.
    pub scalars: i64,
    pub soft_del_cd: Option<String>,
    pub base_ts: i64,
    /// One array of HISTORY elements per rolling column.
    pub arrays: Vec<Vec<V>>,
}

impl Row {
    pub fn deleted(&self) -> bool {
        self.soft_del_cd
            .as_deref()
            .is_some_and(|c| DELETE_CODES.contains(&c))
    }
}

#[derive(Clone, Debug)]
pub struct Record {
    pub key: i64,
    /// Month index (months since year 0).
    pub month: i32,
    pub values: Vec<V>,
    pub scalars: i64,
    pub soft_del_cd: Option<String>,
    pub base_ts: i64,
    pub insert_ts: i64,
    pub update_ts: i64,
}

impl Record {
    fn is_delete(&self) -> bool {
        self.soft_del_cd
            .as_deref()
            .is_some_and(|c| DELETE_CODES.contains(&c))
    }
}

/// key → month → row.
pub type Summary = BTreeMap<i64, BTreeMap<i32, Row>>;

/// §3.1: the batch's records by kind (the pipeline's `counts` names), relative to
/// latest_summary before the run; stale and ignored records counted apart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<&'static str, usize>);

impl Counts {
    pub fn of(&self, kind: &str) -> usize {
        self.0.get(kind).copied().unwrap_or(0)
    }

    fn add(&mut self, kind: &'static str) {
        *self.0.entry(kind).or_insert(0) += 1;
    }
}

/// The kind of an applied record (spec §3.1).
fn case(r: &Record, latest_month: Option<i32>, span: (i32, i32)) -> &'static str {
    match latest_month {
        _ if r.is_delete() => "delete",
        None if span.0 == span.1 => "case I: new account, one month",
        None => "case IV: new account, several months",
        Some(l) if r.month > l => "case II: forward month",
        Some(_) => "case III: backfill or correction",
    }
}

/// Applies a batch to `summary` and returns its records by kind.
pub fn apply(summary: &mut Summary, batch: &[Record]) -> Counts {
    let mut counts = Counts::default();
    // §2.3 dedup: greatest base_ts, then insert_ts, then update_ts.
    let mut winners: BTreeMap<(i64, i32), &Record> = BTreeMap::new();
    for r in batch {
        let slot = winners.entry((r.key, r.month)).or_insert(r);
        if (r.base_ts, r.insert_ts, r.update_ts) > (slot.base_ts, slot.insert_ts, slot.update_ts) {
            *slot = r;
        }
    }
    // Stale against the rows as they were before the run.
    let before = summary.clone();
    let latest_before = latest(&before);
    let mut spans: BTreeMap<i64, (i32, i32)> = BTreeMap::new();
    for &(key, month) in winners.keys() {
        let span = spans.entry(key).or_insert((month, month));
        *span = (span.0.min(month), span.1.max(month));
    }
    for ((key, month), r) in winners {
        if before
            .get(&key)
            .and_then(|rows| rows.get(&month))
            .is_some_and(|row| row.base_ts > r.base_ts)
        {
            counts.add("stale");
            continue;
        }
        let rows = summary.entry(key).or_default();
        if r.is_delete() && !apply_delete(rows, r) {
            counts.add("ignored");
            continue;
        }
        if !r.is_delete() {
            apply_value(rows, r);
        }
        counts.add(case(r, latest_before.get(&key).map(|l| l.0), spans[&key]));
    }
    summary.retain(|_, rows| !rows.is_empty());
    counts
}

fn later_rows(
    rows: &mut BTreeMap<i32, Row>,
    month: i32,
) -> impl Iterator<Item = (usize, &mut Row)> {
    rows.range_mut(month + 1..month + HISTORY as i32)
        .map(move |(s, row)| ((s - month) as usize, row))
}

fn apply_delete(rows: &mut BTreeMap<i32, Row>, r: &Record) -> bool {
    let Some(row) = rows.get_mut(&r.month) else {
        return false;
    };
    row.soft_del_cd = r.soft_del_cd.clone();
    row.base_ts = row.base_ts.max(r.base_ts);
    for (p, later) in later_rows(rows, r.month) {
        later.arrays.iter_mut().for_each(|a| a[p] = None);
        later.base_ts = later.base_ts.max(r.base_ts);
    }
    true
}

fn apply_value(rows: &mut BTreeMap<i32, Row>, r: &Record) {
    match rows.get_mut(&r.month) {
        Some(row) => {
            row.scalars = r.scalars;
            row.soft_del_cd = r.soft_del_cd.clone();
            for (a, v) in row.arrays.iter_mut().zip(&r.values) {
                a[0] = *v;
            }
            row.base_ts = row.base_ts.max(r.base_ts);
        }
        None => {
            let prior = rows.range(..r.month).rev().find(|(_, row)| !row.deleted());
            let arrays = r
                .values
                .iter()
                .enumerate()
                .map(|(c, v)| {
                    let mut a = vec![*v];
                    if let Some((p, prior)) = prior {
                        a.extend(std::iter::repeat_n(None, (r.month - p - 1) as usize));
                        a.extend(prior.arrays[c].iter().copied());
                    }
                    a.resize(HISTORY, None);
                    a
                })
                .collect();
            rows.insert(
                r.month,
                Row {
                    scalars: r.scalars,
                    soft_del_cd: r.soft_del_cd.clone(),
                    base_ts: r.base_ts,
                    arrays,
                },
            );
        }
    }
    for (p, later) in later_rows(rows, r.month) {
        for (a, v) in later.arrays.iter_mut().zip(&r.values) {
            a[p] = *v;
        }
        later.base_ts = later.base_ts.max(r.base_ts);
    }
}

/// §1.4: the newest non-deleted row of each account, else its newest row.
pub fn latest(summary: &Summary) -> BTreeMap<i64, (i32, Row)> {
    summary
        .iter()
        .filter_map(|(key, rows)| {
            let pick = rows
                .iter()
                .rev()
                .find(|(_, r)| !r.deleted())
                .or_else(|| rows.iter().next_back())?;
            Some((*key, (*pick.0, pick.1.clone())))
        })
        .collect()
}

// ---- the spec's worked examples (§4, balance only) ---------------------------------

/// `YYYY-MM` → month index.
pub fn m(s: &str) -> i32 {
    let (y, mo) = s.split_once('-').unwrap();
    y.parse::<i32>().unwrap() * 12 + mo.parse::<i32>().unwrap() - 1
}

fn arr(values: &[V]) -> Vec<V> {
    let mut a = values.to_vec();
    a.resize(HISTORY, None);
    a
}

fn row(balance: &[V], ts: i64) -> Row {
    Row {
        scalars: 0,
        soft_del_cd: None,
        base_ts: ts,
        arrays: vec![arr(balance)],
    }
}

fn rec(key: i64, month: &str, v: V, ts: i64) -> Record {
    Record {
        key,
        month: m(month),
        values: vec![v],
        scalars: ts,
        soft_del_cd: None,
        base_ts: ts,
        insert_ts: 0,
        update_ts: 0,
    }
}

fn del(key: i64, month: &str, code: &str, ts: i64) -> Record {
    Record {
        soft_del_cd: Some(code.into()),
        ..rec(key, month, None, ts)
    }
}

fn balances(s: &Summary, key: i64, month: &str) -> Vec<V> {
    let mut a = s[&key][&m(month)].arrays[0].clone();
    while a.last() == Some(&None) {
        a.pop();
    }
    a
}

const N: V = None;

#[test]
fn example_1_new_account_with_a_gap() {
    let mut s = Summary::new();
    apply(
        &mut s,
        &[
            rec(8001, "2025-10", Some(100), 1),
            rec(8001, "2025-11", Some(200), 1),
            rec(8001, "2026-01", Some(400), 1),
        ],
    );
    assert_eq!(balances(&s, 8001, "2025-10"), [Some(100)]);
    assert_eq!(balances(&s, 8001, "2025-11"), [Some(200), Some(100)]);
    assert_eq!(
        balances(&s, 8001, "2026-01"),
        [Some(400), N, Some(200), Some(100)]
    );
    assert_eq!(latest(&s)[&8001].0, m("2026-01"));
}

#[test]
fn example_2_forward_with_a_gap_chained() {
    let start = || {
        Summary::from([(
            2001,
            BTreeMap::from([(m("2025-12"), row(&[Some(5000), Some(4500)], 1))]),
        )])
    };
    let mut s = start();
    apply(
        &mut s,
        &[
            rec(2001, "2026-01", Some(5200), 2),
            rec(2001, "2026-03", Some(5400), 2),
        ],
    );
    assert_eq!(
        balances(&s, 2001, "2026-01"),
        [Some(5200), Some(5000), Some(4500)]
    );
    assert_eq!(
        balances(&s, 2001, "2026-03"),
        [Some(5400), N, Some(5200), Some(5000), Some(4500)]
    );
    assert_eq!(latest(&s)[&2001].0, m("2026-03"));
    let mut s = start();
    apply(&mut s, &[rec(2001, "2026-03", Some(5400), 2)]);
    assert_eq!(
        balances(&s, 2001, "2026-03"),
        [Some(5400), N, N, Some(5000), Some(4500)]
    );
}

#[test]
fn example_3_backfill_into_a_missing_month() {
    let mut jan = row(&[Some(400), N, N, Some(100)], 1);
    jan.scalars = 77;
    let mut s = Summary::from([(
        3001,
        BTreeMap::from([(m("2025-10"), row(&[Some(100)], 1)), (m("2026-01"), jan)]),
    )]);
    apply(&mut s, &[rec(3001, "2025-12", Some(300), 2)]);
    assert_eq!(balances(&s, 3001, "2025-12"), [Some(300), N, Some(100)]);
    assert_eq!(s[&3001][&m("2025-12")].base_ts, 2);
    assert_eq!(
        balances(&s, 3001, "2026-01"),
        [Some(400), Some(300), N, Some(100)]
    );
    assert_eq!(s[&3001][&m("2026-01")].base_ts, 2);
    assert_eq!(s[&3001][&m("2026-01")].scalars, 77, "scalars unchanged");
    assert_eq!(latest(&s)[&3001].0, m("2026-01"));
}

#[test]
fn example_4_corrections_with_a_null() {
    let mut s = Summary::from([(
        5001,
        BTreeMap::from([
            (m("2025-10"), row(&[Some(10)], 1)),
            (m("2025-11"), row(&[Some(11), Some(10)], 1)),
            (m("2025-12"), row(&[Some(12), Some(11), Some(10)], 1)),
            (
                m("2026-01"),
                row(&[Some(13), Some(12), Some(11), Some(10)], 1),
            ),
        ]),
    )]);
    apply(
        &mut s,
        &[
            rec(5001, "2025-11", Some(21), 2),
            rec(5001, "2025-12", None, 3),
        ],
    );
    assert_eq!(balances(&s, 5001, "2025-11"), [Some(21), Some(10)]);
    assert_eq!(balances(&s, 5001, "2025-12"), [N, Some(21), Some(10)]);
    assert_eq!(
        balances(&s, 5001, "2026-01"),
        [Some(13), N, Some(21), Some(10)]
    );
    assert_eq!(
        (
            s[&5001][&m("2025-11")].base_ts,
            s[&5001][&m("2025-12")].base_ts,
            s[&5001][&m("2026-01")].base_ts
        ),
        (2, 3, 3)
    );
}

#[test]
fn example_5_soft_deletes() {
    let mut s = Summary::from([
        (
            7001,
            BTreeMap::from([
                (m("2025-12"), row(&[Some(5000)], 1)),
                (m("2026-01"), row(&[Some(5200), Some(5000)], 1)),
                (m("2026-02"), row(&[Some(5400), Some(5200), Some(5000)], 1)),
            ]),
        ),
        (
            7002,
            BTreeMap::from([
                (m("2026-01"), row(&[Some(1000)], 1)),
                (m("2026-02"), row(&[Some(1100), Some(1000)], 1)),
            ]),
        ),
    ]);
    let active = Record {
        soft_del_cd: Some(String::new()),
        ..rec(7001, "2026-01", Some(5200), 11)
    };
    let counts = apply(
        &mut s,
        &[
            active,
            del(7001, "2026-01", "1", 12),
            del(7001, "2024-12", "1", 12),
            del(7002, "2026-02", "4", 12),
        ],
    );
    assert_eq!((counts.of("stale"), counts.of("ignored")), (0, 1));
    assert_eq!(counts.of("delete"), 2);
    assert!(s[&7001][&m("2026-01")].deleted());
    assert_eq!(
        balances(&s, 7001, "2026-01"),
        [Some(5200), Some(5000)],
        "arrays kept"
    );
    assert_eq!(balances(&s, 7001, "2026-02"), [Some(5400), N, Some(5000)]);
    assert_eq!(latest(&s)[&7001].0, m("2026-02"));
    assert!(s[&7002][&m("2026-02")].deleted());
    assert_eq!(latest(&s)[&7002].0, m("2026-01"));
    apply(&mut s, &[rec(7002, "2026-03", Some(1200), 13)]);
    assert_eq!(balances(&s, 7002, "2026-03"), [Some(1200), N, Some(1000)]);
}

#[test]
fn example_6_duplicates_and_stale_records() {
    let start = |ts| {
        Summary::from([(
            111,
            BTreeMap::from([(m("2026-01"), row(&[Some(5000)], ts))]),
        )])
    };
    let batch = [
        rec(111, "2026-01", Some(5000), 10),
        rec(111, "2026-01", Some(5500), 11),
        rec(111, "2026-01", Some(5600), 12),
    ];
    let mut s = start(9);
    let counts = apply(&mut s, &batch);
    assert_eq!(
        counts.0,
        BTreeMap::from([("case III: backfill or correction", 1)])
    );
    assert_eq!(balances(&s, 111, "2026-01"), [Some(5600)]);
    assert_eq!(
        s[&111][&m("2026-01")].scalars,
        12,
        "scalars from the 12:00 row"
    );
    let mut s = start(13);
    assert_eq!(apply(&mut s, &batch).0, BTreeMap::from([("stale", 1)]));
    assert_eq!(s, start(13), "nothing changes");
}

#[test]
fn example_7_backfill_and_delete_of_one_account_in_one_batch() {
    let mut s = Summary::from([(
        9001,
        BTreeMap::from([
            (m("2025-10"), row(&[Some(1)], 1)),
            (m("2025-11"), row(&[Some(2), Some(1)], 1)),
            (m("2025-12"), row(&[Some(3), Some(2), Some(1)], 1)),
        ]),
    )]);
    apply(
        &mut s,
        &[
            rec(9001, "2025-10", Some(10), 2),
            del(9001, "2025-11", "1", 2),
        ],
    );
    assert_eq!(balances(&s, 9001, "2025-10"), [Some(10)]);
    assert!(s[&9001][&m("2025-11")].deleted());
    assert_eq!(balances(&s, 9001, "2025-11"), [Some(2), Some(10)]);
    assert_eq!(balances(&s, 9001, "2025-12"), [Some(3), N, Some(10)]);
    assert_eq!(latest(&s)[&9001].0, m("2025-12"));
}

#[test]
fn rerunning_a_batch_changes_nothing_and_values_stop_at_the_last_element() {
    let mut s = Summary::new();
    let batch: Vec<Record> = (0..40)
        .map(|i| {
            rec(
                1,
                &format!("{}-{:02}", 2023 + i / 12, i % 12 + 1),
                Some(i as i64),
                5,
            )
        })
        .collect();
    apply(&mut s, &batch);
    let once = s.clone();
    assert_eq!(apply(&mut s, &batch).of("stale"), 0);
    assert_eq!(s, once);
    let last = &s[&1][&m("2026-04")].arrays[0];
    assert_eq!(last.len(), HISTORY);
    assert_eq!((last[0], last[35]), (Some(39), Some(4)));
}

#[test]
fn example_8_a_deleted_row_above_the_latest_month() {
    let start = || {
        let mut s = Summary::new();
        apply(
            &mut s,
            &[
                rec(7002, "2026-01", Some(1000), 1),
                rec(7002, "2026-02", Some(1100), 1),
            ],
        );
        apply(&mut s, &[del(7002, "2026-02", "4", 1)]);
        assert_eq!(latest(&s)[&7002].0, m("2026-01"));
        s
    };
    let mut s = start();
    let counts = apply(&mut s, &[del(7002, "2026-02", "1", 2)]);
    assert_eq!(counts.0, BTreeMap::from([("delete", 1)]));
    let feb = &s[&7002][&m("2026-02")];
    assert_eq!((feb.soft_del_cd.as_deref(), feb.base_ts), (Some("1"), 2));
    assert_eq!(latest(&s)[&7002].0, m("2026-01"));

    let mut s = start();
    let counts = apply(&mut s, &[rec(7002, "2026-02", Some(1150), 2)]);
    assert_eq!(counts.0, BTreeMap::from([("case II: forward month", 1)]));
    assert!(!s[&7002][&m("2026-02")].deleted());
    assert_eq!(balances(&s, 7002, "2026-02"), [Some(1150), Some(1000)]);
    assert_eq!(latest(&s)[&7002].0, m("2026-02"));
}
