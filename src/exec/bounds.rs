//! Literal bounds from materialized relations (docs/design.md §5).
//!
//! A join between a Delta table and a materialized relation only prunes Delta files
//! when the table's scan has *literal* predicates: dynamic join filters reach row
//! groups after every footer is opened, and nothing at all for partition columns.
//! A materialized relation is already computed when its readers start, so its key
//! range (and, when small, its set of partition values) is known: this rule adds
//! `key BETWEEN min AND max` (and `part IN (…)`) on the Delta side of such joins.
//! When the relation has few enough keys it also adds `key IN (…)`: Delta skips
//! files by the range, and the Parquet reader (with filter pushdown on, see
//! `session`) tests the list on the key column before decoding the other columns of
//! a row — most of the cost when the keys are spread over every file.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::ScalarValue;

pub use crate::pruning::Catalog;
use crate::pruning::{eligible, Driven, Driver, Side, MAX_KEY_IN_LIST};
use datafusion::logical_expr::{in_list, lit, Expr, Filter, LogicalPlan};
use datafusion::prelude::{DataFrame, SessionContext};

/// At most this many distinct values become an IN list on a partition column.
const MAX_IN_LIST: usize = 1000;

#[derive(Clone, Debug)]
struct Bounds {
    min: ScalarValue,
    max: ScalarValue,
    values: Option<Vec<ScalarValue>>,
}

/// Returns `df` with literal bounds added, and a description of each bound added.
pub async fn apply(
    ctx: &SessionContext,
    catalog: &Catalog<'_>,
    df: DataFrame,
) -> Result<(DataFrame, Vec<String>), String> {
    let state = ctx.state();
    let plan = state
        .optimize(df.logical_plan())
        .map_err(|e| e.to_string())?;
    let mut drivers: BTreeSet<(Driver, bool)> = BTreeSet::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::Join(join) = node {
            for d in eligible(join, catalog) {
                drivers.insert((d.driver, d.partition));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if drivers.is_empty() {
        return Ok((df, Vec::new()));
    }
    let mut bounds: BTreeMap<(Driver, bool), Bounds> = BTreeMap::new();
    for (driver, partition) in drivers {
        let b = compute(ctx, &driver, partition).await?;
        bounds.insert((driver, partition), b);
    }
    let mut applied = Vec::new();
    let rewritten = plan
        .transform_up(|node| {
            let LogicalPlan::Join(mut join) = node else {
                return Ok(Transformed::no(node));
            };
            let mut changed = false;
            for Driven {
                side,
                driver,
                partition,
                ..
            } in eligible(&join, catalog)
            {
                let (key, input) = match side {
                    Side::Left(key) => (key, &mut join.left),
                    Side::Right(key) => (key, &mut join.right),
                };
                let b = &bounds[&(driver.clone(), partition)];
                let predicate = predicate(&key, b, partition);
                applied.push(format!(
                    "{} (from {}.{})",
                    describe(&key, b, partition),
                    driver.relation,
                    driver.column
                ));
                let filter = Filter::try_new(predicate, input.clone())?;
                *input = std::sync::Arc::new(LogicalPlan::Filter(filter));
                changed = true;
            }
            let node = LogicalPlan::Join(join);
            Ok(if changed {
                Transformed::yes(node)
            } else {
                Transformed::no(node)
            })
        })
        .map_err(|e| e.to_string())?
        .data;
    applied.sort();
    applied.dedup();
    Ok((DataFrame::new(state, rewritten), applied))
}

async fn query(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Vec<datafusion::arrow::array::RecordBatch>, String> {
    let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
    df.collect().await.map_err(|e| e.to_string())
}

async fn compute(ctx: &SessionContext, d: &Driver, partition: bool) -> Result<Bounds, String> {
    let col = format!("\"{}\"", d.column.replace('"', "\"\""));
    let rel = format!("\"{}\"", d.relation.replace('"', "\"\""));
    let sql = format!("SELECT min({col}), max({col}), count(DISTINCT {col}) FROM {rel}");
    let batches = query(ctx, &sql).await?;
    let batch = batches.first().ok_or("no bounds")?;
    let min = ScalarValue::try_from_array(batch.column(0), 0).map_err(|e| e.to_string())?;
    let max = ScalarValue::try_from_array(batch.column(1), 0).map_err(|e| e.to_string())?;
    let distinct = ScalarValue::try_from_array(batch.column(2), 0).map_err(|e| e.to_string())?;
    let limit = if partition {
        MAX_IN_LIST
    } else {
        MAX_KEY_IN_LIST
    };
    let small = matches!(distinct, ScalarValue::Int64(Some(n)) if (n as usize) <= limit);
    let values = if small {
        let sql = format!("SELECT DISTINCT {col} FROM {rel} WHERE {col} IS NOT NULL ORDER BY 1");
        let batches = query(ctx, &sql).await?;
        let mut values = Vec::new();
        for b in &batches {
            for i in 0..b.num_rows() {
                values
                    .push(ScalarValue::try_from_array(b.column(0), i).map_err(|e| e.to_string())?);
            }
        }
        Some(values)
    } else {
        None
    };
    Ok(Bounds { min, max, values })
}

fn predicate(key: &Expr, b: &Bounds, partition: bool) -> Expr {
    if b.min.is_null() || b.max.is_null() {
        // An empty (or all-NULL) relation matches no key.
        return lit(false);
    }
    let list = |values: &Vec<ScalarValue>| {
        in_list(
            key.clone(),
            values.iter().cloned().map(lit).collect(),
            false,
        )
    };
    let range = key.clone().between(lit(b.min.clone()), lit(b.max.clone()));
    match (&b.values, partition) {
        (Some(values), true) => list(values),
        (Some(values), false) => range.and(list(values)),
        (None, _) => range,
    }
}

/// The predicate for the report, with long lists counted rather than spelled out.
fn describe(key: &Expr, b: &Bounds, partition: bool) -> String {
    const SHOWN: usize = 10;
    match &b.values {
        Some(values) if values.len() > SHOWN && !b.min.is_null() => {
            let key_text = crate::pruning::sql_text(key);
            let list = format!("{key_text} IN ({} values)", values.len());
            if partition {
                list
            } else {
                format!(
                    "{} AND {list}",
                    crate::pruning::sql_text(
                        &key.clone().between(lit(b.min.clone()), lit(b.max.clone()))
                    )
                )
            }
        }
        _ => crate::pruning::sql_text(&predicate(key, b, partition)),
    }
}
