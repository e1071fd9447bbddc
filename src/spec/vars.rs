//! `vars:` and `state:`: declared variables, their defaults and `--var` overrides
//! typed by the default.

use std::collections::BTreeMap;

use marked_yaml::Node;
use serde_json::Value;

use super::yaml::{check_identifier, coerce_scalar, to_json};
use super::{Loader, Spanned, Var};
use crate::diag::{did_you_mean, Code, Problem, Result};

const STATE_KEYS: &[&str] = &["table", "default"];

impl Loader<'_> {
    pub(super) fn state(
        &self,
        node: Option<&Node>,
    ) -> Result<BTreeMap<String, (Spanned<String>, Var)>> {
        let mut out = BTreeMap::new();
        let Some(node) = node else { return Ok(out) };
        for (key, value) in self.mapping(node, "state")?.iter() {
            let name = self.scalar_spanned(key);
            check_identifier(&self.reader, &name, "state variable name")?;
            let map = self.mapping(value, &format!("state `{}`", name.value))?;
            self.check_keys(map, STATE_KEYS, "state")?;
            let table = self.required_string(map, "table", value.span())?;
            let default = map.get_node("default").map(to_json).unwrap_or(Value::Null);
            out.insert(
                name.value.clone(),
                (
                    table,
                    Var {
                        value: default,
                        span: name.span,
                        overridden: false,
                    },
                ),
            );
        }
        Ok(out)
    }

    pub(super) fn vars(
        &self,
        node: Option<&Node>,
        state: &BTreeMap<String, (Spanned<String>, Var)>,
        overrides: &[(String, String)],
    ) -> Result<BTreeMap<String, Var>> {
        let mut vars: BTreeMap<String, Var> = state
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        if let Some(node) = node {
            let map = self.mapping(node, "vars")?;
            for (key, value) in map.iter() {
                check_identifier(&self.reader, &self.scalar_spanned(key), "variable name")?;
                if let Some(v) = vars.get(key.as_str()) {
                    return Err(self
                        .error(
                            self.scalar_span(key),
                            Code::DuplicateVar,
                            format!("`{}` is both a var and a state variable", key.as_str()),
                            "declared again",
                        )
                        .label(v.span, "state variable"));
                }
                vars.insert(
                    key.as_str().to_string(),
                    Var {
                        value: to_json(value),
                        span: self.scalar_span(key),
                        overridden: false,
                    },
                );
            }
        }
        for (key, raw) in overrides {
            let Some(var) = vars.get_mut(key) else {
                let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                let mut p = Problem::invalid(
                    Code::UnknownVar,
                    format!("`--var {key}=…` sets a variable the pipeline does not declare"),
                );
                p = p.help(match did_you_mean(key, known.iter().copied()) {
                    Some(s) => format!("{s} Declare it under `vars:` with a default to make it settable."),
                    None if known.is_empty() => "this pipeline declares no variables; declare it under `vars:` with a default".into(),
                    None => format!("declared variables: {}", known.join(", ")),
                });
                return Err(p);
            };
            var.value = parse_override(key, raw, &var.value)?;
            var.overridden = true;
        }
        Ok(vars)
    }
}

/// A `--var` value takes the type of the declared default: text stays text, a list
/// or map default expects YAML (`[a, b]`, `{k: v}`).
fn parse_override(key: &str, raw: &str, default: &Value) -> Result<Value> {
    let mismatch = |expected: &str| {
        Problem::invalid(
            Code::BadVarValue,
            format!(
                "`--var {key}={raw}`: expected {expected}, like the declared default `{default}`"
            ),
        )
    };
    match default {
        Value::String(_) => Ok(Value::String(raw.to_string())),
        Value::Null => Ok(coerce_scalar(raw)),
        Value::Bool(_) => match coerce_scalar(raw) {
            v @ Value::Bool(_) => Ok(v),
            _ => Err(mismatch("true or false")),
        },
        Value::Number(_) => match coerce_scalar(raw) {
            v @ Value::Number(_) => Ok(v),
            _ => Err(mismatch("a number")),
        },
        Value::Array(_) | Value::Object(_) => {
            let options = marked_yaml::LoaderOptions::default().prevent_coercion(true);
            let options = if default.is_array() {
                options.toplevel_sequence()
            } else {
                options
            };
            let node = marked_yaml::parse_yaml_with_options(0, raw, options).map_err(|_| {
                mismatch(if default.is_array() {
                    "a YAML list like `[a, b]`"
                } else {
                    "a YAML map like `{k: v}`"
                })
            })?;
            let value = to_json(&node);
            if value.is_array() == default.is_array() && value.is_object() == default.is_object() {
                Ok(value)
            } else {
                Err(mismatch(if default.is_array() {
                    "a YAML list like `[a, b]`"
                } else {
                    "a YAML map like `{k: v}`"
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_take_the_type_of_the_default() {
        assert_eq!(
            parse_override("n", "5", &Value::from(1)).unwrap(),
            Value::from(5)
        );
        assert!(parse_override("n", "five", &Value::from(1)).is_err());
        assert_eq!(
            parse_override("s", "5", &Value::from("x")).unwrap(),
            Value::from("5")
        );
        assert_eq!(
            parse_override("l", "[a, b]", &serde_json::json!(["z"])).unwrap(),
            serde_json::json!(["a", "b"])
        );
        assert!(parse_override("l", "{a: 1}", &serde_json::json!(["z"])).is_err());
    }
}
