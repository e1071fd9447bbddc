//! Store assignment: the value types a MERGE may write into a column. DataFusion
//! plans a MERGE's INSERT values and UPDATE assignments without casting them to the
//! target's types, so a string written into a BIGINT column passed `plan` and failed
//! only at run time. An INSERT's values are cast (and literals folded) when it is
//! bound; a MERGE's are checked here against the same families.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ExprSchema};
use datafusion::logical_expr::dml::MergeIntoAction;
use datafusion::logical_expr::{ExprSchemable, LogicalPlan, WriteOp};

use super::StageSql;
use crate::diag::{Code, Problem, Result};

/// Every value a MERGE writes has a type its column can store.
pub fn check_merge(sql: &StageSql<'_>, plan: &LogicalPlan) -> Result<()> {
    let LogicalPlan::Dml(dml) = plan else {
        return Ok(());
    };
    let WriteOp::MergeInto(op) = &dml.op else {
        return Ok(());
    };
    let target = dml.target.schema();
    let Ok(qualified) = DFSchema::try_from_qualified_schema(dml.table_name.clone(), &target) else {
        return Ok(());
    };
    let Ok(both) = qualified.join(dml.input.schema()) else {
        return Ok(());
    };
    let names: Vec<String> = target.fields().iter().map(|f| f.name().clone()).collect();
    for clause in &op.clauses {
        let writes: Vec<(&String, &datafusion::logical_expr::Expr)> = match &clause.action {
            MergeIntoAction::Update(sets) => sets.iter().map(|(c, e)| (c, e)).collect(),
            MergeIntoAction::Insert { columns, values } => {
                let columns = if columns.is_empty() { &names } else { columns };
                columns.iter().zip(values).collect()
            }
            MergeIntoAction::Delete => Vec::new(),
        };
        for (column, value) in writes {
            let Ok(field) = target.field_with_name(column) else {
                continue; // DataFusion names unknown columns itself
            };
            let Ok(from) = value.get_type(&both as &dyn ExprSchema) else {
                continue;
            };
            if !storable(&from, field.data_type()) {
                let keyword = match clause.action {
                    MergeIntoAction::Insert { .. } => "INSERT",
                    _ => "SET",
                };
                let at = Place {
                    line: line_of(sql.sql, keyword),
                    token: match value {
                        datafusion::logical_expr::Expr::Column(c) => c.name.clone(),
                        _ => column.clone(),
                    },
                };
                return Err(type_problem(
                    sql,
                    &dml.table_name.to_string(),
                    column,
                    (&from, field.data_type()),
                    &at,
                ));
            }
        }
    }
    Ok(())
}

/// Where a diagnostic points: a token searched from a line of the rendered SQL.
struct Place {
    line: usize,
    token: String,
}

/// The first line (1-based) of `sql` holding `keyword` (any case), else 1.
fn line_of(sql: &str, keyword: &str) -> usize {
    sql.lines()
        .position(|l| l.to_uppercase().contains(keyword))
        .map_or(1, |i| i + 1)
}

fn type_problem(
    sql: &StageSql<'_>,
    table: &str,
    column: &str,
    (from, to): (&DataType, &DataType),
    at: &Place,
) -> Problem {
    sql.problem_at(
        Code::TypeError,
        format!(
            "stage `{}`: the MERGE writes a {} value into `{table}.{column}`, which is {}",
            sql.name(),
            sql_type(from),
            sql_type(to)
        ),
        at.line,
        1,
        Some(&at.token),
        "type error",
    )
    .help(format!(
        "write a value of the column's type, or cast it explicitly: CAST(… AS {})",
        sql_type(to)
    ))
}

fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Int64 => "BIGINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => "STRING".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP WITH TIME ZONE".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        other => other.to_string(),
    }
}

/// Same type family: numbers into numbers, strings into strings, dates and
/// timestamps into either, booleans into booleans, lists of storable elements;
/// NULL into anything.
pub fn storable(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let string = |t: &DataType| match t {
        Utf8 | LargeUtf8 | Utf8View => true,
        Dictionary(_, v) => matches!(v.as_ref(), Utf8 | LargeUtf8 | Utf8View),
        _ => false,
    };
    let temporal = |t: &DataType| matches!(t, Date32 | Date64 | Timestamp(_, _));
    match (from, to) {
        (Null, _) => true,
        (a, b) if a == b => true,
        (a, b) if a.is_numeric() && b.is_numeric() => true,
        (a, b) if string(a) && string(b) => true,
        (a, b) if temporal(a) && temporal(b) => true,
        (List(a) | LargeList(a) | ListView(a), List(b) | LargeList(b) | ListView(b)) => {
            storable(a.data_type(), b.data_type())
        }
        (Dictionary(_, v), b) => storable(v, b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn families() {
        use DataType::*;
        assert!(storable(&Int32, &Int64));
        assert!(storable(&Utf8View, &Utf8));
        assert!(storable(
            &Date32,
            &Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None)
        ));
        assert!(storable(&Null, &Date32));
        let list = |t: DataType| {
            List(Arc::new(datafusion::arrow::datatypes::Field::new(
                "item", t, true,
            )))
        };
        assert!(storable(&list(Int32), &list(Int64)));
        assert!(!storable(&Utf8, &Int64));
        assert!(!storable(&Utf8, &Date32));
        assert!(!storable(&Int64, &Utf8));
        assert!(!storable(&list(Utf8), &list(Int32)));
    }
}
