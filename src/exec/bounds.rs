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

use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, ScalarValue, TableReference};
use datafusion::functions_aggregate::expr_fn::{count_distinct, max, min};

pub use crate::pruning::Catalog;
use crate::pruning::{eligible, Driven, Driver, Side, MAX_KEY_IN_LIST};
use datafusion::logical_expr::{in_list, lit, Expr, Filter, LogicalPlan};
use datafusion::prelude::{ident, DataFrame, SessionContext};

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
    shipped: bool,
) -> datafusion::common::Result<(DataFrame, Vec<String>)> {
    let state = ctx.state();
    let plan = state.optimize(df.logical_plan())?;
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
                let predicate = predicate(&key, b, partition, shipped);
                applied.push(format!(
                    "{} (from {}.{})",
                    describe(&key, b, partition, shipped),
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
        })?
        .data;
    applied.sort();
    applied.dedup();
    Ok((DataFrame::new(state, rewritten), applied))
}

async fn collect(
    df: datafusion::common::Result<DataFrame>,
) -> datafusion::common::Result<Vec<RecordBatch>> {
    df?.collect().await
}

async fn compute(
    ctx: &SessionContext,
    d: &Driver,
    partition: bool,
) -> datafusion::common::Result<Bounds> {
    let column = ident(&d.column);
    let relation = ctx.table(TableReference::bare(d.relation.as_str())).await?;
    let aggregates = vec![
        min(column.clone()),
        max(column.clone()),
        count_distinct(column.clone()),
    ];
    let batches = collect(relation.clone().aggregate(vec![], aggregates)).await?;
    let batch = batches
        .first()
        .ok_or_else(|| DataFusionError::Internal("the key bounds query returned no row".into()))?;
    let min = ScalarValue::try_from_array(batch.column(0), 0)?;
    let max = ScalarValue::try_from_array(batch.column(1), 0)?;
    let distinct = ScalarValue::try_from_array(batch.column(2), 0)?;
    let limit = if partition {
        MAX_IN_LIST
    } else {
        MAX_KEY_IN_LIST
    };
    let small = matches!(distinct, ScalarValue::Int64(Some(n)) if (n as usize) <= limit);
    let values = if small {
        let distinct = relation
            .filter(column.clone().is_not_null())
            .and_then(|df| df.select(vec![column.clone()]))
            .and_then(|df| df.distinct())
            .and_then(|df| df.sort(vec![column.sort(true, false)]));
        let batches = collect(distinct).await?;
        let mut values = Vec::new();
        for b in &batches {
            for i in 0..b.num_rows() {
                values.push(ScalarValue::try_from_array(b.column(0), i)?);
            }
        }
        Some(values)
    } else {
        None
    };
    Ok(Bounds { min, max, values })
}

/// `shipped`: the plan goes to a cluster. There a long list is DataFusion's IN list
/// (a `KeyList` cannot be decoded) and a single key is a two-key range (below).
fn predicate(key: &Expr, b: &Bounds, partition: bool, shipped: bool) -> Expr {
    if b.min.is_null() || b.max.is_null() {
        // An empty (or all-NULL) relation matches no key.
        return lit(false);
    }
    let list = |values: &Vec<ScalarValue>| {
        if !shipped && !partition && values.len() > KeyList::ABOVE {
            if let Ok(udf) = KeyList::udf(values) {
                return udf.call(vec![key.clone()]);
            }
        }
        in_list(
            key.clone(),
            values.iter().cloned().map(lit).collect(),
            false,
        )
    };
    // On a cluster one key would be a constant, which the planner then leaves out
    // of sorts that a shuffle does not keep (Ballista 55: "Expects PARTITION BY
    // expression to be ordered"). A range over it and the next key prunes the same.
    if shipped && !partition && b.min == b.max {
        if let Some(next) = successor(&b.max) {
            return key.clone().between(lit(b.min.clone()), lit(next));
        }
    }
    let range = key.clone().between(lit(b.min.clone()), lit(b.max.clone()));
    match (&b.values, partition) {
        (Some(values), true) => list(values),
        (Some(values), false) => range.and(list(values)),
        (None, _) => range,
    }
}

/// The next integer key, where there is one.
fn successor(v: &ScalarValue) -> Option<ScalarValue> {
    match v {
        ScalarValue::Int64(Some(n)) => n.checked_add(1).map(|n| ScalarValue::Int64(Some(n))),
        ScalarValue::Int32(Some(n)) => n.checked_add(1).map(|n| ScalarValue::Int32(Some(n))),
        _ => None,
    }
}

/// The predicate for the report, with long lists counted rather than spelled out.
fn describe(key: &Expr, b: &Bounds, partition: bool, shipped: bool) -> String {
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
        _ => crate::pruning::sql_text(&predicate(key, b, partition, shipped)),
    }
}

/// `key IN (…)` for a long list, as a function that holds the list's hash set.
/// DataFusion's own IN list rebuilds that set whenever its expression is rewritten —
/// for every file a scan opens (its row filter, its row group and page pruning) —
/// and cannot prune row groups with more than 20 values anyway: with 4,438 keys
/// over 361 files that was 1.5 s of the 6 s `existing` of the summary run. The Parquet
/// reader still tests it on the key column before decoding the rest of a row.
#[derive(Debug)]
struct KeyList {
    /// The list over the function's one argument (column 0 of a one-column batch).
    set: datafusion::physical_expr::expressions::InListExpr,
    input: datafusion::arrow::datatypes::SchemaRef,
    signature: datafusion::logical_expr::Signature,
}

impl KeyList {
    /// Longer lists than this become a `KeyList` (shorter ones prune row groups).
    const ABOVE: usize = 20;

    /// The list as the scalar function that tests membership in its hash set.
    fn udf(
        values: &[ScalarValue],
    ) -> datafusion::common::Result<datafusion::logical_expr::ScalarUDF> {
        use datafusion::arrow::datatypes::{Field, Schema};
        use datafusion::physical_expr::expressions::{Column, InListExpr};
        let array = ScalarValue::iter_to_array(values.iter().cloned())?;
        let data_type = array.data_type().clone();
        let input = std::sync::Arc::new(Schema::new(vec![Field::new(
            "key",
            data_type.clone(),
            true,
        )]));
        let set = InListExpr::try_new_from_array(
            std::sync::Arc::new(Column::new("key", 0)),
            array,
            false,
            &input,
        )?;
        let signature = datafusion::logical_expr::Signature::exact(
            vec![data_type],
            datafusion::logical_expr::Volatility::Immutable,
        );
        Ok(datafusion::logical_expr::ScalarUDF::new_from_impl(
            KeyList {
                set,
                input,
                signature,
            },
        ))
    }
}

impl PartialEq for KeyList {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for KeyList {}

impl std::hash::Hash for KeyList {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self as *const Self as usize).hash(state);
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for KeyList {
    fn name(&self) -> &str {
        "in_key_list"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _: &[datafusion::arrow::datatypes::DataType],
    ) -> datafusion::common::Result<datafusion::arrow::datatypes::DataType> {
        Ok(datafusion::arrow::datatypes::DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::physical_expr::PhysicalExpr;
        let keys = args.args[0].to_array(args.number_rows)?;
        let batch = datafusion::arrow::array::RecordBatch::try_new(self.input.clone(), vec![keys])?;
        self.set.evaluate(&batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::col;
    use std::sync::Arc;

    fn bounds(values: std::ops::Range<i64>) -> Bounds {
        Bounds {
            min: ScalarValue::Int64(Some(values.start)),
            max: ScalarValue::Int64(Some(values.end - 1)),
            values: Some(values.map(|v| ScalarValue::Int64(Some(v * 10))).collect()),
        }
    }

    /// Evaluates `predicate` over keys 0..400 and returns the keys it keeps.
    async fn kept(predicate: Expr) -> Vec<i64> {
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..400))])
                .unwrap();
        let batches = ctx
            .read_batch(batch)
            .unwrap()
            .filter(predicate)
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_long_key_list_becomes_one_set_and_keeps_exactly_its_keys() {
        // 30 values (0, 10, …, 290) within the range 0..=29: only 0, 10 and 20 pass both.
        let long = predicate(&col("k"), &bounds(0..30), false, false);
        assert!(long.to_string().contains("in_key_list"), "{long}");
        assert_eq!(kept(long).await, vec![0, 10, 20]);
        // Short lists, and lists on partition columns, stay DataFusion's IN list.
        let short = predicate(&col("k"), &bounds(0..5), false, false);
        assert!(!short.to_string().contains("in_key_list"), "{short}");
        let partition = predicate(&col("k"), &bounds(0..30), true, false);
        assert!(
            !partition.to_string().contains("in_key_list"),
            "{partition}"
        );
        assert_eq!(kept(partition).await.len(), 30);
    }

    /// On a cluster a single key is a two-key range (not a constant the planner
    /// could drop from sorts); here it stays the key.
    #[tokio::test]
    async fn a_single_key_for_a_cluster_is_a_range_with_the_next_key() {
        let one = Bounds {
            min: ScalarValue::Int64(Some(42)),
            max: ScalarValue::Int64(Some(42)),
            values: Some(vec![ScalarValue::Int64(Some(42))]),
        };
        assert_eq!(
            kept(predicate(&col("k"), &one, false, true)).await,
            vec![42, 43]
        );
        assert_eq!(
            kept(predicate(&col("k"), &one, false, false)).await,
            vec![42]
        );
        // The report describes the bound that was applied.
        assert_eq!(
            describe(&col("k"), &one, false, true),
            "(k BETWEEN 42 AND 43)"
        );
        assert_eq!(
            describe(&col("k"), &one, false, false),
            "((k BETWEEN 42 AND 42) AND k IN (42))"
        );
    }
}
