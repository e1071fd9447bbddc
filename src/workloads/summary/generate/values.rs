//! Values of the generated data: months, cells, the pipeline's layout, accounts
//! and their histories' random draws.

use rand::Rng;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::*;
use crate::diag::{Code, Problem, Result};
use crate::plan::Plan;

pub(super) fn parse_month(s: &str) -> Option<Month> {
    let (y, m) = s.split_once('-')?;
    let (y, m): (i32, i32) = (y.parse().ok()?, m.parse().ok()?);
    ((1..=12).contains(&m) && (1000..=9000).contains(&y)).then_some(y * 12 + m - 1)
}

pub(super) fn month_name(m: Month) -> String {
    format!("{:04}-{:02}", m.div_euclid(12), m.rem_euclid(12) + 1)
}

pub(super) fn first_day(m: Month) -> NaiveDate {
    NaiveDate::from_ymd_opt(m.div_euclid(12), (m.rem_euclid(12) + 1) as u32, 1)
        .expect("a month between years 0 and 9999")
}

pub(super) fn days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

/// Microseconds since the epoch of a time `seconds` into month `m`.
pub(super) fn micros(m: Month, seconds: i64) -> i64 {
    (days(first_day(m)) as i64 * 86_400 + seconds) * 1_000_000
}

/// One value of one column; arrays are built when a row is written.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum V {
    Null,
    Int(i64),
    Str(String),
    Date(i32),
    Ts(i64),
    List(Vec<V>),
}

impl V {
    pub(super) fn as_int(&self) -> Option<i64> {
        match self {
            V::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            V::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Where the columns the generator gives meaning to sit in the summary schema, and
/// what the pipeline's vars say.
pub(super) struct Layout {
    pub(super) summary: SchemaRef,
    pub(super) latest: SchemaRef,
    pub(super) accounts: SchemaRef,
    pub(super) hist_rpt: Option<SchemaRef>,
    pub(super) idx: BTreeMap<String, usize>,
    /// (array column, the scalar column feeding it)
    pub(super) rolling: Vec<(usize, usize)>,
    pub(super) grid: Option<usize>,
    pub(super) history_length: usize,
    /// accounts column → (summary column, preparation)
    pub(super) mapping: BTreeMap<String, (String, Option<String>)>,
    pub(super) sentinels: Vec<i64>,
    pub(super) delete_codes: Vec<String>,
    pub(super) hi_credit_types: Vec<String>,
}

impl Layout {
    pub(super) fn new(plan: &Plan) -> Result<Self> {
        let schema = |name: &str| -> Result<SchemaRef> {
            let t = table(plan, name)?;
            t.delta_schema()
                .map(Arc::new)
                .map_err(|e| Problem::invalid(Code::GenerateSchema, e))
        };
        let summary = schema("summary")?;
        let idx: BTreeMap<String, usize> = summary
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name().clone(), i))
            .collect();
        let var = |name: &str| plan.vars.get(name).cloned().unwrap_or(Value::Null);
        let strings = |v: Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        };
        let field = |m: &Value, k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
        let column = |name: &str| -> Result<usize> {
            idx.get(name).copied().ok_or_else(|| {
                Problem::invalid(
                    Code::GenerateSchema,
                    format!("the pipeline's `summary` table has no column `{name}`"),
                )
            })
        };
        let mut rolling = Vec::new();
        for r in var("rolling").as_array().into_iter().flatten() {
            let (Some(array), Some(from)) = (field(r, "array"), field(r, "from")) else {
                continue;
            };
            rolling.push((column(&array)?, column(&from)?));
        }
        let mapping = var("columns")
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some((field(c, "from")?, (field(c, "to")?, field(c, "prep")))))
            .collect();
        let latest = schema("latest_summary")?;
        if latest.fields() != summary.fields() {
            return Err(Problem::invalid(
                Code::GenerateSchema,
                "`latest_summary` must have the columns of `summary` (spec §1.4), in the same order",
            ));
        }
        for required in [
            "cons_acct_key",
            "rpt_as_of_mo",
            "base_ts",
            "soft_del_cd",
            "days_past_due",
            "asset_class_cd",
            "payment_rating_cd",
        ] {
            column(required)?;
        }
        Ok(Layout {
            latest,
            accounts: schema("accounts")?,
            hist_rpt: match plan
                .tables
                .iter()
                .any(|t| t.name == "consumer_account_hist_rpt")
            {
                true => Some(schema("consumer_account_hist_rpt")?),
                false => None,
            },
            grid: idx.get("payment_history_grid").copied(),
            rolling,
            history_length: var("history_length").as_u64().unwrap_or(36) as usize,
            mapping,
            sentinels: strings(var("sentinels"))
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            delete_codes: strings(var("delete_codes")),
            hi_credit_types: strings(var("orig_loan_hi_credit_types")),
            idx,
            summary,
        })
    }

    pub(super) fn col(&self, name: &str) -> Option<usize> {
        self.idx.get(name).copied()
    }
}

/// One stored summary row: its scalar values (array columns are Null here).
#[derive(Clone)]
pub(super) struct Row {
    pub(super) values: Vec<V>,
    pub(super) deleted: bool,
}

/// An account's history: rows by month offset from the first month.
pub(super) struct Account {
    pub(super) rows: Vec<Option<Row>>,
}

impl Account {
    pub(super) fn latest(&self) -> Option<(usize, &Row)> {
        let present = || {
            self.rows
                .iter()
                .enumerate()
                .rev()
                .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
        };
        present()
            .find(|(_, r)| !r.deleted)
            .or_else(|| present().next())
    }
}

/// Spec §1.2: the rating from days past due, or from the asset class when negative.
pub(super) fn payment_rating(dpd: Option<i64>, asset_class: Option<&str>) -> Option<&'static str> {
    let dpd = dpd?;
    Some(match dpd {
        0..=29 => "0",
        30..=59 => "1",
        60..=89 => "2",
        90..=119 => "3",
        120..=149 => "4",
        150..=179 => "5",
        180.. => "6",
        _ => match asset_class? {
            "1" | "01" | "S" => "S",
            "2" | "02" | "B" => "B",
            "3" | "03" | "D" => "D",
            "4" | "04" => "L",
            "5" | "05" | "M" => "M",
            "0" => "0",
            "6" => "6",
            "G" => "G",
            "L" => "L",
            "C" => "C",
            _ => return None,
        },
    })
}

/// Draws plausible values: stable per account except the monthly ones.
pub(super) struct Values<'l> {
    pub(super) layout: &'l Layout,
    pub(super) rng: ChaCha8Rng,
}

impl Values<'_> {
    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    /// A value for a column with no special meaning, by type.
    pub(super) fn generic(&mut self, name: &str, dt: &DataType) -> V {
        if self.chance(0.03) {
            return V::Null;
        }
        match dt {
            DataType::Int32 | DataType::Int64 => V::Int(self.rng.random_range(0..50_000)),
            DataType::Utf8 => match name {
                "acct_type_dtl_cd" => {
                    let codes = ["5", "213", "214", "220", "224", "100", "121", "130", "999"];
                    V::Str(codes[self.rng.random_range(0..codes.len())].into())
                }
                "asset_class_cd" => {
                    let codes = ["1", "2", "3", "4", "5", "S", "B", "D", "M", "0", "L", "X"];
                    V::Str(codes[self.rng.random_range(0..codes.len())].into())
                }
                _ => V::Str(self.rng.random_range(0..10).to_string()),
            },
            DataType::Date32 => {
                V::Date(days(first_day(2005 * 12)) + self.rng.random_range(0..7000))
            }
            _ => V::Null,
        }
    }

    /// The stable part of an account: every scalar column of `summary`.
    pub(super) fn profile(&mut self, key: i64) -> Vec<V> {
        let layout = self.layout;
        let mut values: Vec<V> = layout
            .summary
            .fields()
            .iter()
            .map(|f| self.generic(f.name(), f.data_type()))
            .collect();
        values[layout.idx["cons_acct_key"]] = V::Int(key);
        values[layout.idx["soft_del_cd"]] = V::Null;
        values
    }

    /// The account's row for month `m`, reported at `ts`, continuing `previous`.
    pub(super) fn month(
        &mut self,
        profile: &[V],
        previous: Option<&[V]>,
        m: Month,
        ts: i64,
    ) -> Vec<V> {
        let layout = self.layout;
        let mut v = profile.to_vec();
        let set = |v: &mut Vec<V>, name: &str, x: V| {
            if let Some(i) = layout.col(name) {
                v[i] = x;
            }
        };
        let balance = previous
            .and_then(|p| layout.col("balance_am").and_then(|i| p[i].as_int()))
            .unwrap_or_else(|| self.rng.random_range(0..100_000));
        let balance = (balance + self.rng.random_range(-2_000..=2_500)).max(0);
        set(&mut v, "balance_am", V::Int(balance));
        let paid = self.rng.random_range(0..=balance.min(5_000));
        set(&mut v, "actual_payment_am", V::Int(paid));
        let dpd = match self.rng.random_range(0..100) {
            0..=84 => 0,
            85..=89 => 35,
            90..=92 => 65,
            93..=94 => 95,
            95 => 125,
            96 => 155,
            97 => 200,
            _ => -1,
        };
        set(&mut v, "days_past_due", V::Int(dpd));
        set(
            &mut v,
            "past_due_am",
            V::Int(if dpd > 0 { balance / 10 } else { 0 }),
        );
        if self.chance(0.05) {
            let g = self.generic("asset_class_cd", &DataType::Utf8);
            set(&mut v, "asset_class_cd", g);
        }
        set(&mut v, "acct_dt", V::Date(days(first_day(m))));
        set(&mut v, "last_payment_dt", V::Date(days(first_day(m)) + 14));
        set(&mut v, "rpt_as_of_mo", V::Str(month_name(m)));
        set(&mut v, "soft_del_cd", V::Null);
        set(&mut v, "base_ts", V::Ts(ts));
        self.derive(&mut v);
        v
    }

    /// §1.2's derived columns, from the row's own values.
    pub(super) fn derive(&self, v: &mut [V]) {
        let layout = self.layout;
        let dpd = v[layout.idx["days_past_due"]].as_int();
        let asset = v[layout.idx["asset_class_cd"]].as_str().map(str::to_string);
        v[layout.idx["payment_rating_cd"]] =
            payment_rating(dpd, asset.as_deref()).map_or(V::Null, |r| V::Str(r.into()));
        if let (Some(o), Some(t), Some(h), Some(c)) = (
            layout.col("orig_loan_am"),
            layout.col("acct_type_dtl_cd"),
            layout.col("hi_credit_am"),
            layout.col("credit_limit_am"),
        ) {
            let hi = v[t]
                .as_str()
                .is_some_and(|t| layout.hi_credit_types.iter().any(|x| x == t));
            v[o] = v[if hi { h } else { c }].clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;

    #[test]
    fn months_round_trip() {
        for s in ["2025-12", "2026-01", "1999-07"] {
            assert_eq!(month_name(parse_month(s).unwrap()), s);
        }
        assert_eq!(parse_month("2026-13"), None);
        assert_eq!(parse_month("99999-01"), None);
        assert_eq!(month_name(parse_month("2026-01").unwrap() - 1), "2025-12");
        assert_eq!(first_day(parse_month("2026-02").unwrap()).day(), 1);
    }

    #[test]
    fn ratings_follow_spec_1_2() {
        assert_eq!(payment_rating(Some(0), None), Some("0"));
        assert_eq!(payment_rating(Some(59), None), Some("1"));
        assert_eq!(payment_rating(Some(180), None), Some("6"));
        assert_eq!(payment_rating(Some(-1), Some("02")), Some("B"));
        assert_eq!(payment_rating(Some(-1), Some("4")), Some("L"));
        assert_eq!(payment_rating(Some(-1), Some("X")), None);
        assert_eq!(payment_rating(None, Some("S")), None);
    }
}
