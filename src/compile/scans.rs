//! Scan accounting, part of step 5: every scan of a declared table, attributed to
//! the stage that executes it, classified (full, pruned by partition, statistics,
//! key range or a materialized relation's bounds) and estimated from the Delta log
//! (`estimate.rs`); per table the totals, what writes may rewrite, and the budgets
//! (`max_full_scans`, `max_scan_bytes`, `max_rewrite_bytes`).

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{Expr, LogicalPlan, WriteOp};

use super::bind::BoundStage;
use super::catalog::TableInfo;
use super::estimate;
use crate::diag::{Code, Problem, Result};
use crate::plan::{Access, Estimate, Lint, ScanPlan, StageKind, TableScans};
use crate::pruning::{self, sql_text, Catalog};
use crate::render::Rendered;
use crate::spec::PipelineSpec;

/// Every scan of a declared table, attributed to the stage that executes it: a
/// view's scans belong to each of its readers (that is what a view costs).
impl super::Compilation<'_> {
    pub(super) async fn scans(
        &self,
        bound: &[BoundStage],
        crossed: &mut Vec<Problem>,
    ) -> Vec<TableScans> {
        let (spec, rendered) = (self.spec, self.rendered);
        let (per_table, mut rewrites) = stage_scans(spec, &self.tables, bound, &self.ctx).await;
        per_table
            .into_iter()
            .map(|(table, scans)| {
                let table_rewrites = rewrites.remove(&table);
                table_scans(spec, rendered, table, scans, table_rewrites, crossed)
            })
            .collect()
    }
}

/// Rewrites of a table a stage's write may make: (stage index, estimate).
type Rewrites = BTreeMap<String, Vec<(usize, Estimate)>>;

/// Every scan each stage makes, by table (classified and estimated), and what each
/// writing stage may rewrite.
async fn stage_scans(
    spec: &PipelineSpec,
    tables: &BTreeMap<String, TableInfo>,
    bound: &[BoundStage],
    ctx: &datafusion::prelude::SessionContext,
) -> (BTreeMap<String, Vec<ScanPlan>>, Rewrites) {
    let views: BTreeSet<String> = bound
        .iter()
        .enumerate()
        .filter(|(_, b)| b.kind() == StageKind::View)
        .map(|(i, _)| spec.stages[i].name.value.clone())
        .collect();
    let partitions: BTreeMap<String, Vec<String>> = tables
        .iter()
        .map(|(n, t)| (n.clone(), t.partition_columns.clone()))
        .collect();
    let materialized: BTreeSet<String> = bound
        .iter()
        .enumerate()
        .filter(|(_, b)| b.kind() == StageKind::Materialized)
        .map(|(i, _)| spec.stages[i].name.value.clone())
        .collect();
    let walk = ScanWalk {
        views: &views,
        catalog: Catalog {
            tables: &partitions,
            materialized: &materialized,
        },
    };
    let mut per_table: BTreeMap<String, Vec<ScanPlan>> =
        tables.keys().map(|t| (t.clone(), Vec::new())).collect();
    // What each stage's write may rewrite, by table.
    let mut rewrites: Rewrites = BTreeMap::new();
    let mut estimator = estimate::Estimator::new(ctx);
    for (i, b) in bound.iter().enumerate() {
        if b.kind() == StageKind::View {
            continue;
        }
        let Some(lp) = &b.logical else { continue };
        let stage = &spec.stages[i].name.value;
        let mut found = Vec::new();
        walk.collect(lp, None, &[], &mut found);
        for f in found {
            let Some(info) = tables.get(&f.table) else {
                continue;
            };
            let mut access = match f.access {
                Some(Access::KeyRange) => merge_target_access(&f.table, &f.filters, info),
                Some(a) => a,
                None => classify(&f.filters, info),
            };
            let mut filters: Vec<String> = f.filters.iter().map(sql_text).collect();
            let merge_target = f.access == Some(Access::KeyRange);
            let mut estimate = match (info.exists(), merge_target) {
                (false, _) => Estimate::default(),
                // The source's keys pick a MERGE's target files at run time, within
                // what the ON clause's literal predicates on the target leave.
                (true, true) => estimator
                    .scan(&f.table, &target_only(&f.table, &f.filters))
                    .await
                    .up_to(),
                (true, false) => estimator.scan(&f.table, &f.filters).await,
            };
            if let Some(bound) = f.driven_by {
                if access != Access::Partitions {
                    access = Access::Bounds;
                }
                filters.push(format!("{bound} (literal at run time)"));
                estimate = estimate.up_to();
            }
            let writes_here = b.writes.as_deref() == Some(f.table.as_str());
            if writes_here && b.kind().changes_existing_rows() {
                rewrites
                    .entry(f.table.clone())
                    .or_default()
                    .push((i, estimate));
            }
            per_table
                .get_mut(&f.table)
                .expect("declared")
                .push(ScanPlan {
                    stage: stage.clone(),
                    via: f.via,
                    access,
                    columns: f.columns,
                    filters,
                    estimate,
                });
        }
        // An overwrite may replace every file of the table (of the partitions its
        // rows land in: known at run time).
        if b.kind() == StageKind::InsertOverwrite {
            if let Some(table) = b
                .writes
                .as_ref()
                .filter(|t| tables.get(*t).is_some_and(TableInfo::exists))
            {
                let all = estimator.scan(table, &[]).await;
                let partitioned = !tables[table].partition_columns.is_empty();
                rewrites
                    .entry(table.clone())
                    .or_default()
                    .push((i, if partitioned { all.up_to() } else { all }));
            }
        }
    }
    (per_table, rewrites)
}

/// A table's scans totalled against its budgets (a crossed one goes to `crossed`).
fn table_scans(
    spec: &PipelineSpec,
    rendered: &Rendered,
    table: String,
    scans: Vec<ScanPlan>,
    table_rewrites: Option<Vec<(usize, Estimate)>>,
    crossed: &mut Vec<Problem>,
) -> TableScans {
    let full = scans.iter().filter(|s| s.access.is_full()).count();
    let budget = spec.tables[&table].max_full_scans.clone();
    if let Some(b) = &budget {
        if full as u64 > b.value {
            let stages: Vec<&str> = scans
                .iter()
                .filter(|s| s.access.is_full())
                .map(|s| s.stage.as_str())
                .collect();
            let plural = if full == 1 { "" } else { "s" };
            let message = format!(
                "`{table}` would be scanned in full {full} time{plural}; its budget is {}",
                b.value
            );
            let help = format!(
                "full scans by: {}. Filter on partition or key columns \
                 (as literals, so Delta can prune), or materialize the shared relation",
                stages.join(", ")
            );
            crossed.push(
                Problem::invalid(Code::ScanBudget, message)
                    .in_source(&spec.yaml)
                    .label(b.span, "budget")
                    .help(help),
            );
        }
    }
    let table_spec = &spec.tables[&table];
    let estimate = scans
        .iter()
        .fold(Estimate::default(), |a, s| a.add(s.estimate));
    let by_stage: Vec<(usize, Estimate)> = scans
        .iter()
        .filter_map(|s| {
            Some((
                spec.stages.iter().position(|st| st.name.value == s.stage)?,
                s.estimate,
            ))
        })
        .collect();
    if let Some(b) = &table_spec.max_scan_bytes {
        crossed.extend(check_bytes(spec, rendered, &table, "read", estimate, b, &by_stage).err());
    }
    let rewrite = table_rewrites
        .as_ref()
        .map(|r| r.iter().fold(Estimate::default(), |a, (_, e)| a.add(*e)));
    if let (Some(b), Some(r)) = (&table_spec.max_rewrite_bytes, rewrite) {
        crossed.extend(
            check_bytes(
                spec,
                rendered,
                &table,
                "rewrite",
                r,
                b,
                table_rewrites.as_deref().unwrap_or_default(),
            )
            .err(),
        );
    }
    TableScans {
        pruned: scans.len() - full,
        full,
        max_full_scans: budget.map(|b| b.value),
        estimate,
        max_scan_bytes: table_spec.max_scan_bytes.as_ref().map(|b| b.value),
        rewrites: rewrite,
        max_rewrite_bytes: table_spec.max_rewrite_bytes.as_ref().map(|b| b.value),
        table,
        scans,
    }
}

/// A crossed budget as a warning of a review plan.
pub(super) fn budget_lint(spec: &PipelineSpec, problem: &Problem) -> Lint {
    Lint {
        code: problem.code,
        stage: String::new(),
        at: spec.yaml.name.clone(),
        // Its first label, when it points into the pipeline's YAML (the budget).
        span: problem
            .source
            .as_ref()
            .filter(|s| s.name() == spec.yaml.name)
            .and(problem.labels.first())
            .map(|(span, _)| *span),
        message: problem.message.clone(),
        help: problem.help.clone().unwrap_or_default(),
    }
}

/// A byte budget of `table`: the run's estimate (its maximum) must not pass it. The
/// diagnostic points at the budget and at the template of the stage that
/// contributes most.
fn check_bytes(
    spec: &PipelineSpec,
    rendered: &Rendered,
    table: &str,
    what: &str,
    estimate: Estimate,
    budget: &crate::spec::Spanned<u64>,
    by_stage: &[(usize, Estimate)],
) -> Result<()> {
    if estimate.bytes.max <= budget.value {
        return Ok(());
    }
    let mb = crate::plan::size_text;
    let mut stages: Vec<&(usize, Estimate)> = by_stage.iter().collect();
    stages.sort_by_key(|(i, e)| (std::cmp::Reverse(e.bytes.max), *i));
    let listed: Vec<String> = stages
        .iter()
        .map(|(i, e)| format!("{} {}", spec.stages[*i].name.value, e.text()))
        .collect();
    let key = if what == "read" {
        "max_scan_bytes"
    } else {
        "max_rewrite_bytes"
    };
    let mut problem = Problem::invalid(
        Code::ByteBudget,
        format!(
            "the run may {what} up to {} of `{table}`; its budget `{key}` is {}",
            mb(estimate.bytes.max),
            mb(budget.value)
        ),
    )
    .in_source(&spec.yaml)
    .label(budget.span, "budget")
    .help(format!(
        "by stage: {}. Estimated from the Delta log: filter on partition or key columns with literals so that Delta can skip files, or raise the budget",
        listed.join("; ")
    ));
    if let Some(&&(i, e)) = stages.first() {
        let r = &rendered.stages[i];
        if let (Some(sql), Some(_)) = (&r.text, spec.stages[i].template()) {
            let at = super::StageSql {
                spec,
                stage: &spec.stages[i],
                sql,
                lines: &r.lines,
            };
            problem = problem.with_related(vec![at.problem_at_start(
                Code::ByteBudget,
                format!(
                    "stage `{}` may {what} {}",
                    spec.stages[i].name.value,
                    e.text()
                ),
                "this stage",
            )]);
        }
    }
    Err(problem)
}

/// A scan found in a stage's plan, before classification.
struct FoundScan {
    table: String,
    via: Option<String>,
    access: Option<Access>,
    columns: Vec<String>,
    filters: Vec<Expr>,
    /// At run time, literal bounds from this relation column (see `drivers`).
    driven_by: Option<String>,
}

struct ScanWalk<'a> {
    views: &'a BTreeSet<String>,
    catalog: Catalog<'a>,
}

impl ScanWalk<'_> {
    /// `driven` lists (table, bound) pairs: scans of that table below get the bound.
    fn collect(
        &self,
        plan: &LogicalPlan,
        via: Option<&str>,
        driven: &[(String, String)],
        out: &mut Vec<FoundScan>,
    ) {
        let mut via = via.map(str::to_string);
        match plan {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table().to_string();
                let bounds: Vec<&str> = driven
                    .iter()
                    .filter(|(t, _)| *t == table)
                    .map(|(_, b)| b.as_str())
                    .collect();
                out.push(FoundScan {
                    table,
                    via: via.clone(),
                    access: None,
                    columns: scan
                        .projected_schema
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect(),
                    filters: scan.filters.clone(),
                    driven_by: (!bounds.is_empty()).then(|| bounds.join(" AND ")),
                })
            }
            LogicalPlan::SubqueryAlias(alias) if self.views.contains(alias.alias.table()) => {
                via = Some(alias.alias.table().to_string())
            }
            LogicalPlan::Dml(dml) => {
                if let WriteOp::MergeInto(op) = &dml.op {
                    // delta-rs scans the MERGE target itself: literal partition predicates
                    // in ON prune partitions; otherwise files outside the source key range.
                    out.push(FoundScan {
                        table: dml.table_name.table().to_string(),
                        via: None,
                        access: Some(Access::KeyRange),
                        columns: Vec::new(),
                        filters: vec![op.on.clone()],
                        driven_by: None,
                    });
                }
            }
            LogicalPlan::Join(join) => {
                let (mut left, mut right) = (driven.to_vec(), driven.to_vec());
                for d in pruning::eligible(join, &self.catalog) {
                    let how = if d.partition {
                        "IN (values of"
                    } else {
                        "BETWEEN min and max of"
                    };
                    let close = if d.partition {
                        ")".to_string()
                    } else {
                        format!(
                            " (and IN its values when at most {})",
                            pruning::MAX_KEY_IN_LIST
                        )
                    };
                    let text = |key: &Expr| {
                        format!(
                            "{} {how} {}.{}{close}",
                            sql_text(key),
                            d.driver.relation,
                            d.driver.column
                        )
                    };
                    match &d.side {
                        pruning::Side::Left(key) => left.push((d.table.clone(), text(key))),
                        pruning::Side::Right(key) => right.push((d.table.clone(), text(key))),
                    }
                }
                self.collect(&join.left, via.as_deref(), &left, out);
                self.collect(&join.right, via.as_deref(), &right, out);
                return;
            }
            _ => {}
        }
        for input in plan.inputs() {
            self.collect(input, via.as_deref(), driven, out);
        }
        let _ = plan.apply_subqueries(|sub| {
            self.collect(sub, via.as_deref(), driven, out);
            Ok(TreeNodeRecursion::Continue)
        });
    }
}

/// Full unless a filter can prune: partition predicates prune from the log; other
/// predicates skip files by their statistics.
fn classify(filters: &[Expr], table: &TableInfo) -> Access {
    if filters.is_empty() {
        return Access::Full;
    }
    let on_partitions = filters.iter().any(|f| {
        let cols = f.column_refs();
        !cols.is_empty()
            && cols
                .iter()
                .all(|c| table.partition_columns.contains(&c.name))
    });
    if on_partitions {
        Access::Partitions
    } else {
        Access::Statistics
    }
}

/// A MERGE target is pruned by partition when ON holds a literal predicate on the
/// target's partition columns alone; otherwise by the source's key range.
fn merge_target_access(table: &str, on: &[Expr], info: &TableInfo) -> Access {
    match classify(&target_only(table, on), info) {
        Access::Partitions => Access::Partitions,
        _ => Access::KeyRange,
    }
}

/// The conjuncts of a MERGE's ON that name only target columns (literal predicates
/// such as `t.ds = '2024-01-02'`), unqualified, as filters of a scan of the target.
fn target_only(table: &str, on: &[Expr]) -> Vec<Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    on.iter()
        .flat_map(|e| {
            datafusion::logical_expr::utils::split_conjunction(e)
                .into_iter()
                .cloned()
        })
        .filter(|c| {
            !c.column_refs().is_empty()
                && c.column_refs()
                    .iter()
                    .all(|col| col.relation.as_ref().is_some_and(|r| r.table() == table))
        })
        .filter_map(|c| {
            c.transform(|e| match e {
                Expr::Column(col) => Ok(Transformed::yes(Expr::Column(
                    datafusion::common::Column::new_unqualified(col.name),
                ))),
                other => Ok(Transformed::no(other)),
            })
            .ok()
            .map(|t| t.data)
        })
        .collect()
}
