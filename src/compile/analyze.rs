//! Step 5: from the bound stages to the Plan — dependency DAG and levels, the
//! stages' plans, scan accounting per table (`scans.rs`, with budgets), and lints.

use std::collections::BTreeMap;

use super::bind::BoundStage;
use super::catalog::TableInfo;
use super::dag::{Dag, StageAccess};
use crate::diag::{did_you_mean, Code, Problem, Result};
use crate::plan::{ColumnPlan, Dependency, Lint, Plan, StageKind, StagePlan, TablePlan};
use crate::spec::{PipelineSpec, StageBody};

impl super::Compilation<'_> {
    /// The Plan of the bound stages (see `analyze`).
    pub async fn analyze(&self, bound: Vec<BoundStage>, budgets: super::Budgets) -> Result<Plan> {
        analyze(self, bound, budgets).await
    }
}

async fn analyze(
    c: &super::Compilation<'_>,
    bound: Vec<BoundStage>,
    budgets: super::Budgets,
) -> Result<Plan> {
    let (spec, rendered, tables) = (c.spec, c.rendered, &c.tables);
    let dag = dependencies(spec, &bound)?;
    let levels = dag
        .levels()
        .map_err(|cycle| cycle_problem(spec, &dag, &cycle))?;
    let mut crossed = Vec::new();
    let scans = c.scans(&bound, &mut crossed).await;
    let mut warnings = lints(spec, &bound);
    match budgets {
        super::Budgets::Enforce => {
            if let Some(problem) = crossed.into_iter().next() {
                return Err(problem);
            }
        }
        super::Budgets::Report => {
            warnings.extend(crossed.iter().map(|p| super::scans::budget_lint(spec, p)));
        }
    }

    let mut order: Vec<usize> = (0..bound.len()).collect();
    order.sort_by_key(|&i| (levels[i], i));
    let depth = levels.iter().max().map_or(0, |m| m + 1);
    let mut level_names = vec![Vec::new(); depth];
    for &i in &order {
        level_names[levels[i]].push(spec.stages[i].name.value.clone());
    }
    let mut bound: Vec<Option<BoundStage>> = bound.into_iter().map(Some).collect();
    let stages = order
        .iter()
        .map(|&i| {
            stage_plan(
                spec,
                i,
                levels[i],
                &dag,
                bound[i].take().expect("each stage once"),
            )
        })
        .collect();
    Ok(Plan {
        format_version: crate::plan::FORMAT_VERSION,
        pipeline: spec.name.value.clone(),
        description: spec.description.clone(),
        vars: rendered.vars.clone(),
        var_types: spec
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.ty.clone()))
            .collect(),
        tables: tables.values().map(table_plan).collect(),
        levels: level_names,
        stages,
        scans,
        warnings,
        state: spec
            .state
            .iter()
            .map(|(k, t)| (k.clone(), t.value.clone()))
            .collect(),
        not_selected: Vec::new(),
    })
}

/// What each stage touches. A view is evaluated by its readers, so a reader of a
/// view also reads (transitively) what the view reads.
fn accesses(bound: &[BoundStage], spec: &PipelineSpec) -> Vec<StageAccess> {
    let mut out: Vec<StageAccess> = Vec::with_capacity(bound.len());
    let index_of = |name: &str| spec.stages.iter().position(|s| s.name.value == name);
    for (i, b) in bound.iter().enumerate() {
        let mut a = StageAccess::default();
        a.reads.extend(b.reads_tables.iter().cloned());
        for r in &b.reads_relations {
            a.reads.insert(r.clone());
            if let Some(j) = index_of(r) {
                if bound[j].kind() == StageKind::View {
                    let through: Vec<String> = out[j].reads.iter().cloned().collect();
                    a.reads.extend(through);
                }
            }
        }
        a.writes.extend(b.writes.iter().cloned());
        a.writes.extend(quarantine(&spec.stages[i]));
        if b.kind().defines_relation() {
            a.writes.insert(spec.stages[i].name.value.clone());
        }
        out.push(a);
    }
    out
}

fn quarantine(stage: &crate::spec::StageSpec) -> Option<String> {
    Some(stage.expect.as_ref()?.quarantine.as_ref()?.value.clone())
}

fn dependencies(spec: &PipelineSpec, bound: &[BoundStage]) -> Result<Dag> {
    let access = accesses(bound, spec);
    let mut dag = Dag::from_accesses(&access);
    // A `fail` check stops the run before any write: every later stage that writes a
    // table waits for the stage whose rows it checks.
    for (i, b) in bound.iter().enumerate() {
        if b.checks
            .iter()
            .any(|c| c.action == crate::spec::CheckAction::Fail)
        {
            for (j, later) in bound.iter().enumerate().skip(i + 1) {
                if later.writes.is_some() || quarantine(&spec.stages[j]).is_some() {
                    dag.add_checked_first(i, j);
                }
            }
        }
    }
    for (j, stage) in spec.stages.iter().enumerate() {
        for after in &stage.after {
            let Some(i) = spec.stages.iter().position(|s| s.name.value == after.value) else {
                let names = spec.stages.iter().map(|s| s.name.value.as_str());
                return Err(Problem::invalid(
                    Code::UnknownStage,
                    format!(
                        "stage `{}` runs after `{}`, which is not a stage",
                        stage.name.value, after.value
                    ),
                )
                .in_source(&spec.yaml)
                .label(after.span, "unknown stage")
                .help(
                    did_you_mean(&after.value, names)
                        .unwrap_or_else(|| "`after:` lists stage names".into()),
                ));
            };
            dag.add_after(i, j);
        }
    }
    Ok(dag)
}

fn cycle_problem(spec: &PipelineSpec, dag: &Dag, cycle: &[usize]) -> Problem {
    let names: Vec<&str> = cycle
        .iter()
        .map(|&i| spec.stages[i].name.value.as_str())
        .collect();
    let mut problem = Problem::invalid(
        Code::Cycle,
        format!(
            "the stages depend on each other in a cycle: {}",
            names.join(" → ")
        ),
    )
    .in_source(&spec.yaml);
    for pair in cycle.windows(2) {
        let (from, to) = (pair[0], pair[1]);
        let to_stage = &spec.stages[to];
        let why: Vec<String> = dag
            .edges
            .get(&(from, to))
            .map(|h| h.iter().map(|h| h.to_string()).collect())
            .unwrap_or_default();
        let explicit = to_stage
            .after
            .iter()
            .find(|a| a.value == spec.stages[from].name.value);
        let span = explicit.map_or(to_stage.name.span, |a| a.span);
        problem = problem.label(
            span,
            format!(
                "{} after {}: {}",
                to_stage.name.value,
                spec.stages[from].name.value,
                why.join("; ")
            ),
        );
    }
    problem.help(
        "every cycle goes through an `after:` entry \
         (program order alone cannot make one); remove or reverse it",
    )
}

fn stage_plan(spec: &PipelineSpec, i: usize, level: usize, dag: &Dag, b: BoundStage) -> StagePlan {
    let stage = &spec.stages[i];
    let depends_on = dag
        .predecessors(i)
        .map(|(p, hazards)| Dependency {
            stage: spec.stages[p].name.value.clone(),
            reasons: hazards.iter().map(|h| h.to_string()).collect(),
        })
        .collect();
    let output = match &b.logical {
        Some(lp) if b.kind().defines_relation() => column_plans(lp.schema().fields()),
        _ => Vec::new(),
    };
    let template = match &stage.body {
        StageBody::SqlFile { path, .. } => Some(path.value.clone()),
        StageBody::InlineSql { .. } => Some(format!("{} (inline)", spec.yaml.name)),
        _ => None,
    };
    let mut reads = b.reads_tables.clone();
    reads.extend(b.reads_relations.iter().cloned());
    StagePlan {
        name: stage.name.value.clone(),
        index: i,
        level,
        work: b.work,
        template,
        description: stage.description.clone(),
        reads,
        writes: b.writes,
        depends_on,
        sql: b.sql,
        output,
        maintenance: b.maintenance,
        report: stage.report,
        state: stage.state.as_ref().map(|s| s.value.clone()),
        quarantine: quarantine(stage),
        checks: b.checks,
        logical_plan: b.logical.map(|lp| lp.display_indent().to_string()),
    }
}

fn table_plan(t: &TableInfo) -> TablePlan {
    TablePlan {
        name: t.name.clone(),
        location: t.location.clone(),
        version: t.version,
        files: t.num_files,
        partition_by: t.partition_columns.clone(),
        optional: t.optional && t.version.is_none(),
        columns: column_plans(t.schema.fields()),
        deletion_vectors: t.deletion_vectors.clone(),
        vectors_enabled: t.vectors_enabled,
    }
}

fn column_plans(fields: &datafusion::arrow::datatypes::Fields) -> Vec<ColumnPlan> {
    fields
        .iter()
        .map(|f| ColumnPlan {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
            nullable: f.is_nullable(),
        })
        .collect()
}

// ---- lints ------------------------------------------------------------------------

fn lints(spec: &PipelineSpec, bound: &[BoundStage]) -> Vec<Lint> {
    let mut readers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (i, b) in bound.iter().enumerate() {
        for r in &b.reads_relations {
            readers
                .entry(r.as_str())
                .or_default()
                .push(spec.stages[i].name.value.as_str());
        }
    }
    let mut warnings = Vec::new();
    for (i, b) in bound.iter().enumerate() {
        let stage = &spec.stages[i];
        let name = stage.name.value.as_str();
        let read_by = readers.get(name).cloned().unwrap_or_default();
        // The report and recorded state read a relation too.
        let used = !read_by.is_empty() || stage.report || stage.state.is_some();
        let (line, _) = crate::render::line_col(&spec.yaml.text, stage.name.span.offset());
        let lint = |code: Code, message: String, help: &str| Lint {
            code,
            stage: name.to_string(),
            at: format!("{}:{line}", spec.yaml.name),
            span: Some(stage.name.span),
            message,
            help: help.to_string(),
        };
        match b.kind() {
            StageKind::View if read_by.len() > 1 => warnings.push(lint(
                Code::ViewReadBySeveralStages,
                format!(
                    "`{name}` is a view read by {} stages ({}): each recomputes it",
                    read_by.len(),
                    read_by.join(", ")
                ),
                "add `materialize: true` to compute it once",
            )),
            StageKind::View | StageKind::Materialized if !used => warnings.push(lint(
                Code::UnreadRelation,
                format!("`{name}` defines a relation that no stage reads"),
                "remove the stage, read it in a later stage, or give it `report: true`",
            )),
            _ => {}
        }
    }
    warnings
}
