//! Object stores: local folders and `s3://` buckets, found from a URL alone.
//!
//! Credentials, region and endpoint come from the environment as the AWS tools read
//! them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP` for a plain-HTTP endpoint…), through
//! delta-rs's S3 support. Commits on S3 use conditional put (`If-None-Match`), which
//! makes two writers safe without a lock table; delta-rs falls back to a DynamoDB
//! lock only when `AWS_S3_LOCKING_PROVIDER=dynamodb` is set.
//!
//! The same registry serves the sqlplan process and the cluster's executors, so a
//! scan planned in one place reads the same bytes in the other.

use std::sync::{Arc, Once};

use dashmap::DashMap;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use deltalake::logstore::{object_store_factories, StorageConfig};
use deltalake::ObjectStore;
use url::Url;

use crate::delta::error::{Doing as _, Error, Result as DeltaResult};

/// How every request to an object store is retried, the same for each table,
/// the ledger, the lease and the cluster's executors (object_store's retry layer,
/// configured through delta-rs's storage options):
///
/// - **Retried:** answers 5xx (`503 SlowDown`, `500 InternalError`), 429 and 408,
///   and `200` answers whose body says `SlowDown` or `InternalError`; connections
///   refused, reset or closed before an answer arrived, for every request (a write
///   cut before its answer is sent again); timeouts, for reads and plain writes
///   (not for a conditional commit: the commit fails, and the run with it).
///   A read whose body breaks off is resumed from where it broke, as long as
///   the object's ETag has not changed.
/// - **Not retried:** other 4xx answers (`403`, `404`, `412`), and a write's
///   answer body that cannot be read.
/// - **How often:** up to `SQLPLAN_STORE_RETRIES` times (10), within
///   `SQLPLAN_STORE_RETRY_SECONDS` (180) of the first attempt, waiting 100 ms
///   doubled on each retry up to 15 s, with jitter: a throttled store sees
///   sqlplan back off within a second and hold off for up to 15 s after a few
///   refusals. A request still failing after that fails its stage; the run fails
///   and the next run resumes it.
/// - **Timeouts:** object_store's own: 5 s to connect, 30 s for a request.
pub fn options() -> std::collections::HashMap<String, String> {
    let setting = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    [
        (
            "max_retries",
            setting("SQLPLAN_STORE_RETRIES", 10).to_string(),
        ),
        (
            "retry_timeout",
            format!("{}s", setting("SQLPLAN_STORE_RETRY_SECONDS", 180)),
        ),
        ("backoff_config.init_backoff", "100ms".to_string()),
        ("backoff_config.max_backoff", "15s".to_string()),
        ("backoff_config.base", "2".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Makes `s3://` locations known to delta-rs (once per process).
pub fn register_schemes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| deltalake::aws::register_handlers(None));
}

/// The store serving `url`'s scheme and authority (a bucket), and the path of
/// `url` within it.
pub fn store_for(url: &Url) -> DeltaResult<(Arc<dyn ObjectStore>, deltalake::Path)> {
    register_schemes();
    let scheme = Url::parse(&format!("{}://", url.scheme())).map_err(Error::from)?;
    let factory = object_store_factories()
        .get(&scheme)
        .map(|f| f.value().clone())
        .ok_or_else(|| {
            Error::table(format!(
                "no object store for `{}://` locations",
                url.scheme()
            ))
        })?;
    let config = StorageConfig::parse_options(options()).map_err(Error::from)?;
    factory
        .parse_url_opts(url, &config)
        .doing(|| format!("{url}"))
}

/// `scheme://authority/` of a URL: the key a store is registered under.
pub fn root(url: &Url) -> Url {
    let mut root = url.clone();
    root.set_path("/");
    root.set_query(None);
    root.set_fragment(None);
    root
}

/// The store serving the root of `url`'s scheme and host, from a task's runtime
/// (an executor's registry builds it from the URL alone).
pub fn task_store(
    url: &Url,
    context: &datafusion::execution::TaskContext,
) -> Result<Arc<dyn ObjectStore>> {
    let store_url = datafusion::execution::object_store::ObjectStoreUrl::parse(root(url).as_str())?;
    context.runtime_env().object_store(&store_url)
}

/// An object store registry that builds a store the first time a location asks
/// for one (DataFusion's default knows only local files).
#[derive(Debug, Default)]
pub struct Stores {
    stores: DashMap<String, Arc<dyn ObjectStore>>,
}

impl Stores {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

impl ObjectStoreRegistry for Stores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.stores.insert(root(url).to_string(), store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.stores
            .remove(&root(url).to_string())
            .map(|(_, s)| s)
            .ok_or_else(|| DataFusionError::Execution(format!("no object store for {url}")))
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let key = root(url);
        if let Some(store) = self.stores.get(key.as_str()) {
            return Ok(store.clone());
        }
        let store = match url.scheme() {
            "file" => Arc::new(deltalake::logstore::object_store::local::LocalFileSystem::new())
                as Arc<dyn ObjectStore>,
            _ => {
                store_for(&key)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                    .0
            }
        };
        Ok(self
            .stores
            .entry(key.to_string())
            .or_insert(store)
            .value()
            .clone())
    }
}
