//! One run of a pipeline at a time on an object-store warehouse, across
//! machines: a lease object `_sqlplan/<pipeline>.lease` beside the run's first
//! finish table (as the local lock file is), taken with a conditional write.
//!
//! - **Taking it:** a put with `If-None-Match: *` (the Delta commits on S3 use the
//!   same). If the object exists and its expiry has not passed, the run refuses
//!   at once, naming the holder (host, process, since when).
//! - **Holding it:** the holder renews the expiry every third of the lease's
//!   length with a put `If-Match` its own last version, so a renewal never
//!   overwrites another run's lease.
//! - **Taking over:** a lease whose expiry has passed (its holder was killed,
//!   or stopped renewing) is taken with a put `If-Match` the version read: of
//!   two runs taking over at once, one wins and the other refuses.
//! - **Losing it:** a renewal that finds another version (a run took over
//!   after this one stalled for longer than the lease) marks the lease lost;
//!   the run stops before its next stage and before its finish commit.
//! - **Ending:** the holder deletes the object when the run ends; a killed run's
//!   lease expires on its own.
//!
//! The expiry is written in the holder's clock and read in the reader's: a
//! clock ahead by more than the lease's length would take a live lease over.
//! Sixty seconds (`SQLPLAN_LEASE_SECONDS` sets it) leaves room for ordinary
//! skew and for a store's slow answer while renewing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::logstore::object_store::{
    ObjectStoreExt as _, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use deltalake::{ObjectStore, Path};

use super::{Error, Result};
use crate::delta::error::Doing as _;

/// What the lease object holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Holder {
    host: String,
    pid: u32,
    since: DateTime<Utc>,
    expires: DateTime<Utc>,
    /// This holding's own mark: a put whose answer the store lost is known as
    /// ours when the object read back carries it.
    #[serde(default)]
    token: String,
}

impl Holder {
    fn describe(&self) -> String {
        format!(
            "process {} on {} since {}, lease until {}",
            self.pid,
            self.host,
            self.since.format("%Y-%m-%dT%H:%M:%SZ"),
            self.expires.format("%Y-%m-%dT%H:%M:%SZ")
        )
    }
}

/// What ends another run's hold, as a refused run is told.
const AFTER: &str =
    "a run that was killed holds its lease until the lease expires; the next run then resumes it";

/// How long a lease lasts without renewal.
fn length() -> chrono::Duration {
    let seconds = std::env::var("SQLPLAN_LEASE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &i64| *s > 0)
        .unwrap_or(60);
    chrono::Duration::seconds(seconds)
}

/// A run's lease, renewed while it is held.
#[derive(Debug)]
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    path: Path,
    lost: Arc<AtomicBool>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Whether another run took the lease over (this run stalled past it).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The flag a taking over sets, for the run to check before each stage.
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }

    /// Stops renewing and deletes the lease object (if still ours).
    pub async fn release(self) {
        self.renewal.abort();
        if !self.lost() {
            let _ = self.store.delete(&self.path).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

/// Takes the lease at `path` in `store`, or says who holds it.
pub async fn acquire(store: Arc<dyn ObjectStore>, path: Path, pipeline: &str) -> Result<Lease> {
    acquire_for(store, path, pipeline, length()).await
}

/// `acquire`, for a lease of `length`.
async fn acquire_for(
    store: Arc<dyn ObjectStore>,
    path: Path,
    pipeline: &str,
    length: chrono::Duration,
) -> Result<Lease> {
    let since = Utc::now();
    let token = uuid::Uuid::new_v4().to_string();
    let holder = |expires| Holder {
        host: super::host(),
        pid: std::process::id(),
        since,
        expires,
        token: token.clone(),
    };
    // A lease that changes between reading and taking it over is read again.
    for _ in 0..5 {
        let mine = holder(Utc::now() + length);
        let created = put(&store, &path, &mine, PutMode::Create).await?;
        let version = match created {
            Some(version) => version,
            None => {
                // Released between the two requests: try to create it again.
                let Some((theirs, version)) = read(&store, &path).await? else {
                    continue;
                };
                if theirs.as_ref().is_some_and(|h| h.token == mine.token) {
                    // Our put happened; its answer was lost and the retry refused.
                    version
                } else if let Some(theirs) = theirs.filter(|h| h.expires > Utc::now()) {
                    return Err(Error::Busy {
                        pipeline: pipeline.to_string(),
                        holder: theirs.describe(),
                        after: AFTER,
                    });
                } else {
                    match put(&store, &path, &mine, PutMode::Update(version)).await? {
                        Some(version) => version,
                        None => continue,
                    }
                }
            }
        };
        let lost = Arc::new(AtomicBool::new(false));
        let renewal = tokio::spawn(renew(
            store.clone(),
            path.clone(),
            holder(mine.expires),
            version,
            length,
            lost.clone(),
        ));
        return Ok(Lease {
            store,
            path,
            lost,
            renewal,
        });
    }
    Err(Error::Busy {
        pipeline: pipeline.to_string(),
        holder: "other runs keep taking its lease over".into(),
        after: AFTER,
    })
}

/// The process (`pid@host`, as the ledger names it) whose lease at `path` is
/// live, if any: how `sqlplan runs` tells a running run on any host from an
/// interrupted one.
pub async fn live_holder(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Option<String>> {
    let Some((holder, _)) = read(store, path).await? else {
        return Ok(None);
    };
    Ok(holder
        .filter(|h| h.expires > Utc::now())
        .map(|h| format!("{}@{}", h.pid, h.host)))
}

/// Writes `holder` at `path` if `mode`'s condition holds: the new version, or
/// None when the condition failed (the object exists, or changed).
async fn put(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    holder: &Holder,
    mode: PutMode,
) -> Result<Option<UpdateVersion>> {
    use deltalake::logstore::object_store::Error as StoreError;
    let body = serde_json::to_vec(holder).doing(|| format!("writing {path}"))?;
    let options = PutOptions {
        mode,
        ..Default::default()
    };
    match store.put_opts(path, PutPayload::from(body), options).await {
        Ok(r) => Ok(Some(UpdateVersion {
            e_tag: r.e_tag,
            version: r.version,
        })),
        Err(StoreError::AlreadyExists { .. } | StoreError::Precondition { .. }) => Ok(None),
        Err(e) => Err(crate::delta::Error::doing(format!("taking the run lease {path}"), e).into()),
    }
}

/// The lease object's holder (None if unreadable: a lease half-written by an
/// old version, taken over as expired) and its version; None if there is no
/// lease object.
async fn read(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<Option<(Option<Holder>, UpdateVersion)>> {
    use deltalake::logstore::object_store::Error as StoreError;
    let got = match store.get(path).await {
        Err(StoreError::NotFound { .. }) => return Ok(None),
        got => got.doing(|| format!("reading the run lease {path}"))?,
    };
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got
        .bytes()
        .await
        .doing(|| format!("reading the run lease {path}"))?;
    Ok(Some((serde_json::from_slice(&bytes).ok(), version)))
}

/// Renews the lease every third of its length until aborted; a renewal that
/// finds another version marks it lost and stops.
async fn renew(
    store: Arc<dyn ObjectStore>,
    path: Path,
    mut holder: Holder,
    mut version: UpdateVersion,
    length: chrono::Duration,
    lost: Arc<AtomicBool>,
) {
    let every = (length / 3)
        .to_std()
        .unwrap_or(std::time::Duration::from_secs(20));
    loop {
        tokio::time::sleep(every).await;
        holder.expires = Utc::now() + length;
        match put(&store, &path, &holder, PutMode::Update(version.clone())).await {
            Ok(Some(next)) => version = next,
            Ok(None) => match read(&store, &path).await {
                // Our renewal happened; its answer was lost and the retry refused.
                Ok(Some((Some(now), next))) if now.token == holder.token => version = next,
                Err(e) => eprintln!("sqlplan: reading the run lease {path} failed: {e}"),
                _ => {
                    lost.store(true, Ordering::SeqCst);
                    eprintln!("sqlplan: the run lease {path} was taken over by another run; this run stops before its next stage");
                    return;
                }
            },
            // A store that fails now may answer the next renewal; the lease
            // holds until its expiry.
            Err(e) => eprintln!("sqlplan: renewing the run lease {path} failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::logstore::object_store::memory::InMemory;

    /// A second run is refused while the lease lives, names the holder, and
    /// takes the lease once it is released.
    #[tokio::test]
    async fn a_live_lease_refuses_a_second_run_until_it_is_released() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("_sqlplan/p.lease");
        let first = acquire(store.clone(), path.clone(), "p").await.unwrap();
        let refused = acquire(store.clone(), path.clone(), "p").await.unwrap_err();
        let message = refused.to_string();
        assert!(
            message.contains(&format!("process {}", std::process::id())),
            "{message}"
        );
        first.release().await;
        let second = acquire(store.clone(), path.clone(), "p").await.unwrap();
        assert!(!second.lost());
    }

    /// A lease past its expiry (its holder was killed) is taken over; the old
    /// holder's next renewal finds another version and marks its lease lost.
    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_the_old_holders_renewal_is_refused() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("_sqlplan/p.lease");
        let stalled = Holder {
            host: "elsewhere".into(),
            pid: 1,
            since: Utc::now() - chrono::Duration::seconds(300),
            expires: Utc::now() - chrono::Duration::seconds(1),
            token: "stalled".into(),
        };
        let version = put(&store, &path, &stalled, PutMode::Create)
            .await
            .unwrap()
            .unwrap();
        let taker = acquire(store.clone(), path.clone(), "p").await.unwrap();
        let (now, _) = read(&store, &path).await.unwrap().unwrap();
        assert_eq!(now.unwrap().pid, std::process::id());
        // The stalled holder's renewal, conditional on its own version.
        let renewed = put(&store, &path, &stalled, PutMode::Update(version))
            .await
            .unwrap();
        assert!(
            renewed.is_none(),
            "a renewal never overwrites another run's lease"
        );
        assert!(!taker.lost());
    }

    /// A held lease is renewed past its length; when another run took it over
    /// meanwhile, the holder's next renewal marks it lost.
    #[tokio::test]
    async fn a_held_lease_is_renewed_and_a_taken_over_one_is_marked_lost() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("_sqlplan/p.lease");
        let short = chrono::Duration::milliseconds(1500);
        let held = acquire_for(store.clone(), path.clone(), "p", short)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
        let refused = acquire_for(store.clone(), path.clone(), "p", short).await;
        assert!(refused.is_err(), "renewed past its first expiry");
        assert!(!held.lost());
        // Another run takes it over (as after this one stalled).
        let other = Holder {
            host: "elsewhere".into(),
            pid: 2,
            since: Utc::now(),
            expires: Utc::now() + chrono::Duration::seconds(60),
            token: "other".into(),
        };
        store
            .put(&path, serde_json::to_vec(&other).unwrap().into())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(held.lost(), "the next renewal found another version");
        held.release().await;
        let (still, _) = read(&store, &path).await.unwrap().unwrap();
        assert_eq!(still.unwrap().pid, 2, "a lost lease is not deleted");
    }

    /// A store whose next conditional update happens but answers as its retry
    /// would: refused, the version having changed (the answer was lost).
    #[derive(Debug)]
    struct LosesAnUpdateAnswer {
        inner: InMemory,
        armed: AtomicBool,
    }

    impl std::fmt::Display for LosesAnUpdateAnswer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "LosesAnUpdateAnswer")
        }
    }

    use deltalake::logstore::object_store::{
        CopyOptions, Error as StoreError, GetOptions, GetResult, ListResult, MultipartUpload,
        ObjectMeta, PutMultipartOptions, PutResult, Result as StoreResult,
    };
    use futures::stream::BoxStream;

    #[async_trait::async_trait]
    impl ObjectStore for LosesAnUpdateAnswer {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> StoreResult<PutResult> {
            let update = matches!(opts.mode, PutMode::Update(_));
            let put = self.inner.put_opts(location, payload, opts).await?;
            if update && self.armed.swap(false, Ordering::SeqCst) {
                return Err(StoreError::Precondition {
                    path: location.to_string(),
                    source: "the version changed (our own lost write)".into(),
                });
            }
            Ok(put)
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> StoreResult<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(&self, location: &Path, options: GetOptions) -> StoreResult<GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, StoreResult<Path>>,
        ) -> BoxStream<'static, StoreResult<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, StoreResult<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> StoreResult<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> StoreResult<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// A renewal that happened but whose answer was lost (its retry refused) is
    /// known by the holder's token: the lease is kept, not marked lost.
    #[tokio::test]
    async fn a_renewal_whose_answer_was_lost_keeps_the_lease() {
        let store = Arc::new(LosesAnUpdateAnswer {
            inner: InMemory::new(),
            armed: AtomicBool::new(true),
        });
        let path = Path::from("_sqlplan/p.lease");
        let short = chrono::Duration::milliseconds(1500);
        let held = acquire_for(store.clone(), path.clone(), "p", short)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
        assert!(!store.armed.load(Ordering::SeqCst), "a renewal was made");
        assert!(!held.lost(), "its own renewal did not lose the lease");
        let other = acquire_for(store.clone(), path.clone(), "p", short).await;
        assert!(other.is_err(), "still renewed, so still held");
        held.release().await;
    }
}
