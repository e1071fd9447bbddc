//! The `accounts` batch: spec §3.1's mix of records, with noise and bad records.

use rand::Rng;
use std::collections::BTreeMap;

use super::rows::*;
use super::values::*;
use super::*;
use crate::diag::{Code, Problem, Result};

/// The `accounts` batch being built, with the kind of every record.
pub(super) struct Batch<'l> {
    pub(super) layout: &'l Layout,
    pub(super) rows: Rows,
    /// hist_rpt rows, when asked for.
    pub(super) hist: Option<Rows>,
    pub(super) kinds: BTreeMap<&'static str, usize>,
    /// The month the batch reports (the month after the history).
    pub(super) month: Month,
    /// Expected records per existing account for each kind.
    pub(super) forward: f64,
    pub(super) late: f64,
    pub(super) deletes: f64,
    pub(super) new_single: usize,
    pub(super) new_multi: usize,
}

impl<'l> Batch<'l> {
    /// Spec §3.1's typical mix: 90% forward, 5% new accounts with one month, 4%
    /// backfills and corrections, 1% new accounts with several months; deletes are
    /// 0.5% on top.
    pub(super) fn new(layout: &'l Layout, options: &SummaryOptions, month: Month) -> Result<Self> {
        let n = options.batch_records as f64;
        let accounts = options.accounts.max(1) as f64;
        Ok(Batch {
            layout,
            rows: Rows::new(&layout.accounts)?,
            hist: match (&layout.hist_rpt, options.hist_rpt) {
                (Some(schema), true) => Some(Rows::new(schema)?),
                (None, true) => {
                    return Err(Problem::invalid(
                        Code::GenerateSchema,
                        "--hist-rpt: the pipeline has no table `consumer_account_hist_rpt`",
                    ))
                }
                _ => None,
            },
            kinds: BTreeMap::new(),
            month,
            forward: (0.90 * n / accounts).min(1.0),
            late: 0.04 * n / accounts,
            deletes: 0.005 * n / accounts,
            new_single: (0.05 * n).round() as usize,
            new_multi: (0.01 * n / 3.0).round() as usize,
        })
    }

    /// Records for an existing account: a forward month, late records (months 2–40
    /// before the batch month: corrections, stale ones, backfills into missing
    /// months) and soft deletes (of stored months, or of missing ones: ignored).
    pub(super) fn existing_account(
        &mut self,
        values: &mut Values,
        account: &Account,
        first: Month,
    ) {
        let Some((latest_s, latest)) = account.latest() else {
            return;
        };
        let batch_ts = |values: &mut Values, month| {
            micros(month + 1, values.rng.random_range(86_400..10 * 86_400))
        };
        if values.chance(self.forward) {
            let gap = if values.chance(0.03) {
                values.rng.random_range(2..=4)
            } else {
                1
            };
            let m = first + latest_s as i32 + gap;
            let m = m.max(self.month);
            let ts = batch_ts(values, self.month);
            let row = values.month(&latest.values[..], Some(&latest.values), m, ts);
            self.record(values, "forward (case II)", row);
        }
        for _ in 0..count(values, self.late) {
            let m = self.month - values.rng.random_range(2..=40);
            let s = m - first;
            let stored = usize::try_from(s)
                .ok()
                .and_then(|s| account.rows.get(s)?.as_ref());
            let profile = &latest.values;
            match stored {
                Some(row) => {
                    let stale = values.chance(0.1);
                    let stored_ts = match row.values[self.layout.idx["base_ts"]] {
                        V::Ts(t) => t,
                        _ => 0,
                    };
                    let ts = if stale {
                        stored_ts - 3_600_000_000
                    } else {
                        batch_ts(values, self.month)
                    };
                    let new = values.month(profile, Some(&row.values), m, ts);
                    let kind = if stale {
                        "stale correction"
                    } else {
                        "correction (case III)"
                    };
                    self.record(values, kind, new);
                }
                None => {
                    let ts = batch_ts(values, self.month);
                    let new = values.month(profile, None, m, ts);
                    self.record(values, "backfill (case III)", new);
                }
            }
        }
        for _ in 0..count(values, self.deletes) {
            let s = values.rng.random_range(0..account.rows.len());
            let ts = batch_ts(values, self.month);
            let mut row = match &account.rows[s] {
                Some(r) => r.values.clone(),
                None => values.month(&latest.values, None, first + s as i32, ts),
            };
            let kind = if account.rows[s].is_some() {
                "soft delete"
            } else {
                "soft delete of a missing month"
            };
            let code = self
                .layout
                .delete_codes
                .first()
                .cloned()
                .unwrap_or_else(|| "1".into());
            row[self.layout.idx["soft_del_cd"]] = V::Str(code);
            row[self.layout.idx["base_ts"]] = V::Ts(ts);
            self.record(values, kind, row);
        }
    }

    /// New accounts after the existing keys: one month (case I) or 2–4 consecutive
    /// months ending with the batch month (case IV).
    pub(super) fn new_accounts(&mut self, values: &mut Values, first_key: i64) {
        let accounts = self.new_single + self.new_multi;
        for (i, key) in (first_key..).take(accounts).enumerate() {
            let months = if i < self.new_single {
                1
            } else {
                values.rng.random_range(2..=4)
            };
            let kind = if months == 1 {
                "new account (case I)"
            } else {
                "new account, several months (case IV)"
            };
            let profile = values.profile(key);
            let mut previous: Option<Vec<V>> = None;
            for k in (0..months).rev() {
                let m = self.month - k;
                let ts = micros(self.month + 1, values.rng.random_range(86_400..10 * 86_400));
                let row = values.month(&profile, previous.as_deref(), m, ts);
                previous = Some(row.clone());
                self.record(values, kind, row);
            }
        }
    }

    /// Records no run may process, each of another account: months that are not a
    /// real `YYYY-MM` ('2026-13', '2026-1', 'abc', NULL) and a missing base_ts (its
    /// insert_ts is the batch's time).
    pub(super) fn bad_records(&mut self, values: &mut Values, n: usize, first_key: i64) {
        let year = self.month / 12;
        let months = [
            V::Str(format!("{year}-13")),
            V::Str(format!("{year}-{}", self.month % 12 + 1)),
            V::Str("abc".into()),
            V::Null,
        ];
        for (i, key) in (first_key..).take(n).enumerate() {
            let profile = values.profile(key);
            let ts = micros(self.month + 1, values.rng.random_range(86_400..10 * 86_400));
            let row = values.month(&profile, None, self.month, ts);
            let mut source = self.to_source(values, &row);
            source.insert("insert_ts".into(), V::Ts(ts));
            source.insert("update_ts".into(), V::Ts(ts));
            let kind = match months.get(i % (months.len() + 1)) {
                Some(month) => {
                    source.insert("rpt_as_of_mo".into(), month.clone());
                    "bad: month not YYYY-MM"
                }
                None => {
                    source.insert("base_ts".into(), V::Null);
                    "bad: no base_ts"
                }
            };
            *self.kinds.entry(kind).or_default() += 1;
            self.rows.push_named(&source);
        }
    }

    /// Adds one record in the source schema, with the noise the preparation step
    /// cleans (sentinels, bad dates, empty type codes) and sometimes a duplicate.
    pub(super) fn record(&mut self, values: &mut Values, kind: &'static str, row: Vec<V>) {
        *self.kinds.entry(kind).or_default() += 1;
        let base_ts = match row[self.layout.idx["base_ts"]] {
            V::Ts(t) => t,
            _ => 0,
        };
        let mut source = self.to_source(values, &row);
        source.insert("insert_ts".into(), V::Ts(base_ts));
        source.insert("update_ts".into(), V::Ts(base_ts));
        if values.chance(0.01) {
            // A duplicate that loses: earlier, or the same base_ts with an earlier
            // insert_ts (the tie-break).
            let mut loser = self.to_source(values, &row);
            let tie = values.chance(0.5);
            let ts = if tie { base_ts } else { base_ts - 60_000_000 };
            loser.insert("base_ts".into(), V::Ts(ts));
            loser.insert("insert_ts".into(), V::Ts(base_ts - 1_000_000));
            loser.insert("update_ts".into(), V::Ts(base_ts - 1_000_000));
            if let Some(bal) = self.source_name("balance_am") {
                loser.insert(bal, V::Int(values.rng.random_range(0..100_000)));
            }
            *self
                .kinds
                .entry(if tie {
                    "duplicate (base_ts tie)"
                } else {
                    "duplicate (earlier)"
                })
                .or_default() += 1;
            self.rows.push_named(&loser);
        }
        self.rows.push_named(&source);
        if self.hist.is_some() && values.chance(0.05) {
            self.hist_row(values, &row, base_ts);
        }
    }

    /// A hist_rpt row for the record's account and month (spec §2.1): active or
    /// deleted, its acct_dt somewhere in the month, reported around the record.
    pub(super) fn hist_row(&mut self, values: &mut Values, row: &[V], base_ts: i64) {
        let Some(month) = row[self.layout.idx["rpt_as_of_mo"]]
            .as_str()
            .and_then(parse_month)
        else {
            return;
        };
        let code = if values.chance(0.3) {
            self.layout
                .delete_codes
                .first()
                .map_or(V::Null, |c| V::Str(c.clone()))
        } else {
            V::Null
        };
        let ts = base_ts + values.rng.random_range(-86_400..86_400) * 1_000_000;
        let time = V::Str(format!("{:02}:00:00", values.rng.random_range(0..24)));
        let hist: BTreeMap<String, V> = [
            (
                "cons_acct_key",
                row[self.layout.idx["cons_acct_key"]].clone(),
            ),
            ("soft_del_cd", code),
            (
                "acct_dt",
                V::Date(days(first_day(month)) + values.rng.random_range(0..28)),
            ),
            ("base_ts", V::Ts(ts)),
            ("insert_dt", V::Ts(ts)),
            ("update_dt", V::Ts(ts)),
            ("insert_time", time.clone()),
            ("update_time", time),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(rows) = &mut self.hist {
            rows.push_named(&hist);
        }
    }

    pub(super) fn source_name(&self, summary_column: &str) -> Option<String> {
        self.layout
            .mapping
            .iter()
            .find(|(_, (to, _))| to == summary_column)
            .map(|(from, _)| from.clone())
    }

    /// The row's values under their source names, with preparation noise.
    pub(super) fn to_source(&self, values: &mut Values, row: &[V]) -> BTreeMap<String, V> {
        let layout = self.layout;
        let mut out = BTreeMap::new();
        for (from, (to, prep)) in &layout.mapping {
            let Some(&i) = layout.idx.get(to) else {
                continue;
            };
            let mut v = row[i].clone();
            match prep.as_deref() {
                Some("sentinel") if !layout.sentinels.is_empty() && values.chance(0.01) => {
                    v = V::Int(
                        layout.sentinels[values.rng.random_range(0..layout.sentinels.len())],
                    );
                }
                Some("date") if values.chance(0.005) => v = V::Date(days(first_day(999 * 12))),
                Some("default_999") if values.chance(0.02) => v = V::Str(String::new()),
                _ => {}
            }
            out.insert(from.clone(), v);
        }
        out
    }
}

/// How many times something expected `rate` times happens: the integer part, plus
/// one more with the fractional part's probability.
pub(super) fn count(values: &mut Values, rate: f64) -> usize {
    let whole = rate.floor();
    whole as usize + usize::from(values.chance(rate - whole))
}
