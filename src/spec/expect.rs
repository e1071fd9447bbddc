//! `expect:` on a stage: named row checks (SQL booleans over the stage's output)
//! with an action each — `drop` the rows that fail into a quarantine table, or
//! `fail` the run before any write.
//!
//! ```yaml
//! - name: incoming
//!   sql: sql/incoming.sql
//!   materialize: true
//!   expect:
//!     quarantine: rejected            # a declared table; its columns are sqlplan's
//!     checks:
//!       - {name: key_present, check: "id IS NOT NULL", action: drop}
//!       - {name: amount_known, check: "amount IS NOT NULL", action: fail}
//! ```

use std::collections::BTreeMap;

use marked_yaml::Node;
use serde::Serialize;

use super::yaml::check_identifier;
use super::{ColumnSpec, Loader, Spanned, StageSpec, TableSpec};
use crate::diag::{did_you_mean, Code, Result};

const EXPECT_KEYS: &[&str] = &["quarantine", "checks"];
const CHECK_KEYS: &[&str] = &["name", "check", "action"];

/// The expectations of one stage.
#[derive(Clone, Debug)]
pub struct ExpectSpec {
    /// The declared table that dropped rows go to (required by `drop` checks).
    pub quarantine: Option<Spanned<String>>,
    pub checks: Vec<CheckSpec>,
}

#[derive(Clone, Debug)]
pub struct CheckSpec {
    pub name: Spanned<String>,
    /// A SQL boolean over the stage's output columns (templated with the vars). A row
    /// passes when it is true; false or NULL fails it.
    pub sql: Spanned<String>,
    pub action: CheckAction,
}

/// What happens to a row that fails a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckAction {
    /// Removed from the relation and written to the quarantine table.
    Drop,
    /// The run stops before any write, naming the check, the count and examples.
    Fail,
}

/// The columns of every quarantine table: the run that dropped the row, the stage
/// and check it failed (the first failed check, in declared order), and the row
/// itself as JSON — kept as it was, never reinterpreted.
pub const QUARANTINE_COLUMNS: [(&str, &str, bool); 4] = [
    ("run", "BIGINT", false),
    ("stage", "STRING", false),
    ("check_name", "STRING", false),
    ("record", "STRING", false),
];

impl Loader<'_> {
    pub(super) fn expectations(
        &self,
        node: Option<&Node>,
        stage: &str,
    ) -> Result<Option<ExpectSpec>> {
        let Some(node) = node else { return Ok(None) };
        let what = format!("`expect` of stage `{stage}`");
        let map = self.mapping(node, &what)?;
        self.check_keys(map, EXPECT_KEYS, &what)?;
        let quarantine = self.optional_string(map, "quarantine")?;
        let Some(list) = map.get_node("checks").and_then(Node::as_sequence) else {
            let help =
                "write `checks: [{name: key_present, check: \"id IS NOT NULL\", action: drop}]`";
            return Err(self
                .error_at(
                    node.span(),
                    Code::BadExpectations,
                    format!("{what} has no `checks:` list"),
                )
                .help(help));
        };
        let mut checks: Vec<CheckSpec> = Vec::new();
        for item in list.iter() {
            let check = self.check(item)?;
            if let Some(prev) = checks.iter().find(|c| c.name.value == check.name.value) {
                return Err(self
                    .error(
                        check.name.span,
                        Code::DuplicateCheck,
                        format!(
                            "two checks of stage `{stage}` are named `{}`",
                            check.name.value
                        ),
                        "second check with this name",
                    )
                    .label(prev.name.span, "first defined here"));
            }
            checks.push(check);
        }
        if quarantine.is_none() {
            if let Some(drop) = checks.iter().find(|c| c.action == CheckAction::Drop) {
                let message = format!(
                    "check `{}` drops rows, but stage `{stage}` names no quarantine table",
                    drop.name.value
                );
                let help = "add `quarantine: TABLE` under `expect:` \
                            (a declared table without `schema:`), or make the check `action: fail`";
                return Err(self
                    .error(
                        drop.name.span,
                        Code::QuarantineMissing,
                        message,
                        "a `drop` check",
                    )
                    .help(help));
            }
        }
        Ok(Some(ExpectSpec { quarantine, checks }))
    }

    fn check(&self, node: &Node) -> Result<CheckSpec> {
        let map = self.mapping(node, "check")?;
        self.check_keys(map, CHECK_KEYS, "check")?;
        let name = self.required_string(map, "name", node.span())?;
        check_identifier(&self.reader, &name, "check name")?;
        let sql = self.required_string(map, "check", node.span())?;
        let action = self.required_string(map, "action", node.span())?;
        let action = match action.value.as_str() {
            "drop" => CheckAction::Drop,
            "fail" => CheckAction::Fail,
            other => {
                let mut e = self.error(
                    action.span,
                    Code::BadCheckAction,
                    format!("unknown action `{other}`"),
                    "not an action",
                );
                let help = did_you_mean(other, ["drop", "fail"]).unwrap_or_else(|| {
                    "an action is `drop` (into the quarantine table) \
                     or `fail` (stop the run before any write)"
                        .into()
                });
                e = e.help(help);
                return Err(e);
            }
        };
        Ok(CheckSpec { name, sql, action })
    }

    /// Quarantine tables get sqlplan's columns; they must be declared, without a
    /// schema of their own.
    pub(super) fn quarantine_schemas(
        &self,
        stages: &[StageSpec],
        tables: &mut BTreeMap<String, TableSpec>,
    ) -> Result<()> {
        for q in stages
            .iter()
            .filter_map(|s| s.expect.as_ref()?.quarantine.as_ref())
        {
            let Some(table) = tables.get_mut(&q.value) else {
                let mut e = self.error(
                    q.span,
                    Code::UnknownTable,
                    format!("quarantine table `{}` is not declared", q.value),
                    "unknown table",
                );
                let help = did_you_mean(&q.value, tables.keys().map(String::as_str))
                    .unwrap_or_else(|| {
                        format!(
                            "declare it under `tables:` with a location, \
                             e.g. `{}: {{location: \"{{{{ warehouse }}}}/{}\"}}`",
                            q.value, q.value
                        )
                    });
                e = e.help(help);
                return Err(e);
            };
            let columns: Vec<ColumnSpec> = QUARANTINE_COLUMNS
                .iter()
                .map(|(name, ty, nullable)| ColumnSpec {
                    name: Spanned {
                        value: name.to_string(),
                        span: q.span,
                    },
                    data_type: Spanned {
                        value: ty.to_string(),
                        span: q.span,
                    },
                    nullable: *nullable,
                })
                .collect();
            let same = |declared: &[ColumnSpec]| {
                declared.len() == columns.len()
                    && declared.iter().zip(&columns).all(|(a, b)| {
                        a.name.value == b.name.value
                            && a.data_type.value.eq_ignore_ascii_case(&b.data_type.value)
                    })
            };
            match &table.schema {
                Some(declared) if !same(declared) => {
                    let message = format!(
                        "`{}` is a quarantine table; its columns are sqlplan's",
                        q.value
                    );
                    let help = "remove its `schema:`: a quarantine table has the columns \
                                run, stage, check_name and record (the row as JSON)";
                    return Err(self
                        .error(
                            table.name.span,
                            Code::QuarantineSchema,
                            message,
                            "declared with a schema",
                        )
                        .label(q.span, "used as a quarantine table here")
                        .help(help));
                }
                _ => table.schema = Some(columns),
            }
        }
        Ok(())
    }
}
