//! What the command line accepts: the commands, their arguments and help texts
//! (clap derive). Dispatching them is `mod.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::diag::Problem;
pub use crate::workloads::summary::args::{BenchSummaryArgs, DemoArgs, GenerateSummaryArgs};

const ABOUT: &str = "A declarative SQL-plan compiler and executor for Delta Lake tables.

A pipeline is a YAML file naming tables (Delta locations) and stages in program order:
SELECT stages define relations, MERGE / INSERT / DELETE stages write tables, and
maintenance stages optimize or vacuum them. SQL lives in minijinja templates.
sqlplan validates and renders everything, binds it against the Delta schemas and
orders it into a plan that runs stages in parallel wherever their reads and writes
allow, with the same result as running them one by one.";

#[derive(Debug, Parser)]
#[command(
    name = "sqlplan",
    version,
    about = "A declarative SQL-plan compiler and executor for Delta Lake tables",
    long_about = ABOUT
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a run would do, without writing anything.
    ///
    /// Prints the stages in execution order, grouped in levels of stages that may run
    /// together; for each stage its kind, what it reads and writes, why it waits for
    /// other stages, and its rendered SQL; then, per table, every scan the run will
    /// make and whether it is full or pruned; then warnings. Only Delta logs are read.
    /// The same inputs always give byte-identical output.
    ///
    /// Every scan says how many files and bytes it will read, estimated from the Delta
    /// log (a range when a bound is only known at run time).
    ///
    /// With --baseline REF it reviews a change instead: the plan of REF (a git
    /// revision of the project, or a file saved with `plan --format json`) against
    /// the working tree's, on the same warehouse and vars — stages added, removed and
    /// reordered, each changed stage's rendered SQL as a diff, scans whose access got
    /// worse or whose estimated bytes grew, budgets crossed, warnings.
    ///
    /// Exit codes: 0 the pipeline is valid (with --baseline: and unchanged), 3 it
    /// changed (with --baseline), 2 it is invalid or crosses a budget.
    #[command(after_help = "Examples:\n  \
        sqlplan plan pipelines/examples/orders.yaml\n  \
        sqlplan plan pipelines/summary.yaml --var warehouse=/data/wh --explain\n  \
        sqlplan plan pipelines/examples/orders.yaml --format json > plan.json\n  \
        sqlplan plan pipelines/summary.yaml --baseline origin/main --format markdown \
        > review.md")]
    Plan {
        #[command(flatten)]
        input: PipelineArgs,
        /// Output format (markdown: with --baseline, for a pull-request comment).
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Review against this git revision or saved plan JSON instead of printing
        /// the plan.
        #[arg(long, value_name = "REF")]
        baseline: Option<String>,
        #[command(flatten)]
        selection: Selection,
        /// Also show DataFusion's optimized logical plan of every stage.
        #[arg(long)]
        explain: bool,
    },
    /// Run the pipeline: build the same plan as `plan`, then execute exactly it.
    ///
    /// Creates declared tables that do not exist, runs stages in parallel where the
    /// plan allows (at most --jobs at a time), commits each write to Delta, and prints
    /// a per-stage report (JSON too with --report). Progress goes to standard error.
    ///
    /// Exit codes: 0 success, 1 a stage failed (named, with its template; stages that
    /// had not started were skipped), 2 the pipeline is invalid (nothing written).
    /// A failed or killed run is resumed by the next run.
    ///
    /// On an object store (`s3://…`) one run of a pipeline at a time holds a lease
    /// (`_sqlplan/<pipeline>.lease`, 60 s, SQLPLAN_LEASE_SECONDS). Requests the store
    /// throttles, fails (5xx) or cuts are retried up to SQLPLAN_STORE_RETRIES times
    /// (10) within SQLPLAN_STORE_RETRY_SECONDS (180), with backoff from 100 ms to
    /// 15 s; a commit whose answer the store lost is found in the log and not made
    /// again (docs/object-storage.md).
    #[command(after_help = "Examples:\n  \
        sqlplan run pipelines/examples/orders.yaml --var warehouse=/tmp/wh\n  \
        sqlplan run pipelines/summary.yaml --jobs 4 --report run.json\n  \
        sqlplan run pipelines/summary.yaml --var warehouse=s3://bucket/wh \
        --engine df://127.0.0.1:50050")]
    Run {
        #[command(flatten)]
        input: PipelineArgs,
        #[command(flatten)]
        selection: Selection,
        /// Stages running at the same time, at most [default: the number of cores].
        #[arg(long)]
        jobs: Option<usize>,
        /// Also write the report as JSON to this file.
        #[arg(long, value_name = "FILE.json")]
        report: Option<PathBuf>,
        /// Materialized relations larger than this many bytes in memory are spilled
        /// to local Parquet files (removed after the run).
        #[arg(long, value_name = "BYTES", default_value_t = 2 << 30)]
        spill_threshold: u64,
        /// When the pipeline's last run did not finish, end it by restoring the tables
        /// it wrote to their versions at its start (instead of resuming it), then run.
        /// For an unfinished run that cannot be resumed: its plan or vars changed.
        #[arg(long)]
        abandon: bool,
        /// Run the query stages on an Apache Ballista cluster: `df://HOST:PORT` of a
        /// scheduler started with `sqlplan scheduler` (its executors with `sqlplan
        /// executor`). The executors write the materialized relations, run MERGE's
        /// and DELETE's passes and write the new data files and deletion vectors;
        /// this process receives counts and Delta actions and makes every commit.
        /// Tables must be where
        /// the executors can read them (e.g. `s3://…`, or local paths on one
        /// machine). A MERGE source of more than SQLPLAN_KEY_SET_LIMIT rows
        /// (5,000,000) not split by partition finds its target rows by a shuffle
        /// join instead of a key set per task.
        #[arg(long, value_name = "df://HOST:PORT")]
        engine: Option<String>,
    },
    /// List the pipeline's recent runs from the run ledger: what to look at first
    /// when a run went wrong.
    ///
    /// Every run writes a row to the ledger (`_sqlplan/runs`, a Delta table beside
    /// the tables it finishes on) when it starts and another when it ends. Per
    /// attempt (a resumed run is a second attempt of the same number): start time,
    /// status — succeeded, failed, cancelled, abandoned, running (its process is
    /// alive) or interrupted (its process is gone: the next run resumes it) —, time,
    /// stages by status, bytes read and written, and the error; then, for the newest,
    /// each stage and the version it committed. JSON adds the vars, the plan
    /// fingerprint and every table's version at the run's start.
    #[command(after_help = "Examples:\n  \
        sqlplan runs pipelines/summary.yaml --var warehouse=/data/wh\n  \
        sqlplan runs pipelines/summary.yaml --format json --limit 1")]
    Runs {
        #[command(flatten)]
        input: PipelineArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// At most this many attempts, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Print the JSON Schema of a machine-readable output: `plan` (`plan --format
    /// json`) or `report` (`run --report`). Both carry `format_version`.
    #[command(after_help = "Example:\n  sqlplan schema plan > plan.schema.json")]
    Schema {
        /// Which output.
        #[arg(value_enum)]
        what: SchemaOf,
    },
    /// Run data fixtures: rows in, pipeline runs, rows expected out.
    ///
    /// Each case of the fixture file runs on its own temporary warehouse (`warehouse`
    /// is set for you): the rows under `given` are appended to their tables (created
    /// from their declared schemas), the pipeline runs, and each table under `expect`
    /// must hold exactly the rows listed (compared on the columns listed, in any
    /// order). Several `steps` make several runs. Prints PASS/FAIL per case with the
    /// missing and unexpected rows; exit 1 if any case fails.
    #[command(after_help = "Example:\n  \
        sqlplan test pipelines/examples/orders.yaml   \
        # reads pipelines/examples/orders.tests.yaml")]
    Test {
        /// The pipeline YAML file.
        pipeline: PathBuf,
        /// The fixture file [default: PIPELINE with `.tests.yaml` instead of `.yaml`].
        #[arg(long)]
        fixtures: Option<PathBuf>,
        /// Project root (as for `plan`).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Also write the results as JUnit XML to this file (for CI dashboards).
        #[arg(long, value_name = "FILE.xml")]
        junit: Option<PathBuf>,
        /// Run the cases' query stages on a cluster, as `run --engine` (its
        /// executors must reach the cases' temporary warehouses: one machine).
        #[arg(long, value_name = "df://HOST:PORT")]
        engine: Option<String>,
    },
    /// Check a table's deletion vectors against its data files, as other readers
    /// will trust them.
    ///
    /// For every data file with a vector: the vector reads (version, magic, portable
    /// Roaring bitmap, CRC-32), it holds as many positions as its descriptor says,
    /// every position lies below the file's row count, that count is the Add's
    /// `numRecords` and the Parquet footer's, and the Add says `tightBounds: false`
    /// (its statistics were taken before rows were deleted). The protocol must list
    /// the `deletionVectors` feature. Reads the log, the vectors and each such file's
    /// footer; writes nothing.
    ///
    /// Exit codes: 0 every vector checks out (or the table has none), 1 problems
    /// were found (each listed) or the table cannot be read.
    #[command(after_help = "Examples:\n  \
        sqlplan verify-vectors /data/wh/summary\n  \
        sqlplan verify-vectors s3://bucket/wh/summary --format json")]
    VerifyVectors {
        /// The table's location: a path or a URL (`s3://…`).
        location: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
    },
    /// The summary pipeline end to end on a small generated warehouse.
    ///
    /// Generates a warehouse (default: 5,000 accounts × 36 months and a batch of
    /// 5,000 records) in DIR, shows what the run will scan (`summary` is never read in
    /// full), runs pipelines/summary.yaml on it with progress, and prints the report:
    /// per-stage time, rows, files, and the batch's records by case. Run it from the
    /// project root. DIR is regenerated on every demo; a directory the demo did not
    /// create is never touched.
    #[command(after_help = "Examples:\n  \
        cargo run -- demo\n  \
        sqlplan demo --accounts 50000 --warehouse /tmp/demo")]
    Demo(DemoArgs),
    /// Serve an editor: a language server (LSP) over stdin and stdout.
    ///
    /// The editor starts it; it answers while you type. On every open, change, save
    /// or close it plans each pipeline the edit touches as `sqlplan plan` does (the
    /// pipeline's declared vars, the warehouse they name), from the editor's
    /// unsaved texts, and shows the problems in the files they point into: the
    /// pipeline YAML or the SQL template. An open SQL file is checked through the
    /// pipelines under its project's `pipelines/` folder that name it. From each
    /// pipeline's last plan: hover on relations, tables and columns, go to
    /// definition, completion, and a code lens per stage for its rendered SQL
    /// (command `sqlplan.renderedSql`).
    #[command(after_help = "Neovim (0.11+):\n  \
        vim.lsp.config('sqlplan', { cmd = { 'sqlplan', 'lsp' }, filetypes = { 'yaml', 'sql' }, \
        root_markers = { 'sql' } })\n  \
        vim.lsp.enable('sqlplan')")]
    Lsp,
    /// Measure speed and memory of a shipped pipeline (see `bench summary --help`).
    #[command(subcommand)]
    Bench(BenchTarget),
    /// Write synthetic data for a shipped pipeline (see `generate summary --help`).
    #[command(subcommand)]
    Generate(GenerateTarget),
    /// Start a cluster scheduler (Apache Ballista) for `run --engine df://HOST:PORT`.
    ///
    /// Runs until stopped. It plans each query sqlplan sends and hands its pieces to
    /// the executors registered with it. sqlplan's scans of Delta tables (deletion
    /// vectors included) are encoded here, so the stock Ballista binaries cannot
    /// stand in for this command.
    #[command(after_help = "A scheduler and two executors on one machine:\n  \
        sqlplan scheduler --port 50050 &\n  \
        sqlplan executor --scheduler 127.0.0.1:50050 --port 50051 --grpc-port 50052 &\n  \
        sqlplan executor --scheduler 127.0.0.1:50050 --port 50061 --grpc-port 50062 &\n  \
        sqlplan run pipelines/summary.yaml --var warehouse=s3://bucket/wh \
        --engine df://127.0.0.1:50050")]
    Scheduler(crate::cluster::serve::SchedulerArgs),
    /// Start a cluster executor (Apache Ballista) that registers with a scheduler.
    ///
    /// Runs until stopped. It reads tables itself: object store credentials come
    /// from its own environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION, AWS_ENDPOINT_URL…).
    #[command(after_help = "Example:\n  \
        sqlplan executor --scheduler 127.0.0.1:50050 --port 50051 --grpc-port 50052 \
        --concurrent-tasks 2")]
    Executor(crate::cluster::serve::ExecutorArgs),
    /// Draw the stage dependency graph (edges labelled with their hazards).
    #[command(after_help = "Examples:\n  \
        sqlplan graph pipelines/examples/orders.yaml > dag.mmd\n  \
        sqlplan graph pipelines/examples/orders.yaml --format dot | dot -Tsvg > dag.svg")]
    Graph {
        #[command(flatten)]
        input: PipelineArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum GenerateTarget {
    /// A warehouse for pipelines/summary.yaml: history, latest rows and a batch.
    ///
    /// Writes DIR/summary (one row per account per month, partitioned by month and
    /// clustered by account key, with history arrays consistent across rows),
    /// DIR/latest_summary (each account's newest non-deleted row) and DIR/accounts: a
    /// batch for the month after the history with spec §3.1's mix (about 90% forward
    /// months, 5% new accounts, 4% backfills and corrections, 1% new accounts with
    /// several months) plus duplicates, sentinels, bad dates, soft deletes, stale
    /// records and records 2–40 months back. Tables, columns, the mapping, the
    /// rolling columns, sentinels and delete codes are read from the pipeline file.
    /// The same arguments give the same rows.
    #[command(after_help = "Example:\n  \
        sqlplan generate summary --warehouse /tmp/wh --accounts 100000 --months 36\n  \
        sqlplan plan pipelines/summary.yaml --var warehouse=/tmp/wh\n  \
        sqlplan run pipelines/summary.yaml --var warehouse=/tmp/wh")]
    Summary(GenerateSummaryArgs),
}

#[derive(Debug, Subcommand)]
pub enum BenchTarget {
    /// The summary pipeline on a generated warehouse: generate, plan and run, each
    /// timed with its own peak resident memory; stage times, files and bytes scanned,
    /// full and pruned scans per table, and the batch's counts. Prints the essentials;
    /// --report writes everything as JSON. The warehouse lives in a temporary
    /// directory removed afterwards; --from copies one generated earlier (so the
    /// generation is not repeated for every measurement).
    #[command(after_help = "Examples:\n  \
        sqlplan bench summary --accounts 20000 --report bench.json\n  \
        sqlplan generate summary --warehouse /data/wh100k --accounts 100000\n  \
        sqlplan bench summary --from /data/wh100k --accounts 100000 \
        --report bench-100k.json")]
    Summary(BenchSummaryArgs),
}

#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// The pipeline YAML file.
    pub pipeline: PathBuf,
    /// Set a declared variable, e.g. `--var warehouse=/data/wh`. Repeatable. Lists and
    /// maps take YAML: `--var cols=[a,b]`.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Project root for template paths and `sql/macros/` [default: the nearest
    /// ancestor of the pipeline file that holds a `sql/` folder].
    #[arg(long)]
    pub root: Option<PathBuf>,
}

/// Part of a pipeline: `--select`, `--exclude`.
#[derive(Debug, clap::Args)]
pub struct Selection {
    /// Run only these stages: `STAGE`, `STAGE+` (and every stage after it), `+STAGE`
    /// (and every stage it depends on), `+STAGE+`. Repeatable. A selected stage
    /// that reads a relation of a stage left out is refused; a table is read as it is.
    #[arg(long = "select", value_name = "SELECTOR")]
    pub select: Vec<String>,
    /// Leave these stages out (same forms). Repeatable.
    #[arg(long = "exclude", value_name = "SELECTOR")]
    pub exclude: Vec<String>,
}

impl Selection {
    pub(super) fn apply(&self, plan: crate::Plan) -> Result<crate::Plan, Problem> {
        crate::select::select(plan, &self.select, &self.exclude)
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SchemaOf {
    Plan,
    Report,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    Markdown,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GraphFormat {
    Mermaid,
    Dot,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}
