//! One run of a pipeline at a time on a warehouse. A run holds an exclusive lock on
//! `_sqlplan/<pipeline>.lock` beside the folder of its first finish table (in the
//! warehouse, where the folder of the table the run may create is not touched) for
//! as long as it lives; a second run refuses at once, naming the
//! run that holds it. The lock is the operating system's (`flock`): it goes with the
//! process, so a run that was killed blocks nobody, and the next run resumes it.
//! On an object store the same is a lease object (`lease.rs`), which holds across
//! machines.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};

use super::{Error, Result};
use crate::delta::error::Doing as _;
use crate::plan::Plan;

/// Held for the run's lifetime: a local warehouse's file lock (dropping it, or
/// the process ending, releases it) or an object store's lease.
#[derive(Debug)]
pub enum RunLock {
    /// Holding the file open holds the lock.
    File(#[allow(dead_code)] File),
    Lease(super::lease::Lease),
}

impl RunLock {
    /// The flag another run's taking over of the lease sets (none for a file lock).
    pub fn lost_flag(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
        match self {
            RunLock::File(_) => None,
            RunLock::Lease(l) => Some(l.lost_flag()),
        }
    }

    /// Ends the run's hold (deletes a lease object that is still its own).
    pub async fn release(self) {
        if let RunLock::Lease(lease) = self {
            lease.release().await;
        }
    }
}

/// Takes the pipeline's lock on its warehouse, or says who holds it.
pub async fn acquire(plan: &Plan) -> Result<Option<RunLock>> {
    let Some(url) = super::control_url(plan)? else {
        return Ok(None);
    };
    let Ok(dir) = url.to_file_path() else {
        let (store, folder) = crate::delta::stores::store_for(&url)?;
        let path = folder.clone().join(format!("{}.lease", plan.pipeline));
        let lease = super::lease::acquire(store, path, &plan.pipeline).await?;
        return Ok(Some(RunLock::Lease(lease)));
    };
    std::fs::create_dir_all(&dir).doing(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{}.lock", plan.pipeline));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .doing(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "holder unknown".to_string(),
                known => known.to_string(),
            };
            return Err(Error::Busy {
                pipeline: plan.pipeline.clone(),
                holder,
                after: "a run whose process is gone holds no lock, and the next run resumes it",
            });
        }
        Err(TryLockError::Error(e)) => {
            let doing = format!("cannot lock {}", path.display());
            return Err(crate::delta::Error::doing(doing, e).into());
        }
    }
    let holder = format!(
        "process {} since {}",
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    );
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = file.write_all(holder.as_bytes());
    let _ = file.flush();
    Ok(Some(RunLock::File(file)))
}
