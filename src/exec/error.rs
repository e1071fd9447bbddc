//! Why a stage failed, by kind: the scheduler reports the message, tests and the
//! CLI can tell the kinds apart.

/// A failed stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// DataFusion or delta-rs reported an error planning, executing or committing
    /// the stage (the first line of their message).
    #[error("{0}")]
    Engine(String),
    /// Rows failed a `fail` check: the run stops before any write.
    #[error("{0}")]
    ChecksFailed(String),
    /// A MERGE source holds two rows for one target key.
    #[error("{0}")]
    DuplicateKey(String),
    /// A `state:` stage did not return exactly one value.
    #[error("state stage `{stage}` returned {rows} rows; one is expected")]
    StateNotSingle { stage: String, rows: usize },
    /// A `state:` stage returned a value that is not of its variable's type; it is
    /// not recorded (the next run would refuse to read it back).
    #[error("state stage `{stage}` returned `{value}` for `{state}`: {reason}")]
    StateType {
        stage: String,
        state: String,
        value: String,
        reason: String,
    },
    /// Delta's conflict check refused the stage's commit (its message): turned into
    /// `Conflict`, with the other writer's commits, before it is reported.
    #[error("{0}")]
    Refused(String),
    /// Another writer committed to the stage's table after the stage read it, and
    /// Delta's conflict check refused this commit (non-conflicting commits are
    /// retried past by delta-rs): nothing of the stage was committed.
    #[error(
        "another writer committed to `{table}` after this stage read version {read} ({since}), and Delta's conflict check refused this stage's commit: {reason}. Nothing of the stage was committed; running again recomputes it from the table as it is now (a resumed run reads the versions of its start: if that conflicts again, `--abandon` ends it)"
    )]
    Conflict {
        table: String,
        read: i64,
        since: String,
        reason: String,
    },
    /// A table could not be opened, created, read or written (delta-rs, the Delta
    /// kernel or the object store, with what sqlplan was doing).
    #[error("{0}")]
    Delta(crate::delta::Error),
    /// A local file of the run (a spilled relation) could not be written.
    #[error("{doing}: {source}")]
    LocalFile {
        doing: String,
        source: std::io::Error,
    },
    /// The plan and the tables disagree (a table changed since it was planned).
    #[error("{0}")]
    Table(String),
    /// The stage could not run as planned (e.g. a clause delta-rs cannot execute).
    #[error("{0}")]
    Unsupported(String),
    /// An earlier, unfinished run of the pipeline stands in the way of this one.
    #[error("{0}")]
    Resume(String),
    /// Another run took this run's lease on its object-store warehouse over
    /// (this run stalled past the lease's expiry): it stops before the stage.
    #[error("another run took over this run's lease on its warehouse (this run did not renew it in time); this run stops here, and what it committed is resumed by the run that holds the lease or by the next one")]
    LeaseLost,
    /// A bug in sqlplan: something the executor relies on of the plan or of its own
    /// intermediate results did not hold (a written literal message, `"…".into()`).
    #[error("internal error (a bug in sqlplan): {0}")]
    Internal(String),
}

impl StageError {
    /// The kind as the run report names it (`error_kind`): what a script can
    /// branch on without reading the message.
    pub fn kind(&self) -> &'static str {
        match self {
            StageError::Engine(_) => "engine",
            StageError::ChecksFailed(_) => "checks_failed",
            StageError::DuplicateKey(_) => "duplicate_key",
            StageError::StateNotSingle { .. } => "state_not_single",
            StageError::StateType { .. } => "state_type",
            StageError::Refused(_) | StageError::Conflict { .. } => "conflict",
            StageError::Delta(_) => "delta",
            StageError::LocalFile { .. } => "local_file",
            StageError::Table(_) => "table",
            StageError::Unsupported(_) => "unsupported",
            StageError::Resume(_) => "resume",
            StageError::LeaseLost => "lease_lost",
            StageError::Internal(_) => "internal",
        }
    }
}

impl From<crate::delta::Error> for StageError {
    /// Errors of the Delta layer; a commit Delta's conflict check refused is found
    /// by its type in the error's sources.
    fn from(e: crate::delta::Error) -> Self {
        match super::context::commit_conflict(&e) {
            Some(conflict) => StageError::Refused(conflict),
            None => StageError::Delta(e),
        }
    }
}

impl From<&str> for StageError {
    /// The executor's own invariants (`ok_or("no row numbers")?`): what the user
    /// meets is written out with its variant instead.
    fn from(message: &str) -> Self {
        StageError::Internal(message.to_string())
    }
}
