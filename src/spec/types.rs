//! Var types: what a var may hold. Vars come from command lines, pull requests and
//! recorded state, so a value is checked against its var's type wherever it enters —
//! the YAML default, `--var`, a value read back from a table's log, a value a `state:`
//! stage returns — before any template sees it.
//!
//! A var declared with a bare default takes the default's type (`36` → int, `[a, b]`
//! → list[string]); `{type: T, default: V}` declares it: `string`, `int`, `number`,
//! `bool`, `date` (`YYYY-MM-DD`), `timestamp` (a date with a time, optional fraction
//! and zone), `identifier` (an SQL name: letters, digits, `_`, not starting with a
//! digit), `list` or `list[T]`, `map`, `any`.

use std::fmt;

use serde_json::Value;

use super::yaml::coerce_scalar;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(into = "String")]
#[schemars(with = "String")]
pub enum VarType {
    String,
    Int,
    Number,
    Bool,
    Date,
    Timestamp,
    Identifier,
    List(Box<VarType>),
    /// A map whose values are all of this type (keys are names).
    Map(Box<VarType>),
    Any,
}

/// Names `type:` accepts, for messages.
pub const TYPE_NAMES: &str =
    "string, int, number, bool, date, timestamp, identifier, list, list[T], map, map[T], any";

impl VarType {
    pub fn parse(name: &str) -> Option<VarType> {
        let name = name.trim();
        if let Some(inner) = name
            .strip_prefix("list[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            return Some(VarType::List(Box::new(VarType::parse(inner)?)));
        }
        if let Some(inner) = name
            .strip_prefix("map[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            return Some(VarType::Map(Box::new(VarType::parse(inner)?)));
        }
        Some(match name {
            "string" => VarType::String,
            "int" => VarType::Int,
            "number" => VarType::Number,
            "bool" => VarType::Bool,
            "date" => VarType::Date,
            "timestamp" => VarType::Timestamp,
            "identifier" => VarType::Identifier,
            "list" => VarType::List(Box::new(VarType::Any)),
            "map" => VarType::Map(Box::new(VarType::Any)),
            "any" => VarType::Any,
            _ => return None,
        })
    }

    /// The type of an undeclared var, from its default.
    pub fn of_default(value: &Value) -> VarType {
        match value {
            Value::String(_) => VarType::String,
            Value::Number(n) if n.is_i64() || n.is_u64() => VarType::Int,
            Value::Number(_) => VarType::Number,
            Value::Bool(_) => VarType::Bool,
            Value::Array(items) => {
                let mut kinds = items.iter().map(VarType::of_default);
                let first = kinds.next().unwrap_or(VarType::Any);
                let element = match first {
                    // Lists of lists or maps keep their shape unchecked.
                    VarType::List(_) | VarType::Map(_) => VarType::Any,
                    ref k if kinds.all(|other| other == *k) => first,
                    _ => VarType::Any,
                };
                VarType::List(Box::new(element))
            }
            Value::Object(_) => VarType::Map(Box::new(VarType::Any)),
            Value::Null => VarType::Any,
        }
    }

    /// Checks `value` (from YAML, state or a stage) and returns it in its canonical
    /// form (an int given as `"36"` becomes `36`), or says what is wrong.
    pub fn check(&self, value: &Value) -> Result<Value, String> {
        let wrong = || format!("expected {}, got {}", self.described(), shown(value));
        match (self, value) {
            (VarType::Any, v) => Ok(v.clone()),
            (VarType::List(element), Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    element
                        .check(item)
                        .map_err(|e| format!("element {}: {e}", i + 1))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            (VarType::Map(element), Value::Object(entries)) => entries
                .iter()
                .map(|(k, v)| {
                    element
                        .check(v)
                        .map(|v| (k.clone(), v))
                        .map_err(|e| format!("`{k}`: {e}"))
                })
                .collect::<Result<serde_json::Map<_, _>, _>>()
                .map(Value::Object),
            (VarType::List(_) | VarType::Map(_), _) => Err(wrong()),
            // Scalars may arrive as text (from `--var` or a commit's properties).
            (_, Value::String(s)) => self.parse_text(s),
            (VarType::String, Value::Number(_) | Value::Bool(_)) => {
                Ok(Value::String(value.to_string()))
            }
            (VarType::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(value.clone()),
            (VarType::Number, Value::Number(_)) | (VarType::Bool, Value::Bool(_)) => {
                Ok(value.clone())
            }
            _ => Err(wrong()),
        }
    }

    /// A scalar given as text: a `--var` value or a recorded state value.
    pub fn parse_text(&self, text: &str) -> Result<Value, String> {
        let wrong = || format!("expected {}, got `{text}`", self.described());
        match self {
            VarType::String => Ok(Value::String(text.to_string())),
            VarType::Any => Ok(coerce_scalar(text)),
            VarType::Int => text
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| wrong()),
            VarType::Number => match coerce_scalar(text.trim()) {
                v @ Value::Number(_) => Ok(v),
                _ => Err(wrong()),
            },
            VarType::Bool => match coerce_scalar(text.trim()) {
                v @ Value::Bool(_) => Ok(v),
                _ => Err(wrong()),
            },
            VarType::Date => chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(|_| Value::String(text.to_string()))
                .map_err(|_| wrong()),
            VarType::Timestamp => is_timestamp(text)
                .then(|| Value::String(text.to_string()))
                .ok_or_else(wrong),
            VarType::Identifier => is_identifier(text)
                .then(|| Value::String(text.to_string()))
                .ok_or_else(wrong),
            VarType::List(_) | VarType::Map(_) => {
                let options = marked_yaml::LoaderOptions::default().prevent_coercion(true);
                let options = if matches!(self, VarType::List(_)) {
                    options.toplevel_sequence()
                } else {
                    options
                };
                let node =
                    marked_yaml::parse_yaml_with_options(0, text, options).map_err(|_| wrong())?;
                self.check(&super::yaml::to_json(&node))
            }
        }
    }

    /// `a date`, `an int`: the type's name with its article.
    pub fn article(&self) -> String {
        let name = self.to_string();
        let vowel = name.starts_with(['a', 'e', 'i', 'o', 'u']);
        format!("{} {name}", if vowel { "an" } else { "a" })
    }

    fn described(&self) -> String {
        match self {
            VarType::String => "a string".into(),
            VarType::Int => "an integer".into(),
            VarType::Number => "a number".into(),
            VarType::Bool => "true or false".into(),
            VarType::Date => "a date (YYYY-MM-DD)".into(),
            VarType::Timestamp => {
                "a timestamp (YYYY-MM-DD, optionally followed by [T ]HH:MM:SS[.fff][Z|±HH:MM])"
                    .into()
            }
            VarType::Identifier => {
                "an identifier (letters, digits and `_`, not starting with a digit)".into()
            }
            VarType::List(element) if **element == VarType::Any => {
                "a YAML list like `[a, b]`".into()
            }
            VarType::List(element) => {
                format!("a YAML list like `[a, b]` of {}", element.described())
            }
            VarType::Map(element) if **element == VarType::Any => "a YAML map like `{k: v}`".into(),
            VarType::Map(element) => {
                format!("a YAML map like `{{k: v}}` of {}", element.described())
            }
            VarType::Any => "any value".into(),
        }
    }
}

impl fmt::Display for VarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VarType::String => f.write_str("string"),
            VarType::Int => f.write_str("int"),
            VarType::Number => f.write_str("number"),
            VarType::Bool => f.write_str("bool"),
            VarType::Date => f.write_str("date"),
            VarType::Timestamp => f.write_str("timestamp"),
            VarType::Identifier => f.write_str("identifier"),
            VarType::List(element) if **element == VarType::Any => f.write_str("list"),
            VarType::List(element) => write!(f, "list[{element}]"),
            VarType::Map(element) if **element == VarType::Any => f.write_str("map"),
            VarType::Map(element) => write!(f, "map[{element}]"),
            VarType::Any => f.write_str("any"),
        }
    }
}

impl From<VarType> for String {
    fn from(t: VarType) -> String {
        t.to_string()
    }
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("`{s}`"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a map".into(),
        other => format!("`{other}`"),
    }
}

pub fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `YYYY-MM-DD`, or that followed by `T` or a space, `HH:MM[:SS[.fraction]]` and an
/// optional `Z` or `±HH:MM` offset — the forms SQL `TIMESTAMP '…'` literals take.
fn is_timestamp(text: &str) -> bool {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    if NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok() {
        return true;
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    if naive
        .iter()
        .any(|f| NaiveDateTime::parse_from_str(text, f).is_ok())
    {
        return true;
    }
    let zoned = [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.fZ",
        "%Y-%m-%d %H:%M:%S%.fZ",
    ];
    zoned.iter().any(|f| {
        DateTime::parse_from_str(text, f).is_ok() || NaiveDateTime::parse_from_str(text, f).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_type_takes_its_values_and_refuses_others() {
        // (type, text, accepted as)
        let cases: &[(&str, &str, Option<Value>)] = &[
            ("int", "36", Some(json!(36))),
            ("int", "36.5", None),
            ("int", "1; DROP TABLE x", None),
            ("number", "0.2", Some(json!(0.2))),
            ("number", "x", None),
            ("bool", "true", Some(json!(true))),
            ("bool", "yes please", None),
            ("date", "2024-01-02", Some(json!("2024-01-02"))),
            ("date", "2024-02-30", None),
            ("date", "2024-01-02' OR true --", None),
            (
                "timestamp",
                "1900-01-01T00:00:00",
                Some(json!("1900-01-01T00:00:00")),
            ),
            (
                "timestamp",
                "2024-03-31 12:00:00.123456",
                Some(json!("2024-03-31 12:00:00.123456")),
            ),
            (
                "timestamp",
                "2024-03-31T12:00:00Z",
                Some(json!("2024-03-31T12:00:00Z")),
            ),
            (
                "timestamp",
                "2024-03-31T12:00:00+02:00",
                Some(json!("2024-03-31T12:00:00+02:00")),
            ),
            ("timestamp", "2024-03-31", Some(json!("2024-03-31"))),
            ("timestamp", "2020-01-01' OR true --", None),
            ("identifier", "acct_key", Some(json!("acct_key"))),
            ("identifier", "1x", None),
            ("identifier", "a; drop", None),
            ("string", "it's", Some(json!("it's"))),
            ("list[int]", "[1, 2]", Some(json!([1, 2]))),
            ("list[int]", "[1, x]", None),
            ("list", "[a, 1]", Some(json!(["a", 1]))),
            ("map", "{k: v}", Some(json!({"k": "v"}))),
            ("map", "[k]", None),
            (
                "list[map[identifier]]",
                "[{from: a, to: b}]",
                Some(json!([{"from": "a", "to": "b"}])),
            ),
            (
                "list[map[identifier]]",
                "[{from: a, to: \"b; DROP TABLE x\"}]",
                None,
            ),
        ];
        for (name, text, expected) in cases {
            let ty = VarType::parse(name).unwrap();
            let got = ty.parse_text(text).ok();
            assert_eq!(&got, expected, "{name} {text:?}");
        }
    }

    #[test]
    fn an_undeclared_var_takes_its_defaults_type() {
        assert_eq!(VarType::of_default(&json!(36)).to_string(), "int");
        assert_eq!(VarType::of_default(&json!(0.2)).to_string(), "number");
        assert_eq!(
            VarType::of_default(&json!(["1", "4"])).to_string(),
            "list[string]"
        );
        assert_eq!(
            VarType::of_default(&json!([-1, -2])).to_string(),
            "list[int]"
        );
        assert_eq!(VarType::of_default(&json!([{"a": 1}])).to_string(), "list");
        assert_eq!(VarType::of_default(&json!({"a": 1})).to_string(), "map");
        for name in [
            "list[list[int]]",
            "timestamp",
            "identifier",
            "list[map[identifier]]",
        ] {
            assert_eq!(VarType::parse(name).unwrap().to_string(), name);
        }
        assert_eq!(VarType::parse("list[foo]"), None);
    }
}
