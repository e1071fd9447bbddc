//! The local key pass of a MERGE into a table with deletion vectors: the
//! candidate files read a few at a time in this process, each matched by
//! `delta::keys::Matcher`.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};

use super::super::changes::Candidate;
use super::super::context::StageResult;
use crate::delta::keys::{MatchFile, Matcher};
use crate::delta::vectors::DataFile;

/// Data files read at once.
const CONCURRENT_FILES: usize = 4;

/// Reads the candidate files (a few at a time): the matched rows with their file,
/// position and source row; records each file's physical row count.
pub(super) async fn run(
    matcher: &Arc<Matcher>,
    table: &DeltaTable,
    candidates: &mut [Candidate],
) -> StageResult<Vec<RecordBatch>> {
    let store = table.object_store();
    let jobs: Vec<_> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let file = MatchFile {
                index: i as u32,
                file: DataFile {
                    path: c.path.clone(),
                    size: c.view.size() as u64,
                },
                partition: c.partition.clone(),
                keep: c.keep.clone(),
            };
            matcher.clone().scan(store.clone(), file)
        })
        .collect();
    let scans: Vec<(u32, usize, Vec<RecordBatch>)> = futures::stream::iter(jobs)
        .buffer_unordered(CONCURRENT_FILES)
        .try_collect()
        .await?;
    let mut matched = Vec::new();
    for (i, rows, batches) in scans {
        candidates[i as usize].rows = rows;
        matched.extend(batches);
    }
    Ok(matched)
}
