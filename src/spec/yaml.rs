//! A span-aware YAML reader: every value keeps where it was written, so that a
//! complaint (an unknown key with a suggestion, a bad value) points at it. Used for
//! pipelines and for fixture files.

use marked_yaml::{types::MarkedMappingNode, types::MarkedScalarNode, Node};
use miette::SourceSpan;
use serde_json::Value;

use super::Spanned;
use crate::diag::{did_you_mean, Code, Problem, Result, Source};

/// Reads one YAML document, reporting problems against its source.
#[derive(Clone, Copy)]
pub struct YamlReader<'a> {
    pub source: &'a Source,
}

impl<'a> YamlReader<'a> {
    pub fn new(source: &'a Source) -> Self {
        YamlReader { source }
    }

    /// The document's top node, a mapping (duplicate keys are errors; plain scalars
    /// stay uncoerced until `to_json`).
    pub fn parse(&self, what: &str) -> Result<Node> {
        let options = marked_yaml::LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .prevent_coercion(true);
        let node = marked_yaml::parse_yaml_with_options(0, &*self.source.text, options)
            .map_err(|e| self.load_error(e, what))?;
        if node.as_mapping().is_none() {
            return Err(self.error_at(
                node.span(),
                Code::NotAMapping,
                format!("{what} must be a YAML mapping"),
            ));
        }
        Ok(node)
    }

    /// An optional boolean key, false when absent.
    pub fn flag(&self, map: &MarkedMappingNode, key: &str) -> Result<bool> {
        match map.get_scalar(key) {
            None => Ok(false),
            Some(s) => s.as_bool().ok_or_else(|| {
                self.error(
                    self.scalar_span(s),
                    Code::BadValue,
                    format!("`{key}` must be true or false"),
                    "not a boolean",
                )
            }),
        }
    }

    pub fn check_keys(&self, map: &MarkedMappingNode, allowed: &[&str], what: &str) -> Result<()> {
        let mut problems: Vec<Problem> = map
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .map(|k| {
                let help = did_you_mean(k.as_str(), allowed.iter().copied())
                    .unwrap_or_else(|| format!("allowed keys in {what}: {}", allowed.join(", ")));
                self.error(
                    self.scalar_span(k),
                    Code::UnknownKey,
                    format!("unknown key `{}` in {what}", k.as_str()),
                    "not a known key",
                )
                .help(help)
            })
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        let first = problems.remove(0);
        Err(first.with_related(problems))
    }

    pub fn mapping<'n>(&self, node: &'n Node, what: &str) -> Result<&'n MarkedMappingNode> {
        node.as_mapping().ok_or_else(|| {
            self.error_at(
                node.span(),
                Code::ExpectedMapping,
                format!("{what} must be a mapping of `key: value`"),
            )
        })
    }

    pub fn string(&self, node: &Node, key: &str) -> Result<Spanned<String>> {
        match node.as_scalar() {
            Some(s) => Ok(self.scalar_spanned(s)),
            None => Err(self.error_at(
                node.span(),
                Code::BadValue,
                format!("`{key}` must be a single value"),
            )),
        }
    }

    pub fn required_string(
        &self,
        map: &MarkedMappingNode,
        key: &str,
        owner: &marked_yaml::Span,
    ) -> Result<Spanned<String>> {
        match map.get_node(key) {
            Some(n) => self.string(n, key),
            None => Err(self.error_at(
                owner,
                Code::MissingKey,
                format!("missing required key `{key}`"),
            )),
        }
    }

    pub fn optional_string(
        &self,
        map: &MarkedMappingNode,
        key: &str,
    ) -> Result<Option<Spanned<String>>> {
        map.get_node(key).map(|n| self.string(n, key)).transpose()
    }

    pub fn string_list(&self, node: Option<&Node>, key: &str) -> Result<Vec<Spanned<String>>> {
        match node {
            None => Ok(Vec::new()),
            Some(Node::Scalar(s)) => Ok(vec![self.scalar_spanned(s)]),
            Some(Node::Sequence(seq)) => seq.iter().map(|n| self.string(n, key)).collect(),
            Some(n) => Err(self.error_at(
                n.span(),
                Code::BadValue,
                format!("`{key}` must be a name or a list of names"),
            )),
        }
    }

    pub fn parse_u64(&self, s: &MarkedScalarNode, key: &str) -> Result<u64> {
        s.as_str().parse().map_err(|_| {
            self.error(
                self.scalar_span(s),
                Code::BadValue,
                format!("`{key}` must be a whole number"),
                "not a whole number",
            )
        })
    }

    /// A size: a whole number of bytes, or a number with a unit (`500 MB`, `2 GiB`;
    /// KB, MB, GB, TB are powers of 1000, KiB, MiB, GiB, TiB of 1024).
    pub fn parse_bytes(&self, s: &MarkedScalarNode, key: &str) -> Result<u64> {
        parse_size(s.as_str()).ok_or_else(|| {
            self.error(
                self.scalar_span(s),
                Code::BadValue,
                format!(
                    "`{key}` must be a size: bytes, \
                     or a number with a unit like `500 MB` or `2 GiB`"
                ),
                "not a size",
            )
        })
    }

    pub fn scalar_spanned(&self, s: &MarkedScalarNode) -> Spanned<String> {
        Spanned {
            value: s.as_str().to_string(),
            span: self.scalar_span(s),
        }
    }

    /// marked-yaml marks a scalar's start (in characters); its length is that of its
    /// text, plus quotes, or the rest of the line for block scalars.
    pub fn scalar_span(&self, s: &MarkedScalarNode) -> SourceSpan {
        let Some(start) = s.span().start() else {
            return (0, 0).into();
        };
        let offset = self.marker_byte(start);
        let rest = &self.source.text[offset..];
        let first_line = rest.lines().next().unwrap_or("");
        let len = if rest.starts_with(s.as_str()) && !s.as_str().is_empty() {
            s.as_str().len()
        } else if rest.starts_with(['"', '\'']) {
            first_line.len().min(s.as_str().len() + 2)
        } else {
            first_line.trim_end().len()
        };
        (offset, len).into()
    }

    /// The byte offset of a marker, from its line and column: the loader's character
    /// index counts a block scalar's text in bytes (yaml-rust2), so every marker after
    /// a `|` block with non-ASCII text would point a few characters too far.
    pub fn marker_byte(&self, marker: &marked_yaml::Marker) -> usize {
        let text = &self.source.text;
        let line_start = text
            .split_inclusive('\n')
            .take(marker.line().saturating_sub(1))
            .map(str::len)
            .sum::<usize>();
        let line = text[line_start..].split('\n').next().unwrap_or("");
        line_start
            + line
                .char_indices()
                .nth(marker.column().saturating_sub(1))
                .map_or(line.len(), |(b, _)| b)
    }

    pub fn node_span(&self, span: &marked_yaml::Span) -> SourceSpan {
        match (span.start(), span.end()) {
            (Some(s), Some(e)) if e.character() > s.character() => {
                let (a, b) = (self.marker_byte(s), self.marker_byte(e));
                let text = self.source.text[a..b].trim_end();
                (a, text.len()).into()
            }
            (Some(s), _) => (self.marker_byte(s), 1).into(),
            _ => (0, 0).into(),
        }
    }

    pub fn error(
        &self,
        span: SourceSpan,
        code: crate::diag::Code,
        message: impl Into<String>,
        label: &str,
    ) -> Problem {
        Problem::invalid(code, message)
            .in_source(self.source)
            .label(span, label)
    }

    pub fn error_at(
        &self,
        span: &marked_yaml::Span,
        code: crate::diag::Code,
        message: impl Into<String>,
    ) -> Problem {
        self.error(self.node_span(span), code, message, "here")
    }

    pub fn load_error(&self, e: marked_yaml::LoadError, what: &str) -> Problem {
        use marked_yaml::LoadError as E;
        let (marker, message) = match &e {
            E::ScanError(m, se) => (*m, format!("malformed YAML: {}", se.info())),
            E::DuplicateKey(d) => (
                *d.key.span().start().expect("marked"),
                format!("duplicate key `{}`", d.key.as_str()),
            ),
            E::TopLevelMustBeMapping(m) => (*m, format!("{what} must be a YAML mapping")),
            E::TopLevelMustBeSequence(m)
            | E::UnexpectedAnchor(m)
            | E::MappingKeyMustBeScalar(m)
            | E::UnexpectedTag(m) => (*m, format!("malformed YAML: {e}")),
        };
        let offset = self.marker_byte(&marker);
        Problem::invalid(Code::MalformedYaml, message)
            .in_source(self.source)
            .label((offset, 0), "here")
    }
}

/// Names become SQL identifiers: lowercase letters, digits and `_`.
pub fn check_identifier(l: &YamlReader<'_>, name: &Spanned<String>, what: &str) -> Result<()> {
    let ok = name
        .value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        return Ok(());
    }
    let message = format!("`{}` is not a valid {what}", name.value);
    let help = "names become SQL identifiers: \
                use lowercase letters, digits and `_`, starting with a letter";
    Err(l
        .error(
            name.span,
            Code::BadName,
            message,
            "not a lowercase identifier",
        )
        .help(help))
}

/// `123`, `500 MB`, `1.5GiB` → bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * scale;
    (bytes.is_finite() && bytes >= 0.0).then(|| bytes.round() as u64)
}

/// Untyped YAML → JSON-like value: plain scalars are coerced (numbers, booleans,
/// null), quoted scalars stay strings.
pub fn to_json(node: &Node) -> Value {
    match node {
        Node::Scalar(s) if !s.may_coerce() => Value::String(s.as_str().to_string()),
        Node::Scalar(s) => coerce_scalar(s.as_str()),
        Node::Sequence(seq) => Value::Array(seq.iter().map(to_json).collect()),
        Node::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
                .collect(),
        ),
    }
}

pub fn coerce_scalar(s: &str) -> Value {
    match s {
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        "null" | "Null" | "NULL" | "~" | "" => return Value::Null,
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            return Value::from(f);
        }
    }
    Value::String(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("500 MB"), Some(500_000_000));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1.5 kb"), Some(1500));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }

    #[test]
    fn plain_scalars_are_coerced_quoted_are_not() {
        let options = marked_yaml::LoaderOptions::default().prevent_coercion(true);
        let node = marked_yaml::parse_yaml_with_options(
            0,
            "a: 10\nb: '10'\nc: [x, 2.5, true]\nd: ~\n",
            options,
        )
        .unwrap();
        let v = to_json(&node);
        assert_eq!(v["a"], Value::from(10));
        assert_eq!(v["b"], Value::from("10"));
        assert_eq!(v["c"], serde_json::json!(["x", 2.5, true]));
        assert_eq!(v["d"], Value::Null);
    }
}
