//! `sqlplan bench summary`: the speed and memory of the summary pipeline on a
//! generated warehouse — generation, planning and the run, each timed and with its
//! own peak resident memory — as a JSON report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use super::generate::SummaryOptions;
use crate::diag::{Code, Problem, Result};

/// What to measure.
pub struct BenchOptions {
    /// The warehouse to generate (its size and seed).
    pub generate: SummaryOptions,
    /// Copy this already generated warehouse instead of generating one.
    pub from: Option<PathBuf>,
    /// Stages running at the same time, at most.
    pub jobs: Option<usize>,
    /// Monthly batches run in a row (the first one generated with the history).
    pub batches: u32,
    /// Ignore the tables' `deletion_vectors` (MERGE copies on write).
    pub copy_on_write: bool,
}

/// The plan of a measured run (without deletion vectors if `copy_on_write`).
async fn bench_plan(
    pipeline: &Path,
    warehouse: &str,
    copy_on_write: bool,
) -> Result<crate::plan::Plan> {
    let vars = [("warehouse".to_string(), warehouse.to_string())];
    let mut plan = crate::build_plan(pipeline, None, &vars).await?;
    if copy_on_write {
        for t in &mut plan.tables {
            t.deletion_vectors = None;
        }
    }
    Ok(plan)
}

/// What a run wrote and changed, and `summary` after it: the figures every batch
/// reports (bytes written against the bytes of the rows changed, at the table's
/// average stored row size).
async fn run_figures(run: &crate::report::RunReport, warehouse: &Path) -> Value {
    let seconds = |name: &str| {
        run.stages
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.wall_ms)
            .map(|w| w / 1e3)
    };
    let merges = run
        .stages
        .iter()
        .filter(|s| s.kind == crate::plan::StageKind::Merge);
    let changed: u64 = merges
        .clone()
        .map(|s| {
            let m = &s.metrics;
            m.rows_updated.unwrap_or(0) + m.rows_inserted.unwrap_or(0) + m.rows_deleted.unwrap_or(0)
        })
        .sum();
    let written: u64 = run
        .stages
        .iter()
        .filter_map(|s| s.metrics.bytes_written)
        .sum();
    let compact = seconds("compact_summary")
        .zip(seconds("compact_latest"))
        .map(|(a, b)| a + b);
    let mut figures = json!({
        "existing_seconds": seconds("existing"),
        "merge_summary_seconds": seconds("merge_summary"),
        "merge_latest_seconds": seconds("merge_latest"),
        "compact_seconds": compact,
        "rows_changed": changed,
        "bytes_written": written,
        "summary": table_size(&warehouse.join("summary")).await,
        "latest_summary": table_size(&warehouse.join("latest_summary")).await,
    });
    let (Some(bytes), Some(rows)) = (
        figures["summary"]["bytes"].as_f64(),
        figures["summary"]["rows"].as_f64(),
    ) else {
        return figures;
    };
    if rows > 0.0 && changed > 0 {
        let row_bytes = bytes / rows;
        figures["stored_bytes_per_row"] = json!((row_bytes * 10.0).round() / 10.0);
        figures["written_per_changed_row_bytes"] = json!((written as f64 / changed as f64).round());
        figures["written_over_changed_bytes"] =
            json!(((written as f64 / (changed as f64 * row_bytes)) * 100.0).round() / 100.0);
    }
    figures
}

/// Peak resident memory since the last reset, in MiB (Linux: VmHWM).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}

/// Starts a new peak-memory measurement (Linux resets VmHWM to the current RSS).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs `f`, returning its result with its wall time (s) and peak memory (MiB).
async fn measured<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<(T, Value)> {
    reset_peak_rss();
    let started = Instant::now();
    let out = f.await?;
    let seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    Ok((
        out,
        json!({"seconds": seconds, "peak_rss_mib": peak_rss_mib()}),
    ))
}

/// Copies a directory tree (a generated warehouse) so that runs never touch it.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Generates (or copies) a warehouse into `options.generate.warehouse`, plans and
/// runs the pipeline on it, and returns the measurements.
pub async fn summary(
    pipeline: &Path,
    options: &BenchOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<Value> {
    let gen = &options.generate;
    let warehouse = gen.warehouse.clone();
    let generate = prepare_warehouse(pipeline, options, progress).await?;
    let (plan, plan_measure) =
        measured(bench_plan(pipeline, &warehouse, options.copy_on_write)).await?;
    let scans: serde_json::Map<String, Value> = plan
        .scans
        .iter()
        .map(|t| (t.table.clone(), json!({"full": t.full, "pruned": t.pruned})))
        .collect();
    let tables: serde_json::Map<String, Value> = plan
        .tables
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                json!({"version": t.version, "files": t.files}),
            )
        })
        .collect();
    let mut run_options = crate::exec::RunOptions::default();
    if let Some(j) = options.jobs {
        run_options.jobs = j.max(1);
    }
    let (run, run_measure) = measured(crate::exec::run(plan, &run_options)).await?;
    if !run.succeeded() {
        return Err(Problem::failed(
            Code::BenchRunFailed,
            format!("the benchmark run failed:\n{}", run.to_text()),
        ));
    }
    let stages: Vec<Value> = run.stages.iter().map(stage_figures).collect();
    let counts: Vec<Value> = run
        .stages
        .iter()
        .flat_map(|s| s.metrics.reported.iter().cloned().map(Value::Object))
        .collect();
    let mut first = run_figures(&run, Path::new(&gen.warehouse)).await;
    first["batch"] = json!(1);
    first["run"] = run_measure.clone();
    let mut months = vec![first];
    for n in 2..=options.batches {
        months.push(next_month(pipeline, gen, &run_options, n, options.copy_on_write).await?);
    }
    let build = if cfg!(debug_assertions) {
        "dev profile: dependencies at opt-level 2, the planning and coordinating crates at 1"
    } else {
        "release profile"
    };
    let peak_rss_note = "peak resident memory of the process during each phase, \
                         including what it still held from earlier phases";
    let merge = if options.copy_on_write {
        "copy-on-write (delta-rs)"
    } else {
        "deletion vectors where declared"
    };
    Ok(json!({
        "benchmark": "summary",
        "sqlplan": env!("CARGO_PKG_VERSION"),
        "build": build,
        "peak_rss_note": peak_rss_note,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "jobs": run_options.jobs,
        "merge": merge,
        "accounts": gen.accounts,
        "months": gen.months,
        "batch_records": gen.batch_records,
        "seed": gen.seed,
        "warehouse": warehouse,
        "generate": generate,
        "tables_before_run": tables,
        "plan": {"measure": plan_measure, "scans": scans},
        "run": {"measure": run_measure, "stages": stages, "counts": counts},
        "batches": months,
    }))
}

/// The warehouse the benchmark runs on: copied from `--from`, or generated; what
/// that took and made.
async fn prepare_warehouse(
    pipeline: &Path,
    options: &BenchOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<Value> {
    let gen = &options.generate;
    let local = Path::new(&gen.warehouse);
    Ok(match &options.from {
        Some(from) => {
            let (_, m) = measured(async {
                copy_tree(from, local).map_err(|e| {
                    Problem::failed(
                        Code::BenchCopy,
                        format!("cannot copy {} to {}: {e}", from.display(), gen.warehouse),
                    )
                })
            })
            .await?;
            json!({"copied_from": from.display().to_string(), "copy": m})
        }
        None => {
            let (generated, m) =
                measured(super::generate::summary(pipeline, None, gen, progress)).await?;
            json!({
                "measure": m,
                "summary_rows": generated.summary_rows,
                "latest_rows": generated.latest_rows,
                "batch_rows": generated.batch_rows,
                "batch_kinds": generated.batch,
                "files": generated.files,
            })
        }
    })
}

/// One stage's time and metrics.
fn stage_figures(s: &crate::report::StageReport) -> Value {
    let m = &s.metrics;
    json!({
        "stage": s.name,
        "seconds": s.wall_ms.map(|w| w / 1e3),
        "rows_out": m.rows_out,
        "rows_inserted": m.rows_inserted,
        "rows_updated": m.rows_updated,
        "files_scanned": m.files_scanned,
        "bytes_scanned": m.bytes_scanned,
        "files_added": m.files_added,
        "files_removed": m.files_removed,
        "bytes_written": m.bytes_written,
        "files_with_vectors": m.files_with_vectors,
        "files_rewritten": m.files_rewritten,
        "rows_deleted_by_vector": m.rows_deleted_by_vector,
    })
}

/// One more month on the same warehouse: its batch generated from latest_summary,
/// then planned and run, each measured, with the size of `summary` after the run.
async fn next_month(
    pipeline: &Path,
    gen: &SummaryOptions,
    run_options: &crate::exec::RunOptions,
    n: u32,
    copy_on_write: bool,
) -> Result<Value> {
    let (batch, generate) = measured(super::generate::next_batch(pipeline, None, gen)).await?;
    let plan = bench_plan(pipeline, &gen.warehouse, copy_on_write).await?;
    let (run, measure) = measured(crate::exec::run(plan, run_options)).await?;
    if !run.succeeded() {
        return Err(Problem::failed(
            Code::BenchRunFailed,
            format!("the run of batch {n} failed:\n{}", run.to_text()),
        ));
    }
    let mut figures = run_figures(&run, Path::new(&gen.warehouse)).await;
    figures["batch"] = json!(n);
    figures["month"] = json!(batch.batch_month);
    figures["records"] = json!(batch.batch_rows);
    figures["generate"] = generate;
    figures["run"] = measure;
    Ok(figures)
}

/// Files, bytes and rows of a table's current version (from its log), and the rows
/// its deletion vectors delete.
async fn table_size(path: &Path) -> Value {
    let Ok(url) = crate::delta::table_url(&path.to_string_lossy()) else {
        return Value::Null;
    };
    match crate::delta::open_if_exists(&url).await {
        Ok(Some(t)) => match t.snapshot() {
            Ok(s) => {
                let files: Vec<_> = s.log_data().iter().collect();
                let (rows, deleted) = crate::delta::vectors::row_counts(&files);
                let deleted_share = if rows > 0 {
                    (deleted as f64 / rows as f64 * 1e4).round() / 1e4
                } else {
                    0.0
                };
                json!({
                    "files": files.len(),
                    "bytes": files.iter().map(|f| f.size()).sum::<i64>(),
                    "rows": rows,
                    "deleted_rows": deleted,
                    "deleted_share": deleted_share,
                })
            }
            Err(_) => Value::Null,
        },
        _ => Value::Null,
    }
}

/// The report's essentials, for people.
pub fn summary_text(report: &Value) -> String {
    let m = |v: &Value| {
        format!(
            "{:.2} s, peak {} MiB",
            v["seconds"].as_f64().unwrap_or_default(),
            v["peak_rss_mib"]
                .as_f64()
                .map_or("?".to_string(), |p| format!("{p:.0}"))
        )
    };
    let mut out = format!(
        "summary benchmark: {} accounts × {} months, batch of {} records ({}; {} cores)\n",
        report["accounts"],
        report["months"],
        report["batch_records"],
        report["build"].as_str().unwrap_or(""),
        report["cores"]
    );
    if let Some(g) = report["generate"].get("measure") {
        out += &format!("  generate  {}\n", m(g));
    }
    out += &format!("  plan      {}\n", m(&report["plan"]["measure"]));
    out += &format!("  run       {}\n", m(&report["run"]["measure"]));
    if let Some(scans) = report["plan"]["scans"].as_object() {
        for (table, s) in scans {
            out += &format!(
                "  scans of {table}: {} full, {} pruned\n",
                s["full"], s["pruned"]
            );
        }
    }
    out += "  slowest stages:";
    let mut stages: Vec<&Value> = report["run"]["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    stages.sort_by(|a, b| {
        b["seconds"]
            .as_f64()
            .partial_cmp(&a["seconds"].as_f64())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    for s in stages.iter().take(4) {
        out += &format!(
            " {} {:.2} s;",
            s["stage"].as_str().unwrap_or(""),
            s["seconds"].as_f64().unwrap_or_default()
        );
    }
    out.pop();
    out.push('\n');
    let batches = report["batches"].as_array().map_or(&[][..], Vec::as_slice);
    out += &format!(
        "  merge: {}; month by month (summary after each run):\n",
        report["merge"].as_str().unwrap_or("")
    );
    for b in batches {
        out += &format!(
            "    batch {:>2}: run {}; {} rows changed, {:.1} MB written ({}× their stored size); summary {} files, {:.1} MB, {} rows, {:.1}% deleted by vectors\n",
            b["batch"],
            m(&b["run"]),
            b["rows_changed"],
            b["bytes_written"].as_f64().unwrap_or_default() / 1e6,
            b["written_over_changed_bytes"],
            b["summary"]["files"],
            b["summary"]["bytes"].as_f64().unwrap_or_default() / 1e6,
            b["summary"]["rows"],
            b["summary"]["deleted_share"].as_f64().unwrap_or_default() * 100.0
        );
    }
    out
}
