//! Run control: the folder `_sqlplan/` beside the tables a pipeline's runs finish
//! on, where one run at a time holds the pipeline's lock (`lock.rs`: a file lock
//! on a local warehouse, a lease object on an object store, `lease.rs`) and every run
//! writes its start and end to the ledger (`ledger/`). Below `exec`, which takes
//! the lock and writes the ledger; `sqlplan runs` and vacuum read it.

pub mod lease;
pub mod ledger;
pub mod lock;

use std::collections::BTreeSet;

use crate::delta;
use crate::delta::error::Doing as _;
use crate::plan::Plan;

/// Why run control failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another run of the pipeline holds its lock on this warehouse.
    #[error("another run of pipeline `{pipeline}` is in progress on this warehouse ({holder}); wait for it to end ({after})")]
    Busy {
        pipeline: String,
        holder: String,
        /// What ends the hold: the holder's process (a file lock) or the
        /// lease's expiry.
        after: &'static str,
    },
    /// The control folder, the lock file or the ledger table could not be used.
    #[error(transparent)]
    Store(#[from] delta::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The tables a run's finish commit goes to: its state tables, or the table of the
/// last writing stage when the pipeline records no state (none if nothing writes).
pub fn finish_tables(plan: &Plan) -> BTreeSet<String> {
    let mut tables: BTreeSet<String> = plan.state.values().cloned().collect();
    if tables.is_empty() {
        tables.extend(plan.stages.iter().rev().find_map(|s| s.writes.clone()));
    }
    tables
}

/// The folder `_sqlplan/` beside the first finish table: the run lock and the run
/// ledger live there, in the warehouse the run writes to (None when nothing writes).
pub fn control_url(plan: &Plan) -> delta::error::Result<Option<url::Url>> {
    let Some(table) = finish_tables(plan).into_iter().next() else {
        return Ok(None);
    };
    let Some(location) = plan
        .tables
        .iter()
        .find(|t| t.name == table)
        .map(|t| &t.location)
    else {
        return Ok(None);
    };
    let mut url = delta::table_url(location)?;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    url.join("../_sqlplan/")
        .map(Some)
        .doing(|| format!("no folder beside {url}"))
}

/// This machine's name, as runs name their holder.
pub(crate) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
