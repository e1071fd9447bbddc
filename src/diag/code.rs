//! The list of diagnostic codes: each a documented variant with a stable name.

use std::fmt;

/// What kind of problem it is: the stable name shown as `sqlplan::<code>` and
/// matched by tests and tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    /// A column name matches columns of several relations in a stage's SQL.
    AmbiguousColumn,
    /// An `expect:` check does not bind as a boolean over the stage's columns.
    BadCheck,
    /// An `expect:` check's action is neither `drop` nor `fail`.
    BadCheckAction,
    /// `expect:` has no `checks:` list.
    BadExpectations,
    /// Fixture rows do not fit the table's declared schema.
    BadFixture,
    /// A fixture file has no `cases:` list.
    BadFixtures,
    /// `run --engine` is not `df://HOST:PORT`.
    BadEngine,
    /// A table location is neither a URL nor a usable path.
    BadLocation,
    /// `generate --last-month` is not a `YYYY-MM` month.
    BadMonth,
    /// `generate --months` is out of range.
    BadMonths,
    /// A pipeline, table, stage, variable or check name is not a lowercase identifier.
    BadName,
    /// A stage reads something that is not a relation name.
    BadRelation,
    /// Fixture rows are not a list of mappings.
    BadRows,
    /// A table's `schema:` is not a list of columns.
    BadSchema,
    /// `stages:` is not a list.
    BadStages,
    /// A `state:` stage names no state variable or is not a SELECT.
    BadStateStage,
    /// A YAML value has the wrong shape or type for its key.
    BadValue,
    /// A `--var` value does not have the type of the variable's default.
    BadVarValue,
    /// A var's `type:` is not a known type name.
    BadVarType,
    /// A state value recorded in a table's log (or returned by its `state:` stage)
    /// does not have the state variable's type.
    BadStateValue,
    /// The run ledger (`_sqlplan/runs`) cannot be read.
    LedgerUnreadable,
    /// A table's estimated bytes read or rewritten pass its `max_scan_bytes` or
    /// `max_rewrite_bytes`.
    ByteBudget,
    /// `plan --baseline REF`: REF is neither a saved plan nor a git revision that plans.
    BadBaseline,
    /// `--select`/`--exclude` names no stage, leaves none, or leaves out a stage whose
    /// output a selected stage needs.
    BadSelector,
    /// `bench --from` could not copy the warehouse.
    BenchCopy,
    /// The benchmark's run of the pipeline failed.
    BenchRunFailed,
    /// The benchmark could not create its work directory.
    BenchWorkdir,
    /// An optimize stage's filter does not bind against its table.
    Bind,
    /// DataFusion could not plan a stage's SQL (other than the cases with codes of their own).
    BindError,
    /// A fixture case has no step with `expect:`.
    CaseChecksNothing,
    /// A fixture case has no `steps:` list.
    CaseWithoutSteps,
    /// Stages depend on each other in a cycle (through `after:`).
    Cycle,
    /// The demo's pipeline file is missing (run it from the project root).
    DemoPipeline,
    /// The demo's warehouse directory exists and was not made by the demo.
    DemoWarehouse,
    /// Two checks of one stage have the same name.
    DuplicateCheck,
    /// A table declares a column twice.
    DuplicateColumn,
    /// Two stages have the same name.
    DuplicateStage,
    /// A name is both a var and a state variable.
    DuplicateVar,
    /// A stage's template renders to no SQL statement.
    EmptyStage,
    /// A stage with `expect:` is not a materialized SELECT.
    ExpectationsNeedMaterialize,
    /// A YAML node that must be a mapping is not one.
    ExpectedMapping,
    /// `sqlplan test` could not read a table back after a run.
    FixtureRead,
    /// `sqlplan test` could not write fixture rows.
    FixtureWrite,
    /// Some fixture cases failed.
    FixturesFailed,
    /// The fixture file cannot be read.
    FixturesUnreadable,
    /// `generate` would overwrite existing tables (pass `--replace`).
    GenerateExists,
    /// `generate` was given a location it cannot write (local tables only).
    GenerateLocation,
    /// The pipeline lacks a table or column the generator needs.
    GenerateSchema,
    /// `generate` could not write a table.
    GenerateWrite,
    /// A bug in sqlplan (a stage task panicked, a relation failed to register).
    Internal,
    /// The run was interrupted (Ctrl-C); running stages were cancelled before committing.
    Interrupted,
    /// A YAML file does not parse.
    MalformedYaml,
    /// A required key is missing.
    MissingKey,
    /// A file a pipeline names (`sql:`, an include or import) lies outside the
    /// project root: an absolute path, a `..` escape or a symlink out.
    OutsideProject,
    /// A stage's `sql:` file cannot be read.
    MissingSqlFile,
    /// A table does not exist and declares no schema to create it with.
    MissingTable,
    /// The pipeline has no `stages:`.
    NoStages,
    /// A YAML document is not a mapping at the top.
    NotAMapping,
    /// An optimize filter names a column that is not a partition column.
    NotAPartitionFilter,
    /// A stage reads a stage that writes a table and defines no relation.
    NotARelation,
    /// The pipeline file cannot be read.
    PipelineUnreadable,
    /// A stage reads a qualified name (`schema.table`), which is not supported.
    QualifiedName,
    /// Lint: a stage defines a relation that no stage reads (nor the report nor state).
    UnreadRelation,
    /// Lint: a view read by several stages, each of which recomputes it.
    ViewReadBySeveralStages,
    /// A `drop` check has no quarantine table to drop rows into.
    QuarantineMissing,
    /// A quarantine table declares a schema of its own.
    QuarantineSchema,
    /// A stage reads a relation that only a later stage defines.
    ReadBeforeDefined,
    /// `report: true` on a stage that defines no relation.
    ReportNotARelation,
    /// The `--report` file cannot be written.
    ReportUnwritable,
    /// `sqlplan scheduler` or `sqlplan executor` could not start, or stopped with an error.
    ClusterProcess,
    /// A run could not start: a table cannot be opened or created, its schema drifted, or an unfinished run cannot be resumed.
    RunSetup,
    /// Another run of the pipeline holds the warehouse's run lock.
    RunInProgress,
    /// Every stage succeeded but the run's finish commit failed; the next run resumes it.
    RunUnfinished,
    /// A table would be scanned in full more often than its `max_full_scans`.
    ScanBudget,
    /// A stage's SQL holds more than one statement.
    SeveralStatements,
    /// A stage's rendered SQL does not parse.
    SqlSyntax,
    /// A stage failed during a run.
    StageFailed,
    /// A stage has the name of a declared table.
    StageShadowsTable,
    /// A stage has more than one of `sql`, `query`, `optimize`, `vacuum`.
    StageWithTwoBodies,
    /// A stage has none of `sql`, `query`, `optimize`, `vacuum`.
    StageWithoutBody,
    /// A state variable cannot be read back from its table's history.
    StateUnreadable,
    /// A stage's statement is not SELECT, INSERT, MERGE or DELETE.
    StatementNotAllowed,
    /// A temporary directory could not be created.
    Tempdir,
    /// A template fails to render.
    TemplateError,
    /// A template has a syntax error.
    TemplateSyntax,
    /// A stage's SQL mixes types that do not coerce.
    TypeError,
    /// A template uses an undefined variable (templates are strict).
    UndefinedVariable,
    /// A stage's SQL names a column its relations do not have.
    UnknownColumn,
    /// A YAML mapping has a key that is not allowed there.
    UnknownKey,
    /// `partition_by` names a column that is not in the schema.
    UnknownPartitionColumn,
    /// A stage reads a name that is neither a declared table nor an earlier stage.
    UnknownRelation,
    /// `after:` names a stage that does not exist.
    UnknownStage,
    /// A name that should be a declared table is not one.
    UnknownTable,
    /// A declared column type is not a DataFusion SQL type.
    UnknownType,
    /// `--var` sets a variable the pipeline does not declare.
    UnknownVar,
    /// A table's Delta log cannot be read.
    UnreadableTable,
    /// An optimize stage z-orders by a partition column.
    ZorderPartitionColumn,
}

impl Code {
    /// The stable name: `sqlplan::<name>` in diagnostics.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::AmbiguousColumn => "ambiguous_column",
            Code::BadCheck => "bad_check",
            Code::BadCheckAction => "bad_check_action",
            Code::BadExpectations => "bad_expectations",
            Code::BadFixture => "bad_fixture",
            Code::BadFixtures => "bad_fixtures",
            Code::BadEngine => "bad_engine",
            Code::BadLocation => "bad_location",
            Code::BadMonth => "bad_month",
            Code::BadMonths => "bad_months",
            Code::BadName => "bad_name",
            Code::BadRelation => "bad_relation",
            Code::BadRows => "bad_rows",
            Code::BadSchema => "bad_schema",
            Code::BadStages => "bad_stages",
            Code::BadStateStage => "bad_state_stage",
            Code::BadValue => "bad_value",
            Code::BadVarValue => "bad_var_value",
            Code::BadVarType => "bad_var_type",
            Code::BadStateValue => "bad_state_value",
            Code::LedgerUnreadable => "ledger_unreadable",
            Code::ByteBudget => "byte_budget",
            Code::BadBaseline => "bad_baseline",
            Code::BadSelector => "bad_selector",
            Code::BenchCopy => "bench_copy",
            Code::BenchRunFailed => "bench_run_failed",
            Code::BenchWorkdir => "bench_workdir",
            Code::Bind => "bind",
            Code::BindError => "bind_error",
            Code::CaseChecksNothing => "case_checks_nothing",
            Code::CaseWithoutSteps => "case_without_steps",
            Code::Cycle => "cycle",
            Code::DemoPipeline => "demo_pipeline",
            Code::DemoWarehouse => "demo_warehouse",
            Code::DuplicateCheck => "duplicate_check",
            Code::DuplicateColumn => "duplicate_column",
            Code::DuplicateStage => "duplicate_stage",
            Code::DuplicateVar => "duplicate_var",
            Code::EmptyStage => "empty_stage",
            Code::ExpectationsNeedMaterialize => "expectations_need_materialize",
            Code::ExpectedMapping => "expected_mapping",
            Code::FixtureRead => "fixture_read",
            Code::FixtureWrite => "fixture_write",
            Code::FixturesFailed => "fixtures_failed",
            Code::FixturesUnreadable => "fixtures_unreadable",
            Code::GenerateExists => "generate_exists",
            Code::GenerateLocation => "generate_location",
            Code::GenerateSchema => "generate_schema",
            Code::GenerateWrite => "generate_write",
            Code::Internal => "internal",
            Code::Interrupted => "interrupted",
            Code::MalformedYaml => "malformed_yaml",
            Code::MissingKey => "missing_key",
            Code::OutsideProject => "outside_project",
            Code::MissingSqlFile => "missing_sql_file",
            Code::MissingTable => "missing_table",
            Code::NoStages => "no_stages",
            Code::NotAMapping => "not_a_mapping",
            Code::NotAPartitionFilter => "not_a_partition_filter",
            Code::NotARelation => "not_a_relation",
            Code::PipelineUnreadable => "pipeline_unreadable",
            Code::QualifiedName => "qualified_name",
            Code::QuarantineMissing => "quarantine_missing",
            Code::QuarantineSchema => "quarantine_schema",
            Code::ReadBeforeDefined => "read_before_defined",
            Code::ReportNotARelation => "report_not_a_relation",
            Code::ReportUnwritable => "report_unwritable",
            Code::ClusterProcess => "cluster_process",
            Code::RunSetup => "run_setup",
            Code::RunInProgress => "run_in_progress",
            Code::RunUnfinished => "run_unfinished",
            Code::ScanBudget => "scan_budget",
            Code::SeveralStatements => "several_statements",
            Code::SqlSyntax => "sql_syntax",
            Code::StageFailed => "stage_failed",
            Code::StageShadowsTable => "stage_shadows_table",
            Code::StageWithTwoBodies => "stage_with_two_bodies",
            Code::StageWithoutBody => "stage_without_body",
            Code::StateUnreadable => "state_unreadable",
            Code::StatementNotAllowed => "statement_not_allowed",
            Code::Tempdir => "tempdir",
            Code::TemplateError => "template_error",
            Code::TemplateSyntax => "template_syntax",
            Code::TypeError => "type_error",
            Code::UndefinedVariable => "undefined_variable",
            Code::UnknownColumn => "unknown_column",
            Code::UnknownKey => "unknown_key",
            Code::UnknownPartitionColumn => "unknown_partition_column",
            Code::UnknownRelation => "unknown_relation",
            Code::UnknownStage => "unknown_stage",
            Code::UnknownTable => "unknown_table",
            Code::UnknownType => "unknown_type",
            Code::UnknownVar => "unknown_var",
            Code::UnreadRelation => "unread_relation",
            Code::ViewReadBySeveralStages => "view_read_by_several_stages",
            Code::UnreadableTable => "unreadable_table",
            Code::ZorderPartitionColumn => "zorder_partition_column",
        }
    }
}

/// Every code, for tests and for listing them.
pub const ALL_CODES: &[Code] = &[
    Code::AmbiguousColumn,
    Code::BadCheck,
    Code::BadCheckAction,
    Code::BadExpectations,
    Code::BadFixture,
    Code::BadFixtures,
    Code::BadEngine,
    Code::BadLocation,
    Code::BadMonth,
    Code::BadMonths,
    Code::BadName,
    Code::BadRelation,
    Code::BadRows,
    Code::BadSchema,
    Code::BadStages,
    Code::BadStateStage,
    Code::BadValue,
    Code::BadVarValue,
    Code::BadVarType,
    Code::BadStateValue,
    Code::LedgerUnreadable,
    Code::ByteBudget,
    Code::BadBaseline,
    Code::BadSelector,
    Code::BenchCopy,
    Code::BenchRunFailed,
    Code::BenchWorkdir,
    Code::Bind,
    Code::BindError,
    Code::CaseChecksNothing,
    Code::CaseWithoutSteps,
    Code::Cycle,
    Code::DemoPipeline,
    Code::DemoWarehouse,
    Code::DuplicateCheck,
    Code::DuplicateColumn,
    Code::DuplicateStage,
    Code::DuplicateVar,
    Code::EmptyStage,
    Code::ExpectationsNeedMaterialize,
    Code::ExpectedMapping,
    Code::FixtureRead,
    Code::FixtureWrite,
    Code::FixturesFailed,
    Code::FixturesUnreadable,
    Code::GenerateExists,
    Code::GenerateLocation,
    Code::GenerateSchema,
    Code::GenerateWrite,
    Code::Internal,
    Code::Interrupted,
    Code::MalformedYaml,
    Code::MissingKey,
    Code::OutsideProject,
    Code::MissingSqlFile,
    Code::MissingTable,
    Code::NoStages,
    Code::NotAMapping,
    Code::NotAPartitionFilter,
    Code::NotARelation,
    Code::PipelineUnreadable,
    Code::QualifiedName,
    Code::QuarantineMissing,
    Code::QuarantineSchema,
    Code::ReadBeforeDefined,
    Code::ReportNotARelation,
    Code::ReportUnwritable,
    Code::ClusterProcess,
    Code::RunSetup,
    Code::RunInProgress,
    Code::RunUnfinished,
    Code::ScanBudget,
    Code::SeveralStatements,
    Code::SqlSyntax,
    Code::StageFailed,
    Code::StageShadowsTable,
    Code::StageWithTwoBodies,
    Code::StageWithoutBody,
    Code::StateUnreadable,
    Code::StatementNotAllowed,
    Code::Tempdir,
    Code::TemplateError,
    Code::TemplateSyntax,
    Code::TypeError,
    Code::UndefinedVariable,
    Code::UnknownColumn,
    Code::UnknownKey,
    Code::UnknownPartitionColumn,
    Code::UnknownRelation,
    Code::UnknownStage,
    Code::UnknownTable,
    Code::UnknownType,
    Code::UnknownVar,
    Code::UnreadRelation,
    Code::ViewReadBySeveralStages,
    Code::UnreadableTable,
    Code::ZorderPartitionColumn,
];

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
