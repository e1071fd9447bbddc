//! `sqlplan generate summary`: a synthetic warehouse for the summary pipeline.
//!
//! Writes a consistent history — `summary` (one row per account per month,
//! partitioned by month, clustered by account key) and `latest_summary` — and an
//! `accounts` batch with the record mix of spec §3.1 plus duplicates, sentinels, bad
//! dates, soft deletes, stale records and records for months 2–40 back.
//!
//! Table names, locations, schemas, the column mapping, the rolling columns, the
//! sentinels and the delete codes come from the pipeline file itself, so the data
//! follows the pipeline when an analyst edits it. "Consistent" means what the
//! sequential rule (§3) would have produced from the history's records applied in
//! month order: element `p` of the row at month `S` holds the rolling value of month
//! `S − p` when that month has a row that is not soft-deleted (element 0 is the row's
//! own value), and `latest_summary` is each account's newest non-deleted row.
//! The same arguments and seed always give the same rows.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, Date32Builder, Int32Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::diag::{Problem, Result};
use crate::plan::{Plan, TablePlan};

/// Accounts generated and written per commit: bounds memory (about 50 MB of Arrow
/// data per 1,000 accounts of 36 months) and gives each month partition one file
/// per chunk, with disjoint key ranges, so key bounds prune files.
const ACCOUNTS_PER_CHUNK: usize = 10_000;

/// What to generate.
#[derive(Clone, Debug)]
pub struct SummaryOptions {
    pub warehouse: PathBuf,
    pub accounts: usize,
    pub months: usize,
    /// The last month of the history (`YYYY-MM`); the batch reports the month after.
    pub last_month: String,
    pub batch_records: usize,
    pub seed: u64,
    /// Replace the tables if they exist.
    pub replace: bool,
    /// Also write `consumer_account_hist_rpt` rows (spec §2.1) for some records.
    pub hist_rpt: bool,
    /// Records no run may process (months that are not `YYYY-MM`, no base_ts),
    /// added to the batch for the pipeline's checks to quarantine.
    pub bad_records: usize,
}

/// What was written, for the command's output.
#[derive(Debug, Default)]
pub struct Generated {
    pub summary_rows: usize,
    pub deleted_rows: usize,
    pub latest_rows: usize,
    pub files: BTreeMap<String, usize>,
    /// Batch records by kind (what the generator meant; the run's report classifies).
    pub batch: BTreeMap<&'static str, usize>,
    pub batch_rows: usize,
    pub hist_rows: usize,
    pub first_month: String,
    pub last_month: String,
    pub batch_month: String,
}

impl fmt::Display for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "summary         {:>10} rows ({} soft-deleted), months {} to {}, {} files",
            self.summary_rows,
            self.deleted_rows,
            self.first_month,
            self.last_month,
            self.files.get("summary").unwrap_or(&0)
        )?;
        writeln!(
            f,
            "latest_summary  {:>10} rows, {} files",
            self.latest_rows,
            self.files.get("latest_summary").unwrap_or(&0)
        )?;
        writeln!(
            f,
            "accounts        {:>10} rows: the batch for {} (and late records), by kind:",
            self.batch_rows, self.batch_month
        )?;
        for (kind, n) in &self.batch {
            writeln!(f, "  {kind:<36} {n:>8}")?;
        }
        if self.hist_rows > 0 {
            writeln!(
                f,
                "consumer_account_hist_rpt {:>6} rows: hist rows for some records' months",
                self.hist_rows
            )?;
        }
        Ok(())
    }
}

/// A month as a count of months since year 0.
type Month = i32;

fn parse_month(s: &str) -> Option<Month> {
    let (y, m) = s.split_once('-')?;
    let (y, m): (i32, i32) = (y.parse().ok()?, m.parse().ok()?);
    ((1..=12).contains(&m) && (1000..=9000).contains(&y)).then_some(y * 12 + m - 1)
}

fn month_name(m: Month) -> String {
    format!("{:04}-{:02}", m.div_euclid(12), m.rem_euclid(12) + 1)
}

fn first_day(m: Month) -> NaiveDate {
    NaiveDate::from_ymd_opt(m.div_euclid(12), (m.rem_euclid(12) + 1) as u32, 1)
        .expect("a month between years 0 and 9999")
}

fn days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

/// Microseconds since the epoch of a time `seconds` into month `m`.
fn micros(m: Month, seconds: i64) -> i64 {
    (days(first_day(m)) as i64 * 86_400 + seconds) * 1_000_000
}

/// One value of one column; arrays are built when a row is written.
#[derive(Clone, Debug, PartialEq)]
enum V {
    Null,
    Int(i64),
    Str(String),
    Date(i32),
    Ts(i64),
    List(Vec<V>),
}

impl V {
    fn as_int(&self) -> Option<i64> {
        match self {
            V::Int(i) => Some(*i),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            V::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Where the columns the generator gives meaning to sit in the summary schema, and
/// what the pipeline's vars say.
struct Layout {
    summary: SchemaRef,
    latest: SchemaRef,
    accounts: SchemaRef,
    hist_rpt: Option<SchemaRef>,
    idx: BTreeMap<String, usize>,
    /// (array column, the scalar column feeding it)
    rolling: Vec<(usize, usize)>,
    grid: Option<usize>,
    history_length: usize,
    /// accounts column → (summary column, preparation)
    mapping: BTreeMap<String, (String, Option<String>)>,
    sentinels: Vec<i64>,
    delete_codes: Vec<String>,
    hi_credit_types: Vec<String>,
}

impl Layout {
    fn new(plan: &Plan) -> Result<Self> {
        let schema = |name: &str| -> Result<SchemaRef> {
            let t = table(plan, name)?;
            t.delta_schema()
                .map(Arc::new)
                .map_err(|e| Problem::invalid("generate_schema", e))
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
                    "generate_schema",
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
                "generate_schema",
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

    fn col(&self, name: &str) -> Option<usize> {
        self.idx.get(name).copied()
    }
}

fn table<'p>(plan: &'p Plan, name: &str) -> Result<&'p TablePlan> {
    plan.tables.iter().find(|t| t.name == name).ok_or_else(|| {
        Problem::invalid(
            "generate_schema",
            format!("the pipeline has no table `{name}`: `generate summary` needs summary, latest_summary and accounts"),
        )
    })
}

/// One stored summary row: its scalar values (array columns are Null here).
#[derive(Clone)]
struct Row {
    values: Vec<V>,
    deleted: bool,
}

/// An account's history: rows by month offset from the first month.
struct Account {
    rows: Vec<Option<Row>>,
}

impl Account {
    fn latest(&self) -> Option<(usize, &Row)> {
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
fn payment_rating(dpd: Option<i64>, asset_class: Option<&str>) -> Option<&'static str> {
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
struct Values<'l> {
    layout: &'l Layout,
    rng: ChaCha8Rng,
}

impl Values<'_> {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    /// A value for a column with no special meaning, by type.
    fn generic(&mut self, name: &str, dt: &DataType) -> V {
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
    fn profile(&mut self, key: i64) -> Vec<V> {
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
    fn month(&mut self, profile: &[V], previous: Option<&[V]>, m: Month, ts: i64) -> Vec<V> {
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
    fn derive(&self, v: &mut [V]) {
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

/// Column builders for one table.
enum Column {
    Int64(Int64Builder),
    Int32(Int32Builder),
    Str(StringBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder, Option<Arc<str>>),
    IntList(ListBuilder<Int32Builder>),
    StrList(ListBuilder<StringBuilder>),
}

impl Column {
    fn new(field: &Field) -> Result<Self> {
        Ok(match field.data_type() {
            DataType::Int64 => Column::Int64(Int64Builder::new()),
            DataType::Int32 => Column::Int32(Int32Builder::new()),
            DataType::Utf8 => Column::Str(StringBuilder::new()),
            DataType::Date32 => Column::Date(Date32Builder::new()),
            DataType::Timestamp(_, tz) => {
                Column::Ts(TimestampMicrosecondBuilder::new(), tz.clone())
            }
            DataType::List(item) if item.data_type() == &DataType::Int32 => {
                Column::IntList(ListBuilder::new(Int32Builder::new()).with_field(item.clone()))
            }
            DataType::List(item) if item.data_type() == &DataType::Utf8 => {
                Column::StrList(ListBuilder::new(StringBuilder::new()).with_field(item.clone()))
            }
            other => {
                return Err(Problem::invalid(
                    "generate_schema",
                    format!(
                        "column `{}`: the generator does not make values of type {other}",
                        field.name()
                    ),
                ))
            }
        })
    }

    fn push(&mut self, v: &V) {
        match (self, v) {
            (Column::Int64(b), V::Int(i)) => b.append_value(*i),
            (Column::Int32(b), V::Int(i)) => b.append_value(*i as i32),
            (Column::Str(b), V::Str(s)) => b.append_value(s),
            (Column::Date(b), V::Date(d)) => b.append_value(*d),
            (Column::Ts(b, _), V::Ts(t)) => b.append_value(*t),
            (Column::IntList(b), V::List(items)) => {
                for i in items {
                    b.values().append_option(i.as_int().map(|i| i as i32));
                }
                b.append(true);
            }
            (Column::StrList(b), V::List(items)) => {
                for s in items {
                    b.values().append_option(s.as_str());
                }
                b.append(true);
            }
            (Column::Int64(b), _) => b.append_null(),
            (Column::Int32(b), _) => b.append_null(),
            (Column::Str(b), _) => b.append_null(),
            (Column::Date(b), _) => b.append_null(),
            (Column::Ts(b, _), _) => b.append_null(),
            (Column::IntList(b), _) => b.append(false),
            (Column::StrList(b), _) => b.append(false),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Column::Int64(mut b) => Arc::new(b.finish()),
            Column::Int32(mut b) => Arc::new(b.finish()),
            Column::Str(mut b) => Arc::new(b.finish()),
            Column::Date(mut b) => Arc::new(b.finish()),
            Column::Ts(mut b, tz) => Arc::new(b.finish().with_timezone_opt(tz)),
            Column::IntList(mut b) => Arc::new(b.finish()),
            Column::StrList(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Rows of one table, appended column by column.
struct Rows {
    schema: SchemaRef,
    columns: Vec<Column>,
}

impl Rows {
    fn new(schema: &SchemaRef) -> Result<Self> {
        Ok(Rows {
            schema: schema.clone(),
            columns: schema
                .fields()
                .iter()
                .map(|f| Column::new(f))
                .collect::<Result<_>>()?,
        })
    }

    fn len(&self) -> usize {
        match self.columns.first() {
            Some(Column::Int64(b)) => b.len(),
            Some(Column::Int32(b)) => b.len(),
            Some(Column::Str(b)) => b.len(),
            Some(Column::Date(b)) => b.len(),
            Some(Column::Ts(b, _)) => b.len(),
            Some(Column::IntList(b)) => b.len(),
            Some(Column::StrList(b)) => b.len(),
            None => 0,
        }
    }

    fn push(&mut self, values: &[V]) {
        for (c, v) in self.columns.iter_mut().zip(values) {
            c.push(v);
        }
    }

    /// Pushes a row given by column name (missing names are NULL).
    fn push_named(&mut self, values: &BTreeMap<String, V>) {
        let row: Vec<V> = self
            .schema
            .fields()
            .iter()
            .map(|f| values.get(f.name()).cloned().unwrap_or(V::Null))
            .collect();
        self.push(&row);
    }

    fn finish(self) -> Result<RecordBatch> {
        RecordBatch::try_new(
            self.schema,
            self.columns.into_iter().map(Column::finish).collect(),
        )
        .map_err(|e| Problem::failed("generate_write", e.to_string()))
    }
}

/// The full summary row at month offset `s`: the stored scalars plus the arrays
/// (element p = the rolling value of month s − p if that row exists and is not
/// deleted; element 0 is the row's own) and the grid.
fn summary_row(layout: &Layout, account: &Account, s: usize) -> Vec<V> {
    let row = account.rows[s].as_ref().expect("a row at s");
    let mut values = row.values.clone();
    for &(array, from) in &layout.rolling {
        let items = (0..layout.history_length)
            .map(
                |p| match s.checked_sub(p).and_then(|m| account.rows[m].as_ref()) {
                    Some(r) if p == 0 || !r.deleted => r.values[from].clone(),
                    _ => V::Null,
                },
            )
            .collect();
        values[array] = V::List(items);
    }
    if let (Some(grid), Some(&(ratings, _))) = (
        layout.grid,
        layout
            .rolling
            .iter()
            .find(|(_, from)| *from == layout.idx["payment_rating_cd"]),
    ) {
        if let V::List(items) = &values[ratings] {
            values[grid] = V::Str(items.iter().map(|v| v.as_str().unwrap_or("?")).collect());
        }
    }
    values
}

/// Writes batches to a table, creating it from its declared schema.
async fn append(t: &TablePlan, batches: Vec<RecordBatch>) -> Result<usize> {
    let table = t
        .open_or_create()
        .await
        .map_err(|e| Problem::failed("generate_write", e))?;
    let table = table
        .write(batches)
        .with_writer_properties(crate::delta::writer_properties())
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .await
        .map_err(|e| Problem::failed("generate_write", format!("`{}`: {e}", t.name)))?;
    Ok(table
        .snapshot()
        .map(|s| s.log_data().num_files())
        .unwrap_or_default())
}

/// Generates the warehouse. `progress` is told the accounts done so far.
pub async fn summary(
    pipeline: &Path,
    root: Option<&Path>,
    options: &SummaryOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<Generated> {
    let last = parse_month(&options.last_month).ok_or_else(|| {
        Problem::invalid(
            "bad_month",
            format!(
                "--last-month `{}` is not a month YYYY-MM (years 1000 to 9000)",
                options.last_month
            ),
        )
    })?;
    if options.months == 0 || options.months > 600 {
        return Err(Problem::invalid(
            "bad_months",
            "--months must be between 1 and 600",
        ));
    }
    let vars = [(
        "warehouse".to_string(),
        options.warehouse.to_string_lossy().into_owned(),
    )];
    let plan = crate::build_plan(pipeline, root, &vars).await?;
    let layout = Layout::new(&plan)?;
    prepare_locations(&plan, options.replace, options.hist_rpt)?;
    let first = last - options.months as i32 + 1;
    let mut values = Values {
        layout: &layout,
        rng: ChaCha8Rng::seed_from_u64(options.seed),
    };
    let mut batch = Batch::new(&layout, options, last + 1)?;
    let mut out = Generated {
        first_month: month_name(first),
        last_month: month_name(last),
        batch_month: month_name(last + 1),
        ..Default::default()
    };
    let key_of = |i: usize| 1_000_001 + i as i64;
    let mut writing: Option<(ChunkWrite, usize)> = None;
    for chunk_start in (0..options.accounts).step_by(ACCOUNTS_PER_CHUNK) {
        let chunk_end = (chunk_start + ACCOUNTS_PER_CHUNK).min(options.accounts);
        let mut summary = Rows::new(&layout.summary)?;
        let mut latest = Rows::new(&layout.latest)?;
        for i in chunk_start..chunk_end {
            let account = history(&mut values, key_of(i), first, options.months);
            for s in 0..options.months {
                if let Some(row) = &account.rows[s] {
                    summary.push(&summary_row(&layout, &account, s));
                    out.deleted_rows += usize::from(row.deleted);
                }
            }
            if let Some((s, _)) = account.latest() {
                latest.push(&summary_row(&layout, &account, s));
            }
            batch.existing_account(&mut values, &account, first);
        }
        out.summary_rows += summary.len();
        out.latest_rows += latest.len();
        let batches = (summary.finish()?, latest.finish()?);
        // The previous chunk's write ran while this chunk was generated (two cores:
        // about twice as fast); one write at a time, so commits never conflict.
        if let Some((write, done)) = writing.take() {
            record_write(&mut out, write.await, done, options.accounts, progress)?;
        }
        let tables = (
            table(&plan, "summary")?.clone(),
            table(&plan, "latest_summary")?.clone(),
        );
        writing = Some((
            tokio::spawn(async move {
                let summary = append(&tables.0, vec![batches.0]).await?;
                let latest = append(&tables.1, vec![batches.1]).await?;
                Ok((summary, latest))
            }),
            chunk_end,
        ));
    }
    if let Some((write, done)) = writing.take() {
        record_write(&mut out, write.await, done, options.accounts, progress)?;
    }
    let first_new = key_of(options.accounts);
    batch.new_accounts(&mut values, first_new);
    batch.bad_records(&mut values, options.bad_records, first_new + 1_000_000);
    out.batch_rows = batch.rows.len();
    out.batch = batch.kinds.clone();
    let files = append(table(&plan, "accounts")?, vec![batch.rows.finish()?]).await?;
    out.files.insert("accounts".into(), files);
    if let Some(hist) = batch.hist {
        out.hist_rows = hist.len();
        let t = table(&plan, "consumer_account_hist_rpt")?;
        let files = append(t, vec![hist.finish()?]).await?;
        out.files.insert(t.name.clone(), files);
    }
    Ok(out)
}

/// A chunk's write in progress: the files of summary and latest_summary after it.
type ChunkWrite = tokio::task::JoinHandle<Result<(usize, usize)>>;

/// Takes the result of a chunk's write: file counts, then progress.
fn record_write(
    out: &mut Generated,
    write: std::result::Result<Result<(usize, usize)>, tokio::task::JoinError>,
    done: usize,
    total: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<()> {
    let (summary, latest) =
        write.map_err(|e| Problem::failed("generate_write", e.to_string()))??;
    out.files.insert("summary".into(), summary);
    out.files.insert("latest_summary".into(), latest);
    progress(done, total);
    Ok(())
}

/// Refuses to write over existing tables unless asked to replace them.
fn prepare_locations(plan: &Plan, replace: bool, hist_rpt: bool) -> Result<()> {
    let hist = ["consumer_account_hist_rpt"];
    let extra: &[&str] = if hist_rpt { &hist } else { &[] };
    for &name in ["summary", "latest_summary", "accounts"]
        .iter()
        .chain(extra)
    {
        let t = table(plan, name)?;
        let url = crate::delta::table_url(&t.location)
            .map_err(|e| Problem::invalid("generate_location", e))?;
        let Ok(path) = url.to_file_path() else {
            return Err(Problem::invalid(
                "generate_location",
                format!(
                    "`{name}` at {}: the generator writes local tables only",
                    t.location
                ),
            ));
        };
        if path.exists() {
            if !replace {
                return Err(Problem::invalid(
                    "generate_exists",
                    format!("{} already exists", path.display()),
                )
                .help("choose another --warehouse, or pass --replace to overwrite its tables"));
            }
            std::fs::remove_dir_all(&path).map_err(|e| {
                Problem::failed(
                    "generate_location",
                    format!("cannot remove {}: {e}", path.display()),
                )
            })?;
        }
    }
    Ok(())
}

/// An account's history over `months` months from `first`: most accounts span
/// them all, some open later or close early; a few months are missing (gaps) and
/// about 1% of rows are soft-deleted.
fn history(values: &mut Values, key: i64, first: Month, months: usize) -> Account {
    let start = if values.chance(0.7) {
        0
    } else {
        values.rng.random_range(0..months)
    };
    let end = if values.chance(0.05) {
        values.rng.random_range(start..months)
    } else {
        months - 1
    };
    let profile = values.profile(key);
    let mut rows: Vec<Option<Row>> = vec![None; months];
    let mut previous: Option<Vec<V>> = None;
    for (s, slot) in rows.iter_mut().enumerate().take(end + 1).skip(start) {
        if s != start && s != end && values.chance(0.02) {
            continue;
        }
        let m = first + s as i32;
        let ts = micros(m + 1, values.rng.random_range(86_400..10 * 86_400));
        let mut row = values.month(&profile, previous.as_deref(), m, ts);
        let deleted = values.chance(0.01);
        if deleted {
            let codes = &values.layout.delete_codes;
            row[values.layout.idx["soft_del_cd"]] = codes
                .get(values.rng.random_range(0..codes.len().max(1)))
                .map_or(V::Null, |c| V::Str(c.clone()));
        }
        previous = Some(row.clone());
        *slot = Some(Row {
            values: row,
            deleted,
        });
    }
    Account { rows }
}

/// The `accounts` batch being built, with the kind of every record.
struct Batch<'l> {
    layout: &'l Layout,
    rows: Rows,
    /// hist_rpt rows, when asked for.
    hist: Option<Rows>,
    kinds: BTreeMap<&'static str, usize>,
    /// The month the batch reports (the month after the history).
    month: Month,
    /// Expected records per existing account for each kind.
    forward: f64,
    late: f64,
    deletes: f64,
    new_single: usize,
    new_multi: usize,
}

impl<'l> Batch<'l> {
    /// Spec §3.1's typical mix: 90% forward, 5% new accounts with one month, 4%
    /// backfills and corrections, 1% new accounts with several months; deletes are
    /// 0.5% on top.
    fn new(layout: &'l Layout, options: &SummaryOptions, month: Month) -> Result<Self> {
        let n = options.batch_records as f64;
        let accounts = options.accounts.max(1) as f64;
        Ok(Batch {
            layout,
            rows: Rows::new(&layout.accounts)?,
            hist: match (&layout.hist_rpt, options.hist_rpt) {
                (Some(schema), true) => Some(Rows::new(schema)?),
                (None, true) => {
                    return Err(Problem::invalid(
                        "generate_schema",
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
    fn existing_account(&mut self, values: &mut Values, account: &Account, first: Month) {
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
    fn new_accounts(&mut self, values: &mut Values, first_key: i64) {
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
    fn bad_records(&mut self, values: &mut Values, n: usize, first_key: i64) {
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
    fn record(&mut self, values: &mut Values, kind: &'static str, row: Vec<V>) {
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
    fn hist_row(&mut self, values: &mut Values, row: &[V], base_ts: i64) {
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

    fn source_name(&self, summary_column: &str) -> Option<String> {
        self.layout
            .mapping
            .iter()
            .find(|(_, (to, _))| to == summary_column)
            .map(|(from, _)| from.clone())
    }

    /// The row's values under their source names, with preparation noise.
    fn to_source(&self, values: &mut Values, row: &[V]) -> BTreeMap<String, V> {
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
fn count(values: &mut Values, rate: f64) -> usize {
    let whole = rate.floor();
    whole as usize + usize::from(values.chance(rate - whole))
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
