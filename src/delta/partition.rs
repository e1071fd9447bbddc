//! Partition values and file paths as the Delta log writes them, read back: the one
//! place that decides how a log's partition string becomes a typed value, and how a
//! log's file path becomes an object-store path.
//!
//! A partition value is a string in the log (the protocol's "partition value
//! serialization": `2024-02-01 00:00:00.000000` for a timestamp, `1.50` for a
//! decimal, `true` for a boolean, …), and the same value has other spellings
//! elsewhere (Arrow prints that timestamp `2024-02-01T00:00:00Z`). So sqlplan never
//! compares a log string with a row's value as text: the string is parsed by the
//! Delta kernel's parser for the column's type and compared typed.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::Path;

use buoyant_kernel::expressions::Scalar;
use buoyant_kernel::schema::{DataType as KernelType, PrimitiveType};

use crate::delta::error::{Doing as _, Error, Result};

/// The value of a partition column of Arrow type `data_type` whose log entry is `raw`
/// (None: the log's null). An empty string is the empty value of a string or binary
/// column and NULL of any other type, as the kernel's scan reads it.
pub fn value(raw: Option<&str>, data_type: &DataType) -> Result<ScalarValue> {
    if let DataType::Dictionary(key, inner) = data_type {
        return Ok(ScalarValue::Dictionary(
            key.clone(),
            Box::new(value(raw, inner)?),
        ));
    }
    let null = || ScalarValue::try_from(data_type).map_err(Error::from);
    let Some(raw) = raw else {
        return null();
    };
    // The kernel knows a column's logical type, not Arrow's layouts of it (the cast
    // below gives the value the column's exact type back): a timestamp with any
    // zone is Delta's `timestamp` (UTC), one without is `timestamp_ntz`.
    let micros_utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
    let logical = match data_type {
        DataType::Utf8View | DataType::LargeUtf8 => &DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => &DataType::Binary,
        DataType::Timestamp(_, Some(_)) => &micros_utc,
        DataType::Timestamp(_, None) => &micros,
        t => t,
    };
    let kernel: KernelType = logical
        .try_into_kernel()
        .doing(|| format!("a partition column of type {data_type}"))?;
    let primitive = match &kernel {
        KernelType::Primitive(p) => p,
        _ => {
            return Err(Error::table(format!(
                "a partition column of type {data_type} is not a primitive type"
            )))
        }
    };
    let parsed = if raw.is_empty() {
        match primitive {
            PrimitiveType::String => Scalar::String(String::new()),
            PrimitiveType::Binary => Scalar::Binary(Vec::new()),
            _ => return null(),
        }
    } else {
        primitive
            .parse_scalar(raw)
            .doing(|| format!("partition value `{raw}` of type {data_type}"))?
    };
    let scalar = to_scalar_value(parsed, data_type)?;
    if scalar.data_type() == *data_type {
        Ok(scalar)
    } else {
        scalar
            .cast_to(data_type)
            .doing(|| format!("partition value `{raw}` as {data_type}"))
    }
}

/// A kernel scalar of a primitive type as DataFusion's (then cast to the column's
/// exact Arrow type by the caller: a timestamp's zone, a view or large string).
fn to_scalar_value(scalar: Scalar, data_type: &DataType) -> Result<ScalarValue> {
    let zone = match data_type {
        DataType::Timestamp(_, zone) => zone.clone(),
        _ => Some("UTC".into()),
    };
    Ok(match scalar {
        Scalar::Boolean(v) => ScalarValue::Boolean(Some(v)),
        Scalar::String(v) => ScalarValue::Utf8(Some(v)),
        Scalar::Byte(v) => ScalarValue::Int8(Some(v)),
        Scalar::Short(v) => ScalarValue::Int16(Some(v)),
        Scalar::Integer(v) => ScalarValue::Int32(Some(v)),
        Scalar::Long(v) => ScalarValue::Int64(Some(v)),
        Scalar::Float(v) => ScalarValue::Float32(Some(v)),
        Scalar::Double(v) => ScalarValue::Float64(Some(v)),
        Scalar::Timestamp(v) => ScalarValue::TimestampMicrosecond(Some(v), zone),
        Scalar::TimestampNtz(v) => ScalarValue::TimestampMicrosecond(Some(v), None),
        Scalar::Date(v) => ScalarValue::Date32(Some(v)),
        Scalar::Binary(v) => ScalarValue::Binary(Some(v)),
        Scalar::Decimal(d) => {
            ScalarValue::Decimal128(Some(d.bits()), d.precision(), d.scale() as i8)
        }
        Scalar::Null(_) => ScalarValue::try_from(data_type).map_err(Error::from)?,
        other => {
            return Err(Error::table(format!(
                "partition value {other} of type {data_type} is not supported"
            )))
        }
    })
}

/// The object-store path of a table's file: `decoded` is its path in the log
/// decoded once (as `LogicalFileView::path` gives it), `root` the table root's path
/// in the store (empty for a store rooted at the table). The decoded path is the
/// object's key as it is, never encoded again: a partition folder `ts=x%20y` (the
/// writer's escaping of the value `x y`) stays `ts=x%20y`.
pub fn file_path(root: &Path, decoded: &str) -> Result<Path> {
    let joined = if root.as_ref().is_empty() {
        decoded.to_string()
    } else {
        format!("{root}/{decoded}")
    };
    Path::parse(&joined).doing(|| format!("data file path `{decoded}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    }

    /// Each case: the log's spelling, the column type, and the value as SQL would
    /// write it (cast from text by Arrow: a different spelling of the same value).
    #[test]
    fn log_spellings_equal_the_typed_values() {
        let cases: &[(&str, DataType, &str)] = &[
            ("2024-02-01 00:00:00.000000", utc(), "2024-02-01T00:00:00Z"),
            ("2024-01-01 10:30:00", utc(), "2024-01-01T10:30:00Z"),
            ("2024-01-01T10:30:00.5Z", utc(), "2024-01-01T10:30:00.500Z"),
            (
                "2024-01-01 10:30:00.000001",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                "2024-01-01T10:30:00.000001",
            ),
            (
                "2024-02-01 00:00:00",
                DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
                "2024-02-01T00:00:00Z",
            ),
            ("2024-02-29", DataType::Date32, "2024-02-29"),
            ("1.50", DataType::Decimal128(10, 2), "1.5"),
            ("-0.05", DataType::Decimal128(10, 2), "-0.05"),
            ("true", DataType::Boolean, "true"),
            ("2.5", DataType::Float64, "2.5"),
            ("-7", DataType::Int32, "-7"),
            ("9007199254740993", DataType::Int64, "9007199254740993"),
            ("x y:%/=é", DataType::Utf8, "x y:%/=é"),
        ];
        for (raw, t, sql) in cases {
            let expected = ScalarValue::try_from_string(sql.to_string(), t).unwrap();
            assert_eq!(value(Some(raw), t).unwrap(), expected, "{raw} as {t}");
        }
    }

    #[test]
    fn null_and_empty() {
        assert_eq!(
            value(None, &utc()).unwrap(),
            ScalarValue::try_from(&utc()).unwrap()
        );
        assert_eq!(
            value(Some(""), &DataType::Int64).unwrap(),
            ScalarValue::Int64(None)
        );
        assert_eq!(
            value(Some(""), &DataType::Utf8).unwrap(),
            ScalarValue::Utf8(Some(String::new()))
        );
    }

    #[test]
    fn dictionary_and_view_types_keep_their_type() {
        let dict = DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8));
        assert_eq!(value(Some("a"), &dict).unwrap().data_type(), dict);
        assert_eq!(
            value(Some("a"), &DataType::Utf8View).unwrap(),
            ScalarValue::Utf8View(Some("a".into()))
        );
    }

    #[test]
    fn a_bad_value_is_an_error_naming_it() {
        let e = value(Some("not a date"), &DataType::Date32).unwrap_err();
        assert!(e.to_string().contains("not a date"), "{e}");
    }

    #[test]
    fn paths_are_not_encoded_twice() {
        let p = file_path(&Path::default(), "ts=x%20y/part-1.parquet").unwrap();
        assert_eq!(p.as_ref(), "ts=x%20y/part-1.parquet");
        let root = Path::parse("w/t").unwrap();
        let p = file_path(&root, "ts=2024-01-01 10%3A30%3A00/a b.parquet").unwrap();
        assert_eq!(p.as_ref(), "w/t/ts=2024-01-01 10%3A30%3A00/a b.parquet");
        assert!(file_path(&root, "../x.parquet").is_err());
    }
}
