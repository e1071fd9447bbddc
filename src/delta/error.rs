//! Why a Delta operation failed: what sqlplan was doing, and the error of the
//! library below kept as the source, so a caller finds (say) a commit conflict by
//! its type rather than by its message.

use std::sync::Arc;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of a library below: delta-rs, the Delta kernel, DataFusion, Arrow,
/// Parquet, the object store, the file system. Shared, so a result observed once
/// can be handed out again.
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A library below failed while sqlplan was `doing` something (none: its
    /// message says enough).
    #[error("{}{source}", doing.as_ref().map(|d| format!("{d}: ")).unwrap_or_default())]
    Library {
        doing: Option<String>,
        #[source]
        source: Source,
    },
    /// The table, its log or its files are not what sqlplan can work with.
    #[error("{0}")]
    Table(String),
    /// A location sqlplan cannot reach: a bad path, a scheme without a store.
    #[error("{0}")]
    Location(String),
}

impl Error {
    /// The table, its log or its files are not what sqlplan can work with.
    pub fn table(message: impl Into<String>) -> Error {
        Error::Table(message.into())
    }

    /// A library's error, its message as it is.
    pub fn library(source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Library {
            doing: None,
            source: Arc::new(source),
        }
    }

    /// A library's error, with what sqlplan was doing.
    pub fn doing(
        doing: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Library {
            doing: Some(doing.into()),
            source: Arc::new(source),
        }
    }
}

/// `?` on the libraries' results: their message as it is.
macro_rules! from_library {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Library { doing: None, source: Arc::new(e) }
            }
        }
    )*};
}

from_library!(
    deltalake::DeltaTableError,
    deltalake::kernel::Error,
    datafusion::error::DataFusionError,
    datafusion::arrow::error::ArrowError,
    datafusion::parquet::errors::ParquetError,
    deltalake::logstore::object_store::Error,
    deltalake::logstore::object_store::path::Error,
    std::io::Error,
    serde_json::Error,
    tokio::task::JoinError,
    url::ParseError,
    buoyant_kernel::Error,
);

/// Says what sqlplan was doing when a library failed: `.doing(|| format!("…"))`.
pub trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Doing<T> for std::result::Result<T, E> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Library {
            doing: Some(what()),
            source: Arc::new(e),
        })
    }
}
