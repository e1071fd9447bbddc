//! Checking a table's deletion vectors against its data files, as another reader
//! will trust them: each vector reads (version, magic, portable Roaring, CRC-32: the
//! kernel's reader checks them), holds as many positions as its descriptor says,
//! every position lies below the file's physical row count, and that count is the
//! Add's `numRecords` and the Parquet footer's; the Add says `tightBounds: false`;
//! the protocol lists the `deletionVectors` feature for readers and writers.

use deltalake::kernel::LogicalFileView;
use deltalake::DeltaTable;
use serde::Serialize;

use super::error::{Error, Result};
use super::partition;
use super::vectors::{parquet_row_count, VectorReader};

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VectorCheck {
    pub table: String,
    pub version: i64,
    pub files: usize,
    pub files_with_vectors: usize,
    /// Rows the vectors delete (the sum of their cardinalities).
    pub rows_deleted: u64,
    /// One line per problem; empty when the table's vectors can be trusted.
    pub problems: Vec<String>,
}

impl VectorCheck {
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "table {} at version {}: {} files, {} with deletion vectors ({} rows deleted)\n",
            self.table, self.version, self.files, self.files_with_vectors, self.rows_deleted
        );
        if self.problems.is_empty() {
            out.push_str(
                "ok: every vector reads, matches its descriptor and lies within its file\n",
            );
        } else {
            out.push_str(&format!("{} problems:\n", self.problems.len()));
            for p in &self.problems {
                out.push_str(&format!("  {p}\n"));
            }
        }
        out
    }
}

/// Checks every vector of the table's current version; a problem is recorded, not
/// returned as an error (the check goes on over the other files). Errors are what
/// keeps the check from running at all.
pub async fn verify(table: &DeltaTable) -> Result<VectorCheck> {
    let snapshot = table.snapshot().map_err(Error::from)?;
    let mut check = VectorCheck {
        table: table.table_url().to_string(),
        version: snapshot.version() as i64,
        ..Default::default()
    };
    let files: Vec<LogicalFileView> = snapshot.log_data().iter().collect();
    check.files = files.len();
    let with_vectors: Vec<&LogicalFileView> = files
        .iter()
        .filter(|f| f.deletion_vector_descriptor().is_some())
        .collect();
    check.files_with_vectors = with_vectors.len();
    if !with_vectors.is_empty() {
        check.problems.extend(protocol_problems(
            &serde_json::to_value(snapshot.protocol()).map_err(Error::from)?,
        ));
    }
    let store = table.object_store();
    let mut reader = VectorReader::for_table(table);
    for f in with_vectors {
        let descriptor = f.deletion_vector_descriptor().expect("filtered");
        check.rows_deleted += descriptor.cardinality.max(0) as u64;
        let path = f.path().to_string();
        let mut problem = |p: String| check.problems.push(format!("{path}: {p}"));
        let stats: serde_json::Value = f
            .stats()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let num_records = stats["numRecords"].as_u64();
        if num_records.is_none() {
            problem("the Add has a deletion vector but no numRecords".into());
        }
        if stats["tightBounds"] != serde_json::Value::Bool(false) {
            problem(format!(
                "the Add has a deletion vector but tightBounds is {} (must be false)",
                match &stats["tightBounds"] {
                    serde_json::Value::Null => "absent (read as true)".to_string(),
                    v => v.to_string(),
                }
            ));
        }
        let location = match partition::file_path(&Default::default(), &path) {
            Ok(l) => l,
            Err(e) => {
                problem(e.to_string());
                continue;
            }
        };
        let rows = match parquet_row_count(&store, &location, f.size().max(0) as u64).await {
            Ok(r) => r as u64,
            Err(e) => {
                problem(format!("the data file cannot be read: {e}"));
                continue;
            }
        };
        if num_records.is_some_and(|n| n != rows) {
            problem(format!(
                "numRecords is {} but the file holds {rows} rows",
                num_records.unwrap_or(0)
            ));
        }
        let deleted = match reader.deleted(&descriptor).await {
            Ok(d) => d,
            Err(e) => {
                problem(format!("the deletion vector cannot be read: {e}"));
                continue;
            }
        };
        if deleted.len() as i64 != descriptor.cardinality {
            problem(format!(
                "the vector holds {} positions, its descriptor says {}",
                deleted.len(),
                descriptor.cardinality
            ));
        }
        if let Some(&last) = deleted.last() {
            if last >= rows {
                problem(format!(
                    "the vector deletes position {last}, past the file's {rows} rows"
                ));
            }
        }
    }
    Ok(check)
}

/// A table with vectors must list `deletionVectors` as a reader and a writer feature.
fn protocol_problems(protocol: &serde_json::Value) -> Vec<String> {
    let lists = |k: &str| {
        protocol[k]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "deletionVectors"))
    };
    let mut problems = Vec::new();
    if !(lists("readerFeatures") && lists("writerFeatures")) {
        problems.push(format!(
            "files have deletion vectors but the protocol ({protocol}) does not list the \
             deletionVectors feature for readers and writers"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_must_list_the_feature_on_both_sides() {
        let ok = serde_json::json!({"minReaderVersion": 3, "minWriterVersion": 7,
            "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]});
        assert!(protocol_problems(&ok).is_empty());
        let writer_only = serde_json::json!({"minReaderVersion": 3, "minWriterVersion": 7,
            "readerFeatures": [], "writerFeatures": ["deletionVectors"]});
        assert_eq!(protocol_problems(&writer_only).len(), 1);
    }
}
