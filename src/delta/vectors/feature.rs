//! Turning deletion vectors on for a table: the property and the reader/writer
//! feature, keeping every feature the table's protocol already had.

use std::collections::HashMap;

use deltalake::DeltaTable;

use crate::delta::error::{Doing as _, Result};

/// The table has `delta.enableDeletionVectors = true`.
pub fn enabled(table: &DeltaTable) -> bool {
    table
        .snapshot()
        .ok()
        .and_then(|s| s.table_config().enable_deletion_vectors)
        .unwrap_or(false)
}

/// Turns deletion vectors on for an existing table: the property and the
/// `deletionVectors` reader/writer feature, in one commit. A table on a legacy
/// protocol (reader < 3 or writer < 7) moves to table features listing every
/// feature its versions implied (column mapping at reader 2 and writer 5, append-only
/// and invariants at writer 2, …), as Delta's reference implementation does:
/// delta-rs's own upgrade lists only the new feature, and a table would silently
/// lose, say, its column mapping.
pub async fn enable(table: DeltaTable) -> Result<DeltaTable> {
    use deltalake::kernel::transaction::CommitBuilder;
    use deltalake::kernel::{Action, MetadataExt};
    use deltalake::protocol::DeltaOperation;

    let doing = || "cannot enable deletion vectors".to_string();
    let snapshot = table.snapshot().doing(doing)?.clone();
    let property = ("delta.enableDeletionVectors", "true");
    let metadata = snapshot
        .metadata()
        .clone()
        .add_config_key(property.0.into(), property.1.into())
        .doing(doing)?;
    let current = serde_json::to_value(snapshot.protocol()).doing(doing)?;
    let protocol = serde_json::from_value(with_vectors(&current)).doing(doing)?;
    let operation = DeltaOperation::SetTableProperties {
        properties: HashMap::from([(property.0.to_string(), property.1.to_string())]),
    };
    let commit = CommitBuilder::default()
        .with_actions(vec![Action::Metadata(metadata), Action::Protocol(protocol)])
        .build(Some(&snapshot), table.log_store(), operation)
        .await
        .doing(doing)?;
    let mut table = table;
    table
        .update_incremental(Some(commit.version()))
        .await
        .doing(doing)?;
    Ok(table)
}

/// Features a legacy protocol version supports without listing them: (feature,
/// least reader version, least writer version), as the Delta protocol defines them.
const LEGACY_FEATURES: [(&str, i64, i64); 7] = [
    ("appendOnly", 1, 2),
    ("invariants", 1, 2),
    ("checkConstraints", 1, 3),
    ("changeDataFeed", 1, 4),
    ("generatedColumns", 1, 4),
    ("columnMapping", 2, 5),
    ("identityColumns", 1, 6),
];

/// Features that are reader features too (they must be listed on both sides).
const READER_WRITER_FEATURES: [&str; 1] = ["columnMapping"];

/// A protocol action (its JSON) with the `deletionVectors` feature added: at
/// reader 3 and writer 7, keeping every feature the table had, listed or implied.
fn with_vectors(protocol: &serde_json::Value) -> serde_json::Value {
    let version = |k: &str| protocol[k].as_i64().unwrap_or(1);
    let (reader, writer) = (version("minReaderVersion"), version("minWriterVersion"));
    let listed = |k: &str| -> Vec<String> {
        protocol[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect()
    };
    let mut writer_features = listed("writerFeatures");
    let mut reader_features = listed("readerFeatures");
    // Reader 2 means column mapping (the only legacy reader feature), also beside
    // writer 7 (a shape older Spark versions wrote).
    if reader == 2 && writer == 7 {
        for features in [&mut writer_features, &mut reader_features] {
            features.push("columnMapping".into());
        }
    }
    if writer < 7 {
        for (feature, least_reader, least_writer) in LEGACY_FEATURES {
            if reader >= least_reader && writer >= least_writer {
                writer_features.push(feature.to_string());
                if READER_WRITER_FEATURES.contains(&feature) {
                    reader_features.push(feature.to_string());
                }
            }
        }
    }
    writer_features.push("deletionVectors".into());
    reader_features.push("deletionVectors".into());
    for features in [&mut writer_features, &mut reader_features] {
        features.sort();
        features.dedup();
    }
    serde_json::json!({
        "minReaderVersion": 3,
        "minWriterVersion": 7,
        "readerFeatures": reader_features,
        "writerFeatures": writer_features,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabling_vectors_keeps_the_features_a_legacy_protocol_implied() {
        use serde_json::json;
        let cases = [
            (
                json!({"minReaderVersion": 1, "minWriterVersion": 2}),
                json!(["appendOnly", "deletionVectors", "invariants"]),
                json!(["deletionVectors"]),
            ),
            (
                json!({"minReaderVersion": 2, "minWriterVersion": 5}),
                json!([
                    "appendOnly",
                    "changeDataFeed",
                    "checkConstraints",
                    "columnMapping",
                    "deletionVectors",
                    "generatedColumns",
                    "invariants"
                ]),
                json!(["columnMapping", "deletionVectors"]),
            ),
            (
                json!({"minReaderVersion": 2, "minWriterVersion": 7,
                       "writerFeatures": ["columnMapping", "invariants"]}),
                json!(["columnMapping", "deletionVectors", "invariants"]),
                json!(["columnMapping", "deletionVectors"]),
            ),
            (
                json!({"minReaderVersion": 3, "minWriterVersion": 7,
                       "readerFeatures": ["timestampNtz"],
                       "writerFeatures": ["timestampNtz", "appendOnly"]}),
                json!(["appendOnly", "deletionVectors", "timestampNtz"]),
                json!(["deletionVectors", "timestampNtz"]),
            ),
        ];
        for (before, writer, reader) in cases {
            let after = with_vectors(&before);
            assert_eq!(
                (&after["minReaderVersion"], &after["minWriterVersion"]),
                (&json!(3), &json!(7))
            );
            assert_eq!(after["writerFeatures"], writer, "{before}");
            assert_eq!(after["readerFeatures"], reader, "{before}");
            // The kernel accepts it.
            serde_json::from_value::<deltalake::kernel::Protocol>(after).unwrap();
        }
    }
}
