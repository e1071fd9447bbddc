//! Failpoints: named places in a run where the process can be made to die, as a
//! crash would (abort: no cleanup, no further writes), to prove that the next run
//! repairs whatever state a crash leaves.
//!
//! `SQLPLAN_FAILPOINT=<point>[,<point>…]`, where a point is
//! - `before:<stage>`: the stage is about to start;
//! - `commit:<stage>`: the stage's data files are written, its Delta commit is not;
//! - `after:<stage>`: the stage committed, the scheduler has not yet seen it finish;
//!
//! and `finish` is the step that ends a run (the commit carrying its state; with
//! several state tables, `after:finish:<table>` follows each one's commit).
//!
//! `<point>=pause` stops there instead of dying: the process prints
//! `failpoint <point>: paused` on standard error and goes on when a line arrives on
//! standard input — so a test can act (start a second run, commit to a table as
//! another writer) at an exact moment of a live run.
//! `commit:` points work on local tables (the only ones whose store is wrapped).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use deltalake::logstore::object_store::{
    self, path::Path, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use futures::stream::BoxStream;

/// The environment variable naming the points.
pub const ENV: &str = "SQLPLAN_FAILPOINT";

fn points() -> &'static [String] {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var(ENV)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    })
}

/// Dies (or pauses) here when `point` is armed.
pub fn hit(point: &str) {
    for armed in points() {
        match armed.strip_suffix("=pause") {
            Some(p) if p == point => {
                eprintln!("sqlplan: failpoint {point}: paused");
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
            }
            _ if armed == point => {
                eprintln!("sqlplan: failpoint `{point}`: the process stops here");
                std::process::abort();
            }
            _ => {}
        }
    }
}

/// Whether any `commit:` point is armed (tables are then opened through a store that
/// watches their log).
pub fn watches_commits() -> bool {
    points().iter().any(|p| p.starts_with("commit:"))
}

/// Which stage is writing each table now (two writers of one table never overlap).
fn writers() -> &'static Mutex<BTreeMap<String, String>> {
    static WRITERS: OnceLock<Mutex<BTreeMap<String, String>>> = OnceLock::new();
    WRITERS.get_or_init(Default::default)
}

/// Declares that `stage` is the next to commit to `table`.
pub fn writing(table: &str, stage: &str) {
    if watches_commits() {
        let mut writers = writers().lock().unwrap_or_else(|e| e.into_inner());
        writers.insert(table.to_string(), stage.to_string());
    }
}

/// An object store that hits `commit:<stage>` just before a Delta commit file of its
/// table is written, after the data files of that commit.
#[derive(Debug)]
pub struct CommitWatch {
    pub inner: Arc<dyn ObjectStore>,
    pub table: String,
}

impl CommitWatch {
    fn check(&self, location: &Path) {
        let is_commit = location.as_ref().contains("_delta_log/")
            && location.filename().is_some_and(|f| f.ends_with(".json"));
        if is_commit {
            let stage = writers()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&self.table)
                .cloned();
            if let Some(stage) = stage {
                hit(&format!("commit:{stage}"));
            }
        }
    }
}

impl std::fmt::Display for CommitWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CommitWatch({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CommitWatch {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.check(to);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        self.check(to);
        self.inner.rename_opts(from, to, options).await
    }
}
