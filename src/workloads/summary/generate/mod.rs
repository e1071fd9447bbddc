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

use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use rand_chacha::ChaCha8Rng;

use crate::diag::{Code, Problem, Result};
use crate::plan::{Plan, TablePlan};

mod batch;
mod next;
mod rows;
mod values;

pub use next::next_batch;

use batch::*;
use rows::*;
use values::*;

/// Accounts generated and written per commit: bounds memory (about 50 MB of Arrow
/// data per 1,000 accounts of 36 months) and gives each month partition one file
/// per chunk, with disjoint key ranges, so key bounds prune files.
const ACCOUNTS_PER_CHUNK: usize = 10_000;

/// What to generate.
#[derive(Clone, Debug)]
pub struct SummaryOptions {
    /// A directory or an object store URL (`s3://bucket/path`).
    pub warehouse: String,
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
        if self.first_month.is_empty() {
            // A next batch: no history was written.
            writeln!(
                f,
                "accounts        {:>10} rows appended: the batch for {} ({} accounts in latest_summary), by kind:",
                self.batch_rows, self.batch_month, self.latest_rows
            )?;
            for (kind, n) in &self.batch {
                writeln!(f, "  {kind:<36} {n:>8}")?;
            }
            return Ok(());
        }
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

fn table<'p>(plan: &'p Plan, name: &str) -> Result<&'p TablePlan> {
    plan.tables.iter().find(|t| t.name == name).ok_or_else(|| {
        Problem::invalid(
            Code::GenerateSchema,
            format!(
                "the pipeline has no table `{name}`: \
                 `generate summary` needs summary, latest_summary and accounts"
            ),
        )
    })
}

/// Writes batches to a table, creating it from its declared schema.
async fn append(t: &TablePlan, batches: Vec<RecordBatch>) -> Result<usize> {
    let table = t
        .open_or_create()
        .await
        .map_err(|e| Problem::failed(Code::GenerateWrite, e))?;
    let table = table
        .write(batches)
        .with_writer_properties(crate::delta::writer_properties())
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .await
        .map_err(|e| Problem::failed(Code::GenerateWrite, format!("`{}`: {e}", t.name)))?;
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
            Code::BadMonth,
            format!(
                "--last-month `{}` is not a month YYYY-MM (years 1000 to 9000)",
                options.last_month
            ),
        )
    })?;
    if options.months == 0 || options.months > 600 {
        return Err(Problem::invalid(
            Code::BadMonths,
            "--months must be between 1 and 600",
        ));
    }
    let vars = [("warehouse".to_string(), options.warehouse.clone())];
    let plan = crate::build_plan(pipeline, root, &vars).await?;
    let layout = Layout::new(&plan)?;
    prepare_locations(&plan, options.replace, options.hist_rpt).await?;
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
        write.map_err(|e| Problem::failed(Code::GenerateWrite, e.to_string()))??;
    out.files.insert("summary".into(), summary);
    out.files.insert("latest_summary".into(), latest);
    progress(done, total);
    Ok(())
}

/// Refuses to write over existing tables unless asked to replace them.
async fn prepare_locations(plan: &Plan, replace: bool, hist_rpt: bool) -> Result<()> {
    let hist = ["consumer_account_hist_rpt"];
    let extra: &[&str] = if hist_rpt { &hist } else { &[] };
    for &name in ["summary", "latest_summary", "accounts"]
        .iter()
        .chain(extra)
    {
        let t = table(plan, name)?;
        let url = crate::delta::table_url(&t.location)
            .map_err(|e| Problem::invalid(Code::GenerateLocation, e.to_string()))?;
        let exists = match url.to_file_path() {
            Ok(path) => path.exists(),
            Err(()) => crate::delta::open_if_exists(&url)
                .await
                .map_err(|e| Problem::failed(Code::GenerateLocation, format!("`{name}`: {e}")))?
                .is_some(),
        };
        if exists {
            if !replace {
                return Err(Problem::invalid(
                    Code::GenerateExists,
                    format!("{} already exists", t.location),
                )
                .help("choose another --warehouse, or pass --replace to overwrite its tables"));
            }
            crate::delta::remove_all(&url)
                .await
                .map_err(|e| Problem::failed(Code::GenerateLocation, e.to_string()))?;
        }
    }
    Ok(())
}

/// An account's history over `months` months from `first`: most accounts span
/// them all, some open later or close early; a few months are missing (gaps) and
/// about 1% of rows are soft-deleted (a delete code of the layout).
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
