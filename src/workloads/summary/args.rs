//! The arguments of the summary workload's commands (`demo`, `generate summary`,
//! `bench summary`); the CLI parses them, the workload runs them.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct BenchSummaryArgs {
    /// Accounts in the generated history (with --from: the size it was generated
    /// with, for the report).
    #[arg(long, default_value_t = 20_000)]
    pub accounts: usize,
    /// Months of history.
    #[arg(long, default_value_t = 36)]
    pub months: usize,
    /// Records in the batch [default: as many as accounts].
    #[arg(long)]
    pub batch_records: Option<usize>,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also generate consumer_account_hist_rpt rows (spec §2.1).
    #[arg(long)]
    pub hist_rpt: bool,
    /// Copy this generated warehouse instead of generating one.
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// Monthly batches run in a row on the warehouse: after the first, each next
    /// month's batch is generated from latest_summary and run; every run is measured
    /// with the size of `summary` after it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=36))]
    pub batches: u32,
    /// Where the temporary warehouse goes [default: the system's temporary directory].
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Stages running at the same time, at most [default: the number of cores].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Write the full measurements as JSON to this file.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// The pipeline to measure.
    #[arg(long, default_value = "pipelines/summary.yaml")]
    pub pipeline: PathBuf,
    /// MERGE without deletion vectors (delta-rs's copy-on-write), to compare: the
    /// tables' `deletion_vectors` is ignored.
    #[arg(long)]
    pub copy_on_write: bool,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The demo warehouse (regenerated).
    #[arg(long, value_name = "DIR", default_value = "demo-warehouse")]
    pub warehouse: PathBuf,
    /// Accounts in the generated history (the batch has as many records).
    #[arg(long, default_value_t = 5_000)]
    pub accounts: usize,
    /// Months of history.
    #[arg(long, default_value_t = 36)]
    pub months: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stages running at the same time, at most [default: the number of cores].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Also write the run's report as JSON to this file.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// The pipeline to run.
    #[arg(long, default_value = "pipelines/summary.yaml")]
    pub pipeline: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct GenerateSummaryArgs {
    /// The warehouse (the pipeline's `warehouse` variable): a directory, or an
    /// `s3://bucket/path` URL (credentials and endpoint from the AWS environment
    /// variables).
    #[arg(long, value_name = "DIR|URL")]
    pub warehouse: String,
    /// Accounts in the history.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    /// Months of history (ending with --last-month).
    #[arg(long, default_value_t = 36)]
    pub months: usize,
    /// Records in the batch [default: as many as accounts].
    #[arg(long)]
    pub batch_records: Option<usize>,
    /// The last month of the history; the batch reports the month after.
    #[arg(long, value_name = "YYYY-MM", default_value = "2025-12")]
    pub last_month: String,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Replace the tables if they already exist.
    #[arg(long)]
    pub replace: bool,
    /// Also write consumer_account_hist_rpt rows (spec §2.1) for about 5% of the
    /// records.
    #[arg(long)]
    pub hist_rpt: bool,
    /// Append the next month's batch to a warehouse the pipeline has run on (the
    /// month after latest_summary's newest), instead of generating a history.
    #[arg(long)]
    pub next_batch: bool,
    /// Add this many records no run may process (months such as '2026-13', '2026-1',
    /// 'abc' or NULL, and records without base_ts); the summary pipeline's checks
    /// quarantine them.
    #[arg(long, default_value_t = 0)]
    pub bad_records: usize,
    /// The pipeline whose tables and vars shape the data.
    #[arg(long, default_value = "pipelines/summary.yaml")]
    pub pipeline: PathBuf,
    /// Project root (as for `plan`).
    #[arg(long)]
    pub root: Option<PathBuf>,
}

impl GenerateSummaryArgs {
    pub fn options(&self) -> super::generate::SummaryOptions {
        super::generate::SummaryOptions {
            warehouse: self.warehouse.clone(),
            accounts: self.accounts,
            months: self.months,
            last_month: self.last_month.clone(),
            batch_records: self.batch_records.unwrap_or(self.accounts),
            seed: self.seed,
            replace: self.replace,
            hist_rpt: self.hist_rpt,
            bad_records: self.bad_records,
        }
    }
}
