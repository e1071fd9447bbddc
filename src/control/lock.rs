//! One run of a pipeline at a time on a warehouse. A run holds an exclusive lock on
//! `_sqlplan/<pipeline>.lock` beside the folder of its first finish table (in the
//! warehouse, where the folder of the table the run may create is not touched) for
//! as long as it lives; a second run refuses at once, naming the
//! run that holds it. The lock is the operating system's (`flock`): it goes with the
//! process, so a run that was killed blocks nobody, and the next run resumes it.
//! Tables on object stores are not locked (no such lock there).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};

use super::{Error, Result};
use crate::delta::error::Doing as _;
use crate::plan::Plan;

/// Held for the run's lifetime; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Takes the pipeline's lock on its warehouse, or says who holds it.
pub fn acquire(plan: &Plan) -> Result<Option<RunLock>> {
    let Some(url) = super::control_url(plan)? else {
        return Ok(None);
    };
    let Ok(dir) = url.to_file_path() else {
        return Ok(None);
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
    Ok(Some(RunLock { _file: file }))
}
