//! A `Problem` as the editor shows it: one LSP diagnostic per problem (and per
//! related problem), in the file its source names, at its first label.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lsp_types::{Diagnostic, DiagnosticSeverity, NumberOrString, Position, Range};

use crate::diag::Problem;

/// Every diagnostic of `problem` and its related problems, by file: a source
/// name is relative to the project `root`; a problem without a source goes to
/// `pipeline`, at its start.
pub fn by_file(
    problem: &Problem,
    root: &Path,
    pipeline: &Path,
) -> BTreeMap<PathBuf, Vec<Diagnostic>> {
    let mut out: BTreeMap<PathBuf, Vec<Diagnostic>> = BTreeMap::new();
    for p in std::iter::once(problem).chain(&problem.related) {
        let (file, diagnostic) = one(p, root, pipeline);
        out.entry(file).or_default().push(diagnostic);
    }
    out
}

fn one(problem: &Problem, root: &Path, pipeline: &Path) -> (PathBuf, Diagnostic) {
    let mut message = problem.message.clone();
    let (file, range) = match (&problem.source, problem.labels.first()) {
        (Some(source), Some((span, label))) => {
            if !label.is_empty() && label != &problem.message {
                message.push_str(&format!(" ({label})"));
            }
            let text = source.inner().as_str();
            let start = position(text, span.offset());
            let end = position(text, span.offset() + span.len());
            (root.join(source.name()), Range { start, end })
        }
        (Some(source), None) => (root.join(source.name()), Range::default()),
        _ => (pipeline.to_path_buf(), Range::default()),
    };
    if let Some(help) = &problem.help {
        message.push_str(&format!("\nhelp: {help}"));
    }
    let diagnostic = Diagnostic {
        range,
        severity: Some(DiagnosticSeverity::ERROR),
        code: Some(NumberOrString::String(problem.code.as_str().to_string())),
        source: Some("sqlplan".into()),
        message,
        ..Default::default()
    };
    (file, diagnostic)
}

/// The LSP position (line, UTF-16 column) of byte `offset` in `text`.
pub fn position(text: &str, offset: usize) -> Position {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let character = before[line_start..].encode_utf16().count();
    Position {
        line: line as u32,
        character: character as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_utf16_columns() {
        let text = "a\nbé𝄞c\n";
        assert_eq!(
            position(text, 0),
            Position {
                line: 0,
                character: 0
            }
        );
        assert_eq!(
            position(text, 2),
            Position {
                line: 1,
                character: 0
            }
        );
        // `é` is 2 bytes and 1 UTF-16 unit; `𝄞` 4 bytes and 2 units.
        assert_eq!(
            position(text, 9),
            Position {
                line: 1,
                character: 4
            }
        );
        assert_eq!(
            position(text, 100),
            Position {
                line: 2,
                character: 0
            }
        );
    }
}
