//! Which Delta scans a materialized relation drives through a join (docs/design.md §5):
//! the executor turns the relation's key range into literal predicates on those
//! scans (`exec::bounds`), and `plan` shows them. Pure plan analysis, shared by both.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::JoinType;
use datafusion::logical_expr::{Expr, Join, LogicalPlan};

/// At most this many distinct keys of a materialized relation become a literal IN
/// list on a joined Delta scan's data column (beside the range); more would make
/// planning itself slow. With the list, Parquet tests the key column before decoding
/// a row's other columns: the summary pipeline's `existing` at 100,000 accounts read
/// 9,383 accounts' windows in 15 s with it, in 42 s and 13.7 GiB peak with the range
/// alone (the cap was 5,000 then).
pub const MAX_KEY_IN_LIST: usize = 50_000;

/// A Delta-side join key driven by a materialized relation's column.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Driver {
    pub relation: String,
    pub column: String,
}

/// What the rule knows about the pipeline's objects.
pub struct Catalog<'a> {
    /// Delta table name → its partition columns.
    pub tables: &'a BTreeMap<String, Vec<String>>,
    /// Names of materialized relations computed so far.
    pub materialized: &'a BTreeSet<String>,
}

/// Which input of the join is the driven Delta scan, with its key expression.
pub enum Side {
    Left(Expr),
    Right(Expr),
}

/// One driven key: the Delta table's side and key, and the relation column that
/// drives it.
pub struct Driven {
    pub side: Side,
    pub table: String,
    pub driver: Driver,
    /// The key is a partition column of the table.
    pub partition: bool,
}

/// Join keys whose one side scans a Delta table and whose other side scans a
/// materialized relation, on a side that may be filtered without changing the
/// join's result (not the preserved side of an outer or anti join).
pub fn eligible(join: &Join, catalog: &Catalog<'_>) -> Vec<Driven> {
    let (left_ok, right_ok) = match join.join_type {
        JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi => (true, true),
        JoinType::Left | JoinType::LeftMark => (false, true),
        JoinType::Right | JoinType::RightMark => (true, false),
        JoinType::RightAnti => (false, false),
        JoinType::LeftAnti | JoinType::Full => (false, false),
    };
    let mut out = Vec::new();
    for (l, r) in &join.on {
        let (Some(l), Some(r)) = (key_column(l), key_column(r)) else {
            continue;
        };
        let (Some(lc), Some(rc)) = (l.try_as_col(), r.try_as_col()) else {
            continue;
        };
        let (Some(ls), Some(rs)) = (source_of(&join.left, lc), source_of(&join.right, rc)) else {
            continue;
        };
        if left_ok && catalog.tables.contains_key(&ls) && catalog.materialized.contains(&rs) {
            let partition = catalog.tables[&ls].contains(&lc.name);
            let driver = Driver {
                relation: rs.clone(),
                column: rc.name.clone(),
            };
            out.push(Driven {
                side: Side::Left(l.clone()),
                table: ls.clone(),
                driver,
                partition,
            });
        }
        if right_ok && catalog.tables.contains_key(&rs) && catalog.materialized.contains(&ls) {
            let partition = catalog.tables[&rs].contains(&rc.name);
            let driver = Driver {
                relation: ls.clone(),
                column: lc.name.clone(),
            };
            out.push(Driven {
                side: Side::Right(r.clone()),
                table: rs,
                driver,
                partition,
            });
        }
    }
    out
}

/// A join key that is a column, possibly under a cast (dictionary-encoded partition
/// columns are compared through one): the bare column, so the bound prunes.
fn key_column(e: &Expr) -> Option<&Expr> {
    match e {
        Expr::Column(_) => Some(e),
        Expr::Cast(c) => key_column(&c.expr),
        Expr::TryCast(c) => key_column(&c.expr),
        _ => None,
    }
}

/// The table or relation a join input takes `column` from: through projections,
/// filters and aliases, and through inner joins (a filter on one input's column
/// commutes with them), matched by the column's qualifier.
fn source_of(plan: &LogicalPlan, column: &datafusion::common::Column) -> Option<String> {
    let qualifier = column.relation.as_ref().map(|r| r.table());
    match plan {
        LogicalPlan::TableScan(scan) => {
            let name = scan.table_name.table();
            qualifier
                .is_none_or(|q| q == name)
                .then(|| name.to_string())
        }
        LogicalPlan::SubqueryAlias(alias) => {
            if qualifier == Some(alias.alias.table()) {
                single_scan(&alias.input)
            } else {
                None
            }
        }
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) => {
            source_of(plan.inputs().first()?, column)
        }
        LogicalPlan::Join(join) if join.join_type == JoinType::Inner => {
            source_of(&join.left, column).or_else(|| source_of(&join.right, column))
        }
        _ => None,
    }
}

/// The one table an aliased input reads, through projections and filters.
fn single_scan(plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::TableScan(scan) => Some(scan.table_name.table().to_string()),
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
            single_scan(plan.inputs().first()?)
        }
        _ => None,
    }
}

/// An expression as SQL (`orders.ds = '2024-01-02'`), as the analyst wrote it.
pub fn sql_text(expr: &Expr) -> String {
    let expr = expr.clone().unalias();
    match datafusion::sql::unparser::expr_to_sql(&expr) {
        Ok(sql) => sql.to_string(),
        Err(_) => expr.to_string(),
    }
}
