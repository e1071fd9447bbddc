//! The list of diagnostic codes: each a documented variant with a stable name.

use std::fmt;

/// Declares `Code` from one table: each variant with its documentation and its
/// stable name, so a new code is written once (the enum, `as_str` and `ALL_CODES`
/// cannot disagree).
macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What kind of problem it is: the stable name shown as `sqlplan::<code>` and
        /// matched by tests and tools.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// The stable name: `sqlplan::<name>` in diagnostics.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $name,)*
                }
            }
        }

        /// A code is written as its stable name (in a plan's warnings).
        impl serde::Serialize for Code {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        /// Every code (the tests check each one's stable name).
        #[cfg(test)]
        pub const ALL_CODES: &[Code] = &[$(Code::$variant,)*];
    };
}

codes! {
    /// A column name matches columns of several relations in a stage's SQL.
    AmbiguousColumn => "ambiguous_column",
    /// An `expect:` check does not bind as a boolean over the stage's columns.
    BadCheck => "bad_check",
    /// An `expect:` check's action is neither `drop` nor `fail`.
    BadCheckAction => "bad_check_action",
    /// `expect:` has no `checks:` list.
    BadExpectations => "bad_expectations",
    /// Fixture rows do not fit the table's declared schema.
    BadFixture => "bad_fixture",
    /// A fixture file has no `cases:` list.
    BadFixtures => "bad_fixtures",
    /// `run --engine` is not `df://HOST:PORT`.
    BadEngine => "bad_engine",
    /// A table location is neither a URL nor a usable path.
    BadLocation => "bad_location",
    /// `generate --last-month` is not a `YYYY-MM` month.
    BadMonth => "bad_month",
    /// `generate --months` is out of range.
    BadMonths => "bad_months",
    /// A pipeline, table, stage, variable or check name is not a lowercase identifier.
    BadName => "bad_name",
    /// A stage reads something that is not a relation name.
    BadRelation => "bad_relation",
    /// Fixture rows are not a list of mappings.
    BadRows => "bad_rows",
    /// A table's `schema:` is not a list of columns.
    BadSchema => "bad_schema",
    /// `stages:` is not a list.
    BadStages => "bad_stages",
    /// A `state:` stage names no state variable or is not a SELECT.
    BadStateStage => "bad_state_stage",
    /// A YAML value has the wrong shape or type for its key.
    BadValue => "bad_value",
    /// A `--var` value does not have the type of the variable's default.
    BadVarValue => "bad_var_value",
    /// A var's `type:` is not a known type name.
    BadVarType => "bad_var_type",
    /// A state value recorded in a table's log (or returned by its `state:` stage)
    /// does not have the state variable's type.
    BadStateValue => "bad_state_value",
    /// The run ledger (`_sqlplan/runs`) cannot be read.
    LedgerUnreadable => "ledger_unreadable",
    /// A table's estimated bytes read or rewritten pass its `max_scan_bytes` or
    /// `max_rewrite_bytes`.
    ByteBudget => "byte_budget",
    /// `plan --baseline REF`: REF is neither a saved plan nor a git revision that plans.
    BadBaseline => "bad_baseline",
    /// `--select`/`--exclude` names no stage, leaves none, or leaves out a stage whose
    /// output a selected stage needs.
    BadSelector => "bad_selector",
    /// `bench --from` could not copy the warehouse.
    BenchCopy => "bench_copy",
    /// The benchmark's run of the pipeline failed.
    BenchRunFailed => "bench_run_failed",
    /// The benchmark could not create its work directory.
    BenchWorkdir => "bench_workdir",
    /// An optimize stage's filter does not bind against its table.
    Bind => "bind",
    /// DataFusion could not plan a stage's SQL (other than the cases with codes of their own).
    BindError => "bind_error",
    /// A fixture case has no step with `expect:`.
    CaseChecksNothing => "case_checks_nothing",
    /// A fixture case has no `steps:` list.
    CaseWithoutSteps => "case_without_steps",
    /// Stages depend on each other in a cycle (through `after:`).
    Cycle => "cycle",
    /// The demo's pipeline file is missing (run it from the project root).
    DemoPipeline => "demo_pipeline",
    /// The demo's warehouse directory exists and was not made by the demo.
    DemoWarehouse => "demo_warehouse",
    /// Two checks of one stage have the same name.
    DuplicateCheck => "duplicate_check",
    /// A table declares a column twice.
    DuplicateColumn => "duplicate_column",
    /// Two stages have the same name.
    DuplicateStage => "duplicate_stage",
    /// A name is both a var and a state variable.
    DuplicateVar => "duplicate_var",
    /// A stage's template renders to no SQL statement.
    EmptyStage => "empty_stage",
    /// A stage with `expect:` is not a materialized SELECT.
    ExpectationsNeedMaterialize => "expectations_need_materialize",
    /// A YAML node that must be a mapping is not one.
    ExpectedMapping => "expected_mapping",
    /// `sqlplan test` could not read a table back after a run.
    FixtureRead => "fixture_read",
    /// `sqlplan test` could not write fixture rows.
    FixtureWrite => "fixture_write",
    /// Some fixture cases failed.
    FixturesFailed => "fixtures_failed",
    /// The fixture file cannot be read.
    FixturesUnreadable => "fixtures_unreadable",
    /// `generate` would overwrite existing tables (pass `--replace`).
    GenerateExists => "generate_exists",
    /// `generate` was given a location it cannot write (local tables only).
    GenerateLocation => "generate_location",
    /// The pipeline lacks a table or column the generator needs.
    GenerateSchema => "generate_schema",
    /// `generate` could not write a table.
    GenerateWrite => "generate_write",
    /// A bug in sqlplan (a stage task panicked, a relation failed to register).
    Internal => "internal",
    /// The run was interrupted (Ctrl-C); running stages were cancelled before committing.
    Interrupted => "interrupted",
    /// A YAML file does not parse.
    MalformedYaml => "malformed_yaml",
    /// A required key is missing.
    MissingKey => "missing_key",
    /// A file a pipeline names (`sql:`, an include or import) lies outside the
    /// project root: an absolute path, a `..` escape or a symlink out.
    OutsideProject => "outside_project",
    /// A stage's `sql:` file cannot be read.
    MissingSqlFile => "missing_sql_file",
    /// A table does not exist and declares no schema to create it with.
    MissingTable => "missing_table",
    /// The pipeline has no `stages:`.
    NoStages => "no_stages",
    /// A YAML document is not a mapping at the top.
    NotAMapping => "not_a_mapping",
    /// An optimize filter names a column that is not a partition column.
    NotAPartitionFilter => "not_a_partition_filter",
    /// A stage reads a stage that writes a table and defines no relation.
    NotARelation => "not_a_relation",
    /// The pipeline file cannot be read.
    PipelineUnreadable => "pipeline_unreadable",
    /// A stage reads a qualified name (`schema.table`), which is not supported.
    QualifiedName => "qualified_name",
    /// Lint: a stage defines a relation that no stage reads (nor the report nor state).
    UnreadRelation => "unread_relation",
    /// Lint: a view read by several stages, each of which recomputes it.
    ViewReadBySeveralStages => "view_read_by_several_stages",
    /// A `drop` check has no quarantine table to drop rows into.
    QuarantineMissing => "quarantine_missing",
    /// A quarantine table declares a schema of its own.
    QuarantineSchema => "quarantine_schema",
    /// A stage reads a relation that only a later stage defines.
    ReadBeforeDefined => "read_before_defined",
    /// `report: true` on a stage that defines no relation.
    ReportNotARelation => "report_not_a_relation",
    /// The `--report` file cannot be written.
    ReportUnwritable => "report_unwritable",
    /// `sqlplan scheduler` or `sqlplan executor` could not start, or stopped with an error.
    ClusterProcess => "cluster_process",
    /// `sqlplan lsp` lost its editor (stdin or stdout closed) or met a protocol error.
    LspFailed => "lsp_failed",
    /// A run could not start: a table cannot be opened or created, its schema drifted, or an unfinished run cannot be resumed.
    RunSetup => "run_setup",
    /// Another run of the pipeline holds the warehouse's run lock.
    RunInProgress => "run_in_progress",
    /// Every stage succeeded but the run's finish commit failed; the next run resumes it.
    RunUnfinished => "run_unfinished",
    /// A table would be scanned in full more often than its `max_full_scans`.
    ScanBudget => "scan_budget",
    /// A stage's SQL holds more than one statement.
    SeveralStatements => "several_statements",
    /// A stage's rendered SQL does not parse.
    SqlSyntax => "sql_syntax",
    /// A stage failed during a run.
    StageFailed => "stage_failed",
    /// A stage has the name of a declared table.
    StageShadowsTable => "stage_shadows_table",
    /// A stage has more than one of `sql`, `query`, `optimize`, `vacuum`.
    StageWithTwoBodies => "stage_with_two_bodies",
    /// A stage has none of `sql`, `query`, `optimize`, `vacuum`.
    StageWithoutBody => "stage_without_body",
    /// A state variable cannot be read back from its table's history.
    StateUnreadable => "state_unreadable",
    /// A stage's statement is not SELECT, INSERT, MERGE or DELETE.
    StatementNotAllowed => "statement_not_allowed",
    /// A temporary directory could not be created.
    Tempdir => "tempdir",
    /// A template fails to render.
    TemplateError => "template_error",
    /// A template has a syntax error.
    TemplateSyntax => "template_syntax",
    /// A stage's SQL mixes types that do not coerce.
    TypeError => "type_error",
    /// A template uses an undefined variable (templates are strict).
    UndefinedVariable => "undefined_variable",
    /// A stage's SQL names a column its relations do not have.
    UnknownColumn => "unknown_column",
    /// A YAML mapping has a key that is not allowed there.
    UnknownKey => "unknown_key",
    /// `partition_by` names a column that is not in the schema.
    UnknownPartitionColumn => "unknown_partition_column",
    /// A stage reads a name that is neither a declared table nor an earlier stage.
    UnknownRelation => "unknown_relation",
    /// `after:` names a stage that does not exist.
    UnknownStage => "unknown_stage",
    /// A name that should be a declared table is not one.
    UnknownTable => "unknown_table",
    /// A declared column type is not a DataFusion SQL type.
    UnknownType => "unknown_type",
    /// `--var` sets a variable the pipeline does not declare.
    UnknownVar => "unknown_var",
    /// A table's Delta log cannot be read.
    UnreadableTable => "unreadable_table",
    /// An optimize stage z-orders by a partition column.
    ZorderPartitionColumn => "zorder_partition_column",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
