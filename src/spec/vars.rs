//! `vars:` and `state:`: declared variables, their types, their defaults and
//! `--var` overrides. Every value a var takes is checked against its type
//! (`types.rs`): a var is input from a command line or a pull request.

use std::collections::BTreeMap;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;
use serde_json::Value;

use super::types::{VarType, TYPE_NAMES};
use super::yaml::{check_identifier, to_json};
use super::{Loader, Spanned, Var};
use crate::diag::{did_you_mean, Code, Problem, Result};

const STATE_KEYS: &[&str] = &["table", "type", "default"];
/// A var given as a mapping with `type:` and only these keys is a declaration.
const DECLARATION_KEYS: &[&str] = &["type", "default", "description"];

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
            let var = self.typed_var(map, name.span, &name.value)?;
            out.insert(name.value.clone(), (table, var));
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
                let span = self.scalar_span(key);
                let var = match declaration(value) {
                    Some(map) => self.typed_var(map, span, key.as_str())?,
                    None => {
                        let value = to_json(value);
                        Var {
                            ty: VarType::of_default(&value),
                            value,
                            span,
                            overridden: false,
                        }
                    }
                };
                vars.insert(key.as_str().to_string(), var);
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
                    Some(s) => {
                        format!("{s} Declare it under `vars:` with a default to make it settable.")
                    }
                    None if known.is_empty() => {
                        let help = "this pipeline declares no variables; \
                                    declare it under `vars:` with a default";
                        help.to_string()
                    }
                    None => format!("declared variables: {}", known.join(", ")),
                });
                return Err(p);
            };
            var.value = var.ty.parse_text(raw).map_err(|e| {
                Problem::invalid(Code::BadVarValue, format!("`--var {key}={raw}`: {e}"))
                    .in_source(self.source)
                    .label(var.span, format!("declared as {}", var.ty))
            })?;
            var.overridden = true;
        }
        Ok(vars)
    }

    /// `{type: T, default: V}` (or a state's mapping): the type, and the default
    /// checked against it.
    fn typed_var(
        &self,
        map: &MarkedMappingNode,
        span: miette::SourceSpan,
        name: &str,
    ) -> Result<Var> {
        let default = map.get_node("default");
        let value = default.map(to_json).unwrap_or(Value::Null);
        let ty = match map.get_scalar("type") {
            None => VarType::of_default(&value),
            Some(t) => VarType::parse(t.as_str()).ok_or_else(|| {
                self.error(
                    self.scalar_span(t),
                    Code::BadVarType,
                    format!("`{}` is not a var type", t.as_str()),
                    "unknown type",
                )
                .help(format!("types: {TYPE_NAMES}"))
            })?,
        };
        // A state variable without a default has none until a run records it.
        let value = match default {
            Some(node) => ty.check(&value).map_err(|e| {
                let span = node
                    .as_scalar()
                    .map_or_else(|| self.node_span(node.span()), |s| self.scalar_span(s));
                self.error(
                    span,
                    Code::BadVarValue,
                    format!("the default of `{name}` does not have its type {ty}: {e}"),
                    &format!("not {}", ty.article()),
                )
            })?,
            None => Value::Null,
        };
        Ok(Var {
            value,
            ty,
            span,
            overridden: false,
        })
    }
}

/// A var's YAML value that declares its type rather than being a map default.
fn declaration(value: &Node) -> Option<&MarkedMappingNode> {
    let map = value.as_mapping()?;
    (map.get_node("type").is_some() && map.keys().all(|k| DECLARATION_KEYS.contains(&k.as_str())))
        .then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_take_the_type_of_the_default() {
        let parse = |raw: &str, default: Value| VarType::of_default(&default).parse_text(raw);
        assert_eq!(parse("5", Value::from(1)).unwrap(), Value::from(5));
        assert!(parse("five", Value::from(1)).is_err());
        assert_eq!(parse("5", Value::from("x")).unwrap(), Value::from("5"));
        assert_eq!(
            parse("[a, b]", serde_json::json!(["z"])).unwrap(),
            serde_json::json!(["a", "b"])
        );
        assert!(parse("{a: 1}", serde_json::json!(["z"])).is_err());
    }
}
