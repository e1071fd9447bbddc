//! Schemas between DataFusion and Delta: the plain types a Delta log records, and
//! what a table is created with.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

/// Provider schemas use view and dictionary types; the log uses plain ones.
pub fn normalize(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), plain_type(f.data_type()), true))
            .collect::<Vec<_>>(),
    )
}

fn plain_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Dictionary(_, v) => plain_type(v),
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) => DataType::List(
            Arc::new(Field::new("element", plain_type(f.data_type()), true)),
        ),
        other => other.clone(),
    }
}

/// Delta has no view types and stores timestamps in microseconds.
pub fn for_delta(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                let t = match plain_type(f.data_type()) {
                    DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz),
                    other => other,
                };
                Field::new(f.name(), t, f.is_nullable())
            })
            .collect::<Vec<_>>(),
    )
}

/// Columns (`name type`) only in `planned`, and only in `actual`, compared on plain
/// types and names; None when both hold the same columns.
pub fn differences(planned: &Schema, actual: &Schema) -> Option<(Vec<String>, Vec<String>)> {
    let describe = |s: &Schema| {
        normalize(s)
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
    };
    let (want, have) = (describe(planned), describe(actual));
    if want == have {
        return None;
    }
    let only = |a: &[String], b: &[String]| a.iter().filter(|c| !b.contains(c)).cloned().collect();
    Some((only(&want, &have), only(&have, &want)))
}
