//! Selectors: run part of a pipeline. `STAGE` selects a stage, `STAGE+` it and
//! every stage after it in the DAG, `+STAGE` it and every stage it depends on,
//! `+STAGE+` both; `--exclude` takes stages out the same way.
//!
//! The selection is checked like a plan: a selected stage whose input would not be
//! there is refused. A relation (view or materialized) exists only inside a run, so
//! its stage must be selected too; a table written by a stage left out is read as it
//! is, which is only possible when it exists.

use std::collections::{BTreeMap, BTreeSet};

use crate::diag::{did_you_mean, Code, Problem};
use crate::plan::Plan;

/// The plan of the selected stages only (all when `select` is empty), minus
/// `exclude`.
pub fn select(mut plan: Plan, select: &[String], exclude: &[String]) -> Result<Plan, Problem> {
    if select.is_empty() && exclude.is_empty() {
        return Ok(plan);
    }
    let graph = Graph::new(&plan);
    let mut chosen: BTreeSet<String> = if select.is_empty() {
        graph.all()
    } else {
        let mut set = BTreeSet::new();
        for s in select {
            set.extend(graph.resolve(s)?);
        }
        set
    };
    for s in exclude {
        for stage in graph.resolve(s)? {
            chosen.remove(&stage);
        }
    }
    if chosen.is_empty() {
        return Err(Problem::invalid(
            Code::BadSelector,
            "the selection leaves no stage to run",
        ));
    }
    check_inputs(&plan, &chosen)?;
    let left_out: Vec<String> = plan
        .stages
        .iter()
        .filter(|s| !chosen.contains(&s.name))
        .map(|s| s.name.clone())
        .collect();
    plan.stages.retain(|s| chosen.contains(&s.name));
    for s in &mut plan.stages {
        s.depends_on.retain(|d| chosen.contains(&d.stage));
    }
    for level in &mut plan.levels {
        level.retain(|n| chosen.contains(n));
    }
    plan.levels.retain(|l| !l.is_empty());
    for t in &mut plan.scans {
        t.scans.retain(|s| chosen.contains(&s.stage));
        t.full = t.scans.iter().filter(|s| s.access.is_full()).count();
        t.pruned = t.scans.len() - t.full;
        t.estimate = t
            .scans
            .iter()
            .fold(Default::default(), |a, s| a.add(s.estimate));
        // What the selected writers may rewrite: at most the whole pipeline's.
        if !plan
            .stages
            .iter()
            .any(|s| s.writes.as_ref() == Some(&t.table))
        {
            t.rewrites = None;
        }
    }
    plan.not_selected = left_out;
    Ok(plan)
}

/// Refuses a selected stage that reads a relation of a stage left out, or a table
/// that only a stage left out would create.
fn check_inputs(plan: &Plan, chosen: &BTreeSet<String>) -> Result<(), Problem> {
    let by_name: BTreeMap<&str, &crate::plan::StagePlan> =
        plan.stages.iter().map(|s| (s.name.as_str(), s)).collect();
    for stage in plan.stages.iter().filter(|s| chosen.contains(&s.name)) {
        for dep in stage
            .depends_on
            .iter()
            .filter(|d| !chosen.contains(&d.stage))
        {
            let Some(pred) = by_name.get(dep.stage.as_str()) else {
                continue;
            };
            let relation = pred.kind().defines_relation() && stage.reads.contains(&pred.name);
            if relation {
                return Err(Problem::invalid(
                    Code::BadSelector,
                    format!(
                        "stage `{}` reads the relation `{}`, which is not selected: a relation exists only inside a run",
                        stage.name, pred.name
                    ),
                )
                .help(format!("select `+{}` to run it with everything it reads", stage.name)));
            }
            let table = pred.writes.as_ref().filter(|t| stage.reads.contains(t));
            if let Some(table) = table {
                let exists = plan
                    .tables
                    .iter()
                    .any(|t| &t.name == table && t.version.is_some());
                if !exists {
                    return Err(Problem::invalid(
                        Code::BadSelector,
                        format!(
                            "stage `{}` reads `{table}`, which does not exist yet and is written by `{}`, which is not selected",
                            stage.name, pred.name
                        ),
                    )
                    .help(format!("select `+{}`, or run `{}` first", stage.name, pred.name)));
                }
            }
        }
    }
    Ok(())
}

/// The plan's DAG by stage name.
struct Graph {
    names: Vec<String>,
    preds: BTreeMap<String, Vec<String>>,
    succs: BTreeMap<String, Vec<String>>,
}

impl Graph {
    fn new(plan: &Plan) -> Graph {
        let mut preds: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut succs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in &plan.stages {
            preds.entry(s.name.clone()).or_default();
            succs.entry(s.name.clone()).or_default();
            for d in &s.depends_on {
                preds
                    .entry(s.name.clone())
                    .or_default()
                    .push(d.stage.clone());
                succs
                    .entry(d.stage.clone())
                    .or_default()
                    .push(s.name.clone());
            }
        }
        Graph {
            names: plan.stages.iter().map(|s| s.name.clone()).collect(),
            preds,
            succs,
        }
    }

    fn all(&self) -> BTreeSet<String> {
        self.names.iter().cloned().collect()
    }

    /// `STAGE`, `STAGE+`, `+STAGE`, `+STAGE+` → the stages it names.
    fn resolve(&self, selector: &str) -> Result<BTreeSet<String>, Problem> {
        let up = selector.starts_with('+');
        let down = selector.ends_with('+') && selector.len() > 1;
        let name = selector.trim_start_matches('+').trim_end_matches('+');
        if !self.names.iter().any(|n| n == name) {
            let mut p = Problem::invalid(
                Code::BadSelector,
                format!("`{selector}` names no stage of this pipeline"),
            );
            p = p.help(
                match did_you_mean(name, self.names.iter().map(String::as_str)) {
                    Some(s) => s,
                    None => format!(
                        "stages: {}; `STAGE+` adds what follows it, `+STAGE` what it depends on",
                        self.names.join(", ")
                    ),
                },
            );
            return Err(p);
        }
        let mut out = BTreeSet::from([name.to_string()]);
        if up {
            walk(&self.preds, name, &mut out);
        }
        if down {
            walk(&self.succs, name, &mut out);
        }
        Ok(out)
    }
}

fn walk(edges: &BTreeMap<String, Vec<String>>, from: &str, out: &mut BTreeSet<String>) {
    for next in edges.get(from).into_iter().flatten() {
        if out.insert(next.clone()) {
            walk(edges, next, out);
        }
    }
}
