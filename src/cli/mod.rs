//! The command line: what it accepts (`args.rs`), dispatching each command, and
//! how diagnostics are shown.

mod args;

use std::io::IsTerminal;

use clap::Parser;

use crate::diag::{Code, Problem};
use crate::workloads::summary;
pub use args::*;
/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // Planning and pruning recurse over expression trees: a literal IN list of a few
    // thousand keys overflows the default 2 MiB worker stack.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 << 20)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(output) => {
            print!("{}", output.stdout);
            output.code
        }
        Err(problem) => {
            report(&problem);
            problem.exit_code()
        }
    }
}

/// What a command prints on standard output, and the exit code it ends with.
pub struct Output {
    pub stdout: String,
    pub code: i32,
}

impl From<String> for Output {
    fn from(stdout: String) -> Self {
        Output { stdout, code: 0 }
    }
}

/// Runs one command and returns what it prints on standard output.
pub async fn execute(command: Command) -> Result<Output, Problem> {
    match command {
        Command::Plan {
            input,
            format,
            baseline: Some(reference),
            ..
        } => review(&input, format, &reference).await,
        Command::VerifyVectors { location, format } => verify_vectors(&location, format).await,
        Command::Lsp => {
            // The protocol loop blocks on its channels: off the async workers.
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || crate::lsp::serve(runtime))
                .await
                .map_err(|e| Problem::failed(Code::LspFailed, e.to_string()))??;
            Ok(Output::from(String::new()))
        }
        other => run_command(other).await.map(Output::from),
    }
}

/// `verify-vectors`: exit 0 when every vector checks out, 1 with the problems.
async fn verify_vectors(location: &str, format: PlanFormat) -> Result<Output, Problem> {
    let unreadable = |e: crate::delta::Error| Problem::failed(Code::UnreadableTable, e.to_string());
    let table = crate::delta::open(location, location, None)
        .await
        .map_err(unreadable)?;
    let check = crate::delta::verify::verify(&table)
        .await
        .map_err(unreadable)?;
    let stdout = match format {
        PlanFormat::Json => {
            serde_json::to_string_pretty(&check).expect("a check serialises") + "\n"
        }
        PlanFormat::Text | PlanFormat::Markdown => check.to_text(),
    };
    Ok(Output {
        stdout,
        code: if check.problems.is_empty() { 0 } else { 1 },
    })
}

/// `plan --baseline REF`: exit 0 unchanged, 3 changed, 2 a budget crossed.
async fn review(
    input: &PipelineArgs,
    format: PlanFormat,
    reference: &str,
) -> Result<Output, Problem> {
    let baseline = crate::review::baseline(
        &input.pipeline,
        input.root.as_deref(),
        &input.vars,
        reference,
    )
    .await?;
    let plan = crate::review_plan(&input.pipeline, input.root.as_deref(), &input.vars).await?;
    let current: serde_json::Value =
        serde_json::from_str(&plan.to_json(false)).expect("plans serialise");
    let review = crate::review::diff(&baseline, &current);
    let stdout = match format {
        PlanFormat::Json => review.to_json(),
        PlanFormat::Text => review.to_text(&plan.pipeline, false),
        PlanFormat::Markdown => review.to_text(&plan.pipeline, true),
    };
    Ok(Output {
        stdout,
        code: review.exit_code(),
    })
}

async fn run_command(command: Command) -> Result<String, Problem> {
    match command {
        Command::Plan {
            input,
            format,
            explain,
            selection,
            ..
        } => {
            let plan = selection.apply(build(&input).await?)?;
            Ok(match format {
                PlanFormat::Text | PlanFormat::Markdown => plan.to_text(explain),
                PlanFormat::Json => plan.to_json(explain),
            })
        }
        Command::Run {
            input,
            selection,
            jobs,
            report,
            spill_threshold,
            abandon,
            engine,
        } => {
            let plan = selection.apply(build(&input).await?)?;
            check_engine(engine.as_deref())?;
            let mut options = crate::exec::RunOptions {
                spill_threshold,
                abandon,
                engine,
                ..Default::default()
            };
            if let Some(j) = jobs {
                options.jobs = j.max(1);
            }
            run(plan, &options, report.as_deref()).await
        }
        Command::Runs {
            input,
            format,
            limit,
        } => runs(&input, format, limit).await,
        Command::Test {
            pipeline,
            fixtures,
            root,
            junit,
            engine,
        } => {
            check_engine(engine.as_deref())?;
            let fixtures = fixtures.unwrap_or_else(|| crate::fixtures::default_fixtures(&pipeline));
            let results =
                crate::fixtures::run(&pipeline, root.as_deref(), &fixtures, engine.as_deref())
                    .await?;
            test_results(&pipeline, &results, junit.as_deref())
        }
        Command::VerifyVectors { .. } => unreachable!("`execute` runs verify-vectors"),
        Command::Lsp => unreachable!("`execute` serves the editor"),
        Command::Schema { what } => {
            let schema = match what {
                SchemaOf::Plan => schemars::schema_for!(crate::plan::Plan),
                SchemaOf::Report => schemars::schema_for!(crate::report::RunReport),
            };
            Ok(serde_json::to_string_pretty(&schema).expect("schemas serialise") + "\n")
        }
        Command::Demo(args) => summary::demo::demo(&args).await,
        Command::Bench(BenchTarget::Summary(args)) => summary::demo::bench(&args).await,
        Command::Generate(GenerateTarget::Summary(args)) => summary::demo::generate(&args).await,
        Command::Scheduler(args) => crate::cluster::serve::scheduler(&args)
            .await
            .map(|()| String::new())
            .map_err(|e| Problem::failed(Code::ClusterProcess, e.to_string())),
        Command::Executor(args) => crate::cluster::serve::executor(&args)
            .await
            .map(|()| String::new())
            .map_err(|e| Problem::failed(Code::ClusterProcess, e.to_string())),
        Command::Graph { input, format } => {
            let plan = build(&input).await?;
            Ok(match format {
                GraphFormat::Mermaid => plan.to_mermaid(),
                GraphFormat::Dot => plan.to_dot(),
            })
        }
    }
}

/// The plan of the pipeline the arguments name.
async fn build(input: &PipelineArgs) -> Result<crate::plan::Plan, Problem> {
    crate::build_plan(&input.pipeline, input.root.as_deref(), &input.vars).await
}

/// `--engine`, if given, names a scheduler: checked before anything is planned to run.
fn check_engine(engine: Option<&str>) -> Result<(), Problem> {
    match engine {
        Some(e) => crate::cluster::scheduler_url(e)
            .map(|_| ())
            .map_err(|m| Problem::invalid(Code::BadEngine, m.to_string())),
        None => Ok(()),
    }
}

/// `run`: the report on standard output (and as JSON in `report`); a failed or
/// interrupted run is an error after its report.
async fn run(
    plan: crate::plan::Plan,
    options: &crate::exec::RunOptions,
    report: Option<&std::path::Path>,
) -> Result<String, Problem> {
    let run = crate::exec::run(plan, options).await?;
    if let Some(path) = report {
        std::fs::write(path, run.to_json()).map_err(|e| {
            Problem::failed(
                Code::ReportUnwritable,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
    }
    if run.succeeded() {
        return Ok(run.to_text());
    }
    print!("{}", run.to_text());
    Err(match run.failed_stage() {
        Some(s) => {
            let message = format!(
                "stage `{}` failed: {}",
                s.name,
                s.error.as_deref().unwrap_or("")
            );
            let sql = s
                .template
                .as_deref()
                .map_or("see the report".to_string(), |t| {
                    format!("its SQL is in {t}")
                });
            Problem::failed(Code::StageFailed, message)
                .help(format!("{sql}; stages that had not started were skipped"))
        }
        None => Problem::failed(
            Code::Interrupted,
            "the run was interrupted; running stages were cancelled before committing",
        ),
    })
}

/// `runs`: the pipeline's attempts from the run ledger, newest first.
async fn runs(input: &PipelineArgs, format: PlanFormat, limit: usize) -> Result<String, Problem> {
    let plan = build(input).await?;
    let failed = |e: crate::delta::Error| Problem::failed(Code::LedgerUnreadable, e.to_string());
    let Some(location) = crate::control::ledger::location(&plan).map_err(failed)? else {
        return Ok("this pipeline writes no table: its runs are not recorded\n".into());
    };
    let mut entries = crate::control::ledger::read(&location, &plan.pipeline)
        .await
        .map_err(failed)?;
    entries.truncate(limit);
    Ok(match format {
        PlanFormat::Text | PlanFormat::Markdown => {
            crate::control::ledger::to_text(&location, &entries)
        }
        PlanFormat::Json => {
            serde_json::to_string_pretty(&entries).expect("entries serialise") + "\n"
        }
    })
}

/// `test`: the cases' results (and JUnit XML in `junit`); a failed case is an error
/// after the results.
fn test_results(
    pipeline: &std::path::Path,
    results: &[crate::fixtures::CaseResult],
    junit: Option<&std::path::Path>,
) -> Result<String, Problem> {
    if let Some(path) = junit {
        let name = pipeline
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let xml = crate::fixtures::to_junit(&name, results)
            .map_err(|e| Problem::failed(Code::ReportUnwritable, e))?;
        std::fs::write(path, xml).map_err(|e| {
            Problem::failed(
                Code::ReportUnwritable,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
    }
    let report = crate::fixtures::to_text(results);
    if results.iter().all(|r| r.passed()) {
        return Ok(report);
    }
    print!("{report}");
    Err(Problem::failed(
        Code::FixturesFailed,
        "some fixture cases failed (see above)",
    ))
}

/// Diagnostics go to standard error: in colour on a terminal, else plain text at a
/// fixed width so that logs and tests are stable.
fn report(problem: &Problem) {
    if std::io::stderr().is_terminal() {
        eprintln!("{:?}", miette::Report::new(problem.clone()));
    } else {
        eprint!("{}", problem.render_plain(100));
    }
}
