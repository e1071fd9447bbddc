//! Hover, go to definition and completion, answered from the last Plan of each
//! pipeline (a plan that fails keeps the previous one: its relations and
//! columns, as they were when it last planned).

use std::path::{Path, PathBuf};

use lsp_types::{CompletionItem, CompletionItemKind, Position};

use crate::plan::{ColumnPlan, Plan, StagePlan};

/// A pipeline's last Plan, where it lives, and its YAML text.
pub struct Known<'a> {
    pub plan: &'a Plan,
    pub root: &'a Path,
    pub pipeline: &'a Path,
    pub yaml: &'a str,
}

/// The identifier (letters, digits, `_`) at `position` of `text`.
pub fn word_at(text: &str, position: Position) -> Option<String> {
    let line = text.lines().nth(position.line as usize)?;
    // UTF-16 column to a char index (identifiers are ASCII; others only shift it).
    let mut units = 0;
    let at = line
        .char_indices()
        .find(|(_, c)| {
            units += c.len_utf16();
            units > position.character as usize
        })
        .map_or(line.len(), |(i, _)| i);
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let start = line[..at].rfind(|c: char| !is_word(c)).map_or(0, |i| i + 1);
    let end = line[at..]
        .find(|c: char| !is_word(c))
        .map_or(line.len(), |i| at + i);
    (start < end).then(|| line[start..end].to_string())
}

impl Known<'_> {
    fn stage(&self, name: &str) -> Option<&StagePlan> {
        self.plan.stages.iter().find(|s| s.name == name)
    }

    /// The stage whose template is `file`.
    fn stage_of(&self, file: &Path) -> Option<&StagePlan> {
        self.plan.stages.iter().find(|s| {
            s.template
                .as_ref()
                .is_some_and(|t| same(&self.root.join(t), file))
        })
    }

    /// The columns `file`'s stage can name: those of what it reads (every
    /// relation's and table's, outside a stage's template), with their source.
    fn columns_in_scope(&self, file: &Path) -> Vec<(&str, &ColumnPlan)> {
        let reads: Option<&Vec<String>> = self.stage_of(file).map(|s| &s.reads);
        let wanted = |name: &str| reads.is_none_or(|r| r.iter().any(|x| x == name));
        let stages = self
            .plan
            .stages
            .iter()
            .filter(|s| wanted(&s.name))
            .flat_map(|s| s.output.iter().map(move |c| (s.name.as_str(), c)));
        let tables = self
            .plan
            .tables
            .iter()
            .filter(|t| wanted(&t.name))
            .flat_map(|t| t.columns.iter().map(move |c| (t.name.as_str(), c)));
        stages.chain(tables).collect()
    }

    /// Markdown about `word` in `file`: a relation, a table or a column.
    pub fn hover(&self, file: &Path, word: &str) -> Option<String> {
        if let Some(stage) = self.stage(word) {
            let mut text = format!("**relation `{}`** ({:?})", stage.name, stage.kind());
            if let Some(t) = &stage.template {
                text.push_str(&format!(", defined in `{t}`"));
            }
            if let Some(d) = &stage.description {
                text.push_str(&format!("\n\n{d}"));
            }
            text.push_str(&columns_table(&stage.output));
            return Some(text);
        }
        if let Some(table) = self.plan.tables.iter().find(|t| t.name == word) {
            let mut text = format!("**table `{}`** at `{}`", table.name, table.location);
            if !table.partition_by.is_empty() {
                text.push_str(&format!(
                    ", partitioned by {}",
                    table.partition_by.join(", ")
                ));
            }
            match table.version {
                Some(v) => text.push_str(&format!(", version {v}")),
                None => text.push_str(", not created yet"),
            }
            for scans in self.plan.scans.iter().filter(|s| s.table == table.name) {
                for scan in &scans.scans {
                    let bytes = &scan.estimate.bytes;
                    text.push_str(&format!(
                        "\n\n- stage `{}` reads {}–{} bytes ({:?})",
                        scan.stage, bytes.min, bytes.max, scan.access
                    ));
                }
            }
            text.push_str(&columns_table(&table.columns));
            return Some(text);
        }
        let columns: Vec<String> = self
            .columns_in_scope(file)
            .into_iter()
            .filter(|(_, c)| c.name == word)
            .map(|(from, c)| {
                let null = if c.nullable { ", nullable" } else { "" };
                format!("`{}`: {}{null}, of `{from}`", c.name, c.data_type)
            })
            .collect();
        (!columns.is_empty()).then(|| columns.join("\n\n"))
    }

    /// Where `word` is defined: a relation's template (or its stage in the
    /// YAML), a table's declaration in the YAML.
    pub fn definition(&self, word: &str) -> Option<(PathBuf, u32)> {
        if let Some(t) = self.stage(word).and_then(|s| s.template.as_ref()) {
            return Some((self.root.join(t), 0));
        }
        let declared =
            self.stage(word).is_some() || self.plan.tables.iter().any(|t| t.name == word);
        if !declared {
            return None;
        }
        Some((self.pipeline.to_path_buf(), self.definition_in_yaml(word)?))
    }

    /// Relations, tables and the columns in scope in `file`.
    pub fn completion(&self, file: &Path) -> Vec<CompletionItem> {
        let item = |label: &str, detail: String, kind| CompletionItem {
            label: label.to_string(),
            detail: Some(detail),
            kind: Some(kind),
            ..Default::default()
        };
        let mut out: Vec<CompletionItem> = self
            .plan
            .stages
            .iter()
            .map(|s| {
                item(
                    &s.name,
                    format!("{:?}", s.kind()),
                    CompletionItemKind::CLASS,
                )
            })
            .chain(self.plan.tables.iter().map(|t| {
                item(
                    &t.name,
                    format!("table at {}", t.location),
                    CompletionItemKind::STRUCT,
                )
            }))
            .collect();
        for (from, c) in self.columns_in_scope(file) {
            if !out.iter().any(|i| i.label == c.name) {
                out.push(item(
                    &c.name,
                    format!("{} of {from}", c.data_type),
                    CompletionItemKind::FIELD,
                ));
            }
        }
        out
    }
}

impl Known<'_> {
    /// A lens per stage `file` defines: (line, stage) — each stage's line in
    /// the pipeline YAML, or the first line of a stage's template.
    pub fn lenses(&self, file: &Path) -> Vec<(u32, String)> {
        if same(self.pipeline, file) {
            return self
                .plan
                .stages
                .iter()
                .filter_map(|s| Some((self.definition_in_yaml(&s.name)?, s.name.clone())))
                .collect();
        }
        self.stage_of(file)
            .map(|s| vec![(0, s.name.clone())])
            .unwrap_or_default()
    }

    /// The line of `- name: word` (a stage) or `word:` (a table) in the YAML.
    fn definition_in_yaml(&self, word: &str) -> Option<u32> {
        let line = self.yaml.lines().position(|l| {
            let l = l.trim_start().trim_start_matches("- ");
            l.strip_prefix("name:").is_some_and(|n| n.trim() == word)
                || l.strip_prefix(word)
                    .is_some_and(|rest| rest.starts_with(':'))
        })?;
        Some(line as u32)
    }
}

fn columns_table(columns: &[ColumnPlan]) -> String {
    if columns.is_empty() {
        return String::new();
    }
    let mut text = "\n\n| column | type |\n|---|---|".to_string();
    for c in columns {
        text.push_str(&format!("\n| `{}` | {} |", c.name, c.data_type));
    }
    text
}

fn same(a: &Path, b: &Path) -> bool {
    a.canonicalize().ok() == b.canonicalize().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_at_a_position_is_the_identifier_around_it() {
        let text = "SELECT a.cons_acct_key\nFROM batch b";
        let at = |line, character| word_at(text, Position { line, character });
        assert_eq!(at(0, 12).as_deref(), Some("cons_acct_key"));
        assert_eq!(at(1, 5).as_deref(), Some("batch"));
        assert_eq!(at(1, 10).as_deref(), Some("batch"));
        // Just after a word (where a cursor ends a typed name) is in it.
        assert_eq!(at(1, 4).as_deref(), Some("FROM"));
        assert_eq!(
            word_at(
                "a  b",
                Position {
                    line: 0,
                    character: 2
                }
            ),
            None
        );
        assert_eq!(at(5, 0), None);
    }
}
