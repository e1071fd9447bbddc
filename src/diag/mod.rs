//! Diagnostics: every user error is a value that miette can render, with the file,
//! a labelled span and a help line (docs/design.md §4).
//!
//! One general `Problem` type instead of one struct per error: the compiler steps
//! build problems with a code, a message and spans into a `Source` (the YAML, a
//! template, or rendered SQL), and the CLI maps `Severity` to an exit code.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode, SourceSpan};

mod code;
pub use code::Code;
#[cfg(test)]
use code::ALL_CODES;

/// A text the user wrote (or that was rendered from it), named the way the user
/// knows it: a path relative to the project root.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub text: Arc<str>,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    /// Byte offset of a 1-based line and column (column counted in characters).
    pub fn offset_of(&self, line: usize, column: usize) -> usize {
        let mut offset = 0;
        for (i, l) in self.text.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                let col_bytes: usize = l
                    .chars()
                    .take(column.saturating_sub(1))
                    .map(char::len_utf8)
                    .sum();
                return (offset + col_bytes).min(self.text.len());
            }
            offset += l.len();
        }
        self.text.len()
    }

    /// Text of a 1-based line, without its newline.
    pub fn line(&self, line: usize) -> Option<&str> {
        self.text.lines().nth(line.checked_sub(1)?)
    }

    fn named(&self) -> NamedSource<String> {
        NamedSource::new(self.name.clone(), self.text.to_string()).with_language("sql")
    }
}

/// What failing on a problem means for the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The pipeline is invalid; nothing was touched (exit 2).
    Invalid,
    /// The environment or a run failed (exit 1).
    Failed,
}

/// One diagnostic: code, message, optional source with labelled spans, help, and
/// related problems (e.g. every other unknown key in the same file).
#[derive(Clone, Debug)]
pub struct Problem {
    pub code: Code,
    pub message: String,
    pub severity: Severity,
    pub source: Option<NamedSource<String>>,
    pub labels: Vec<(SourceSpan, String)>,
    pub help: Option<String>,
    pub related: Vec<Problem>,
}

impl Problem {
    pub fn invalid(code: Code, message: impl Into<String>) -> Self {
        Problem {
            code,
            message: message.into(),
            severity: Severity::Invalid,
            source: None,
            labels: Vec::new(),
            help: None,
            related: Vec::new(),
        }
    }

    pub fn failed(code: Code, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Failed,
            ..Problem::invalid(code, message)
        }
    }

    /// A name that should be a declared table and is not: the nearest declared
    /// name as help, else where tables are declared.
    pub fn unknown_table<'a>(
        message: impl Into<String>,
        name: &str,
        declared: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Problem::invalid(Code::UnknownTable, message).help(
            did_you_mean(name, declared).unwrap_or_else(|| "declare it under `tables:`".into()),
        )
    }

    pub fn in_source(mut self, source: &Source) -> Self {
        self.source = Some(source.named());
        self
    }

    pub fn label(mut self, span: impl Into<SourceSpan>, text: impl Into<String>) -> Self {
        self.labels.push((span.into(), text.into()));
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_related(mut self, related: Vec<Problem>) -> Self {
        self.related.extend(related);
        self
    }

    /// The exit code the CLI uses when it stops on this problem.
    pub fn exit_code(&self) -> i32 {
        match self.severity {
            Severity::Invalid => 2,
            Severity::Failed => 1,
        }
    }

    /// Renders the problem the way tests and logs see it: no colour, fixed width.
    pub fn render_plain(&self, width: usize) -> String {
        let mut out = String::new();
        let handler =
            miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
                .with_width(width)
                .with_links(false)
                .without_syntax_highlighting();
        if handler.render_report(&mut out, self).is_err() {
            out = format!("error[{}]: {}", self.code, self.message);
        }
        out
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(format!("sqlplan::{}", self.code)))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            return None;
        }
        Some(Box::new(self.labels.iter().enumerate().map(
            |(i, (span, text))| {
                if i == 0 {
                    LabeledSpan::new_primary_with_span(Some(text.clone()), *span)
                } else {
                    LabeledSpan::new_with_span(Some(text.clone()), *span)
                }
            },
        )))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.related.is_empty() {
            return None;
        }
        Some(Box::new(self.related.iter().map(|p| p as &dyn Diagnostic)))
    }
}

/// "did you mean `x`?" from a list of known names (Jaro-Winkler, like cargo).
pub fn did_you_mean<'a>(wrong: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(wrong, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, k)| format!("did you mean `{k}`?"))
}

pub type Result<T, E = Problem> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_characters_within_a_line() {
        let s = Source::new("x", "ab\nçd ef\n");
        assert_eq!(s.offset_of(1, 1), 0);
        assert_eq!(s.offset_of(2, 1), 3);
        assert_eq!(s.offset_of(2, 3), 6); // 'ç' is two bytes
        assert_eq!(s.line(2), Some("çd ef"));
    }

    #[test]
    fn codes_are_the_snake_case_of_their_variants() {
        // Every variant's name, from its Debug form, against its stable name.
        for code in ALL_CODES {
            let snake: String = format!("{code:?}")
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let lower = c.to_ascii_lowercase();
                    if c.is_ascii_uppercase() && i > 0 {
                        vec!['_', lower]
                    } else {
                        vec![lower]
                    }
                })
                .collect();
            assert_eq!(code.as_str(), snake);
        }
    }

    #[test]
    fn suggestions_pick_the_closest_name() {
        assert_eq!(
            did_you_mean("stagse", ["stages", "tables"]),
            Some("did you mean `stages`?".into())
        );
        assert_eq!(did_you_mean("zzz", ["stages", "tables"]), None);
    }
}
