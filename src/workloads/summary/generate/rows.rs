//! Rows into Arrow record batches, and the full summary row of an account's month.

use datafusion::arrow::array::ArrayBuilder;
use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Date32Builder, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};

use super::values::*;
use crate::diag::{Code, Problem, Result};

/// Column builders for one table.
pub(super) enum Column {
    Int64(Int64Builder),
    Int32(Int32Builder),
    Str(StringBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder, Option<Arc<str>>),
    IntList(ListBuilder<Int32Builder>),
    StrList(ListBuilder<StringBuilder>),
}

impl Column {
    pub(super) fn new(field: &Field) -> Result<Self> {
        Ok(match field.data_type() {
            DataType::Int64 => Column::Int64(Int64Builder::new()),
            DataType::Int32 => Column::Int32(Int32Builder::new()),
            DataType::Utf8 => Column::Str(StringBuilder::new()),
            DataType::Date32 => Column::Date(Date32Builder::new()),
            DataType::Timestamp(_, tz) => {
                Column::Ts(TimestampMicrosecondBuilder::new(), tz.clone())
            }
            DataType::List(item) if item.data_type() == &DataType::Int32 => {
                Column::IntList(ListBuilder::new(Int32Builder::new()).with_field(item.clone()))
            }
            DataType::List(item) if item.data_type() == &DataType::Utf8 => {
                Column::StrList(ListBuilder::new(StringBuilder::new()).with_field(item.clone()))
            }
            other => {
                return Err(Problem::invalid(
                    Code::GenerateSchema,
                    format!(
                        "column `{}`: the generator does not make values of type {other}",
                        field.name()
                    ),
                ))
            }
        })
    }

    pub(super) fn push(&mut self, v: &V) {
        match (self, v) {
            (Column::Int64(b), V::Int(i)) => b.append_value(*i),
            (Column::Int32(b), V::Int(i)) => b.append_value(*i as i32),
            (Column::Str(b), V::Str(s)) => b.append_value(s),
            (Column::Date(b), V::Date(d)) => b.append_value(*d),
            (Column::Ts(b, _), V::Ts(t)) => b.append_value(*t),
            (Column::IntList(b), V::List(items)) => {
                for i in items {
                    b.values().append_option(i.as_int().map(|i| i as i32));
                }
                b.append(true);
            }
            (Column::StrList(b), V::List(items)) => {
                for s in items {
                    b.values().append_option(s.as_str());
                }
                b.append(true);
            }
            (Column::Int64(b), _) => b.append_null(),
            (Column::Int32(b), _) => b.append_null(),
            (Column::Str(b), _) => b.append_null(),
            (Column::Date(b), _) => b.append_null(),
            (Column::Ts(b, _), _) => b.append_null(),
            (Column::IntList(b), _) => b.append(false),
            (Column::StrList(b), _) => b.append(false),
        }
    }

    pub(super) fn finish(self) -> ArrayRef {
        match self {
            Column::Int64(mut b) => Arc::new(b.finish()),
            Column::Int32(mut b) => Arc::new(b.finish()),
            Column::Str(mut b) => Arc::new(b.finish()),
            Column::Date(mut b) => Arc::new(b.finish()),
            Column::Ts(mut b, tz) => Arc::new(b.finish().with_timezone_opt(tz)),
            Column::IntList(mut b) => Arc::new(b.finish()),
            Column::StrList(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Rows of one table, appended column by column.
pub(super) struct Rows {
    pub(super) schema: SchemaRef,
    pub(super) columns: Vec<Column>,
}

impl Rows {
    pub(super) fn new(schema: &SchemaRef) -> Result<Self> {
        Ok(Rows {
            schema: schema.clone(),
            columns: schema
                .fields()
                .iter()
                .map(|f| Column::new(f))
                .collect::<Result<_>>()?,
        })
    }

    pub(super) fn len(&self) -> usize {
        match self.columns.first() {
            Some(Column::Int64(b)) => b.len(),
            Some(Column::Int32(b)) => b.len(),
            Some(Column::Str(b)) => b.len(),
            Some(Column::Date(b)) => b.len(),
            Some(Column::Ts(b, _)) => b.len(),
            Some(Column::IntList(b)) => b.len(),
            Some(Column::StrList(b)) => b.len(),
            None => 0,
        }
    }

    pub(super) fn push(&mut self, values: &[V]) {
        for (c, v) in self.columns.iter_mut().zip(values) {
            c.push(v);
        }
    }

    /// Pushes a row given by column name (missing names are NULL).
    pub(super) fn push_named(&mut self, values: &BTreeMap<String, V>) {
        let row: Vec<V> = self
            .schema
            .fields()
            .iter()
            .map(|f| values.get(f.name()).cloned().unwrap_or(V::Null))
            .collect();
        self.push(&row);
    }

    pub(super) fn finish(self) -> Result<RecordBatch> {
        RecordBatch::try_new(
            self.schema,
            self.columns.into_iter().map(Column::finish).collect(),
        )
        .map_err(|e| Problem::failed(Code::GenerateWrite, e.to_string()))
    }
}

/// The full summary row at month offset `s`: the stored scalars plus the arrays
/// (element p = the rolling value of month s − p if that row exists and is not
/// deleted; element 0 is the row's own) and the grid.
pub(super) fn summary_row(layout: &Layout, account: &Account, s: usize) -> Vec<V> {
    let row = account.rows[s].as_ref().expect("a row at s");
    let mut values = row.values.clone();
    for &(array, from) in &layout.rolling {
        let items = (0..layout.history_length)
            .map(
                |p| match s.checked_sub(p).and_then(|m| account.rows[m].as_ref()) {
                    Some(r) if p == 0 || !r.deleted => r.values[from].clone(),
                    _ => V::Null,
                },
            )
            .collect();
        values[array] = V::List(items);
    }
    if let (Some(grid), Some(&(ratings, _))) = (
        layout.grid,
        layout
            .rolling
            .iter()
            .find(|(_, from)| *from == layout.idx["payment_rating_cd"]),
    ) {
        if let V::List(items) = &values[ratings] {
            values[grid] = V::Str(items.iter().map(|v| v.as_str().unwrap_or("?")).collect());
        }
    }
    values
}
