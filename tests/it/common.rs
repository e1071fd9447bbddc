//! Helpers: temporary projects, running the CLI, snapshot settings.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A temporary project: files written relative to its root.
pub struct Project {
    pub dir: TempDir,
}

impl Project {
    pub fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sqlplan-test")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("sql")).unwrap();
        let p = Project { dir };
        for (path, text) in files {
            p.write(path, text);
        }
        p
    }

    pub fn write(&self, path: &str, text: &str) {
        let full = self.dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn warehouse(&self) -> PathBuf {
        self.dir.path().join("warehouse")
    }

    /// Runs `sqlplan ARGS` in the project root.
    pub fn sqlplan(&self, args: &[&str]) -> Output {
        sqlplan_in(self.path(), args)
    }

    /// Every path under the project, to prove a command touched nothing.
    pub fn listing(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let p = entry.unwrap().path();
                out.push(p.clone());
                if p.is_dir() {
                    walk(&p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.path(), &mut out);
        out.sort();
        out
    }
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The `sqlplan` binary the tests drive: this build's, or `SQLPLAN_BIN` (a copy,
/// for a long soak that must not see the binary rebuilt under it).
pub fn bin() -> PathBuf {
    std::env::var_os("SQLPLAN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sqlplan")))
}

pub fn sqlplan_in(dir: &Path, args: &[&str]) -> Output {
    sqlplan_with_env(dir, args, Vec::<(&str, String)>::new())
}

/// `sqlplan ARGS` in `dir` with these environment variables added.
pub fn sqlplan_with_env<K, V>(
    dir: &Path,
    args: &[&str],
    env: impl IntoIterator<Item = (K, V)>,
) -> Output
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(crate::common::bin())
        .args(args)
        .current_dir(dir)
        .envs(env)
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run sqlplan");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `sqlplan generate summary --warehouse WH OPTIONS…` from the repository root; the
/// command must succeed (its output is returned for what it printed).
pub fn generate_summary(wh: &Path, options: &[&str]) -> Output {
    let mut args = vec!["generate", "summary", "--warehouse", wh.to_str().unwrap()];
    args.extend_from_slice(options);
    let out = sqlplan_in(&repo(), &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out
}

/// The repository root (for the shipped pipelines).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Snapshot settings: snapshots live in `snapshots/`, temporary paths are masked.
pub fn settings(tmp: Option<&Path>) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(repo().join("snapshots"));
    s.set_prepend_module_to_snapshot(false);
    if let Some(tmp) = tmp {
        let real = std::fs::canonicalize(tmp).unwrap_or_else(|_| tmp.to_path_buf());
        for p in [
            real.to_string_lossy().into_owned(),
            tmp.to_string_lossy().into_owned(),
        ] {
            s.add_filter(&regex_escape(&p), "[TMP]");
        }
    }
    s
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Creates a Delta table at `path` holding `batch` (all of one schema).
pub async fn create_table(
    path: &Path,
    batch: datafusion::arrow::array::RecordBatch,
    partitions: &[&str],
) -> deltalake::DeltaTable {
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    std::fs::create_dir_all(path).unwrap();
    let kernel: deltalake::kernel::StructType = batch.schema().as_ref().try_into_kernel().unwrap();
    let table = deltalake::operations::create::CreateBuilder::new()
        .with_location(path.to_str().unwrap())
        .with_columns(kernel.fields().cloned())
        .with_partition_columns(partitions.iter().map(|s| s.to_string()))
        .await
        .unwrap();
    table
        .write(vec![batch])
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .await
        .unwrap()
}

/// Replaces the rows of the table at `path` with `batch` (a delta-rs overwrite).
pub async fn overwrite_table(path: &Path, batch: datafusion::arrow::array::RecordBatch) {
    let url = url::Url::from_directory_path(std::fs::canonicalize(path).unwrap()).unwrap();
    let table = deltalake::open_table(url).await.unwrap();
    table
        .write(vec![batch])
        .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
        .await
        .unwrap();
}

/// Reads a table back through a fresh delta-rs load (not the write path) and
/// renders `SELECT … FROM t ORDER BY …` as sorted text lines.
pub async fn read_table(path: &Path, query: &str) -> Vec<String> {
    query_tables(&[("t", path)], query).await
}

/// Runs a query over Delta tables registered under the given names (each loaded
/// afresh) and renders the result as text lines, one per row, values joined by
/// commas.
pub async fn query_tables(tables: &[(&str, &Path)], query: &str) -> Vec<String> {
    let ctx = datafusion::prelude::SessionContext::new();
    for (name, path) in tables {
        let url = url::Url::from_directory_path(std::fs::canonicalize(path).unwrap()).unwrap();
        let table = deltalake::open_table(url).await.unwrap();
        ctx.register_table(*name, table.table_provider().await.unwrap())
            .unwrap();
    }
    let batches = ctx.sql(query).await.unwrap().collect().await.unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    text.lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// Number of data files in the table's current version.
pub async fn file_count(path: &Path) -> usize {
    let url = url::Url::from_directory_path(std::fs::canonicalize(path).unwrap()).unwrap();
    let table = deltalake::open_table(url).await.unwrap();
    table.snapshot().unwrap().log_data().num_files()
}

/// A stage's entry in a run report (JSON).
pub fn stage<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage `{name}` in the report"))
}

/// Whether python3 can run `code` (an import of the `deltalake` package). Where it
/// cannot, a test skips, unless SQLPLAN_REQUIRE_PYTHON_DELTALAKE is set (as in CI).
pub fn python_deltalake(code: &str) -> bool {
    let probe = std::process::Command::new("python3")
        .args(["-c", code])
        .output();
    if probe.as_ref().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var_os("SQLPLAN_REQUIRE_PYTHON_DELTALAKE").is_none(),
        "python3 with the deltalake package is required here (pip install deltalake pyarrow)"
    );
    eprintln!("skipped: python3 -c '{code}' failed");
    false
}

/// Rows of the small `(id BIGINT, v STRING, ds STRING)` tables the run tests use.
pub fn id_v_ds(ids: &[i64], values: &[&str], ds: &[&str]) -> datafusion::arrow::array::RecordBatch {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
        Field::new("ds", DataType::Utf8, true),
    ]));
    datafusion::arrow::array::RecordBatch::try_new(
        schema,
        vec![
            std::sync::Arc::new(Int64Array::from(ids.to_vec())),
            std::sync::Arc::new(StringArray::from(values.to_vec())),
            std::sync::Arc::new(StringArray::from(ds.to_vec())),
        ],
    )
    .unwrap()
}

/// One `id BIGINT` column.
pub fn ids(ids: &[i64]) -> datafusion::arrow::array::RecordBatch {
    use datafusion::arrow::array::{ArrayRef, Int64Array};
    datafusion::arrow::array::RecordBatch::try_from_iter(vec![(
        "id",
        std::sync::Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef,
    )])
    .unwrap()
}

/// `id BIGINT` and one text column named `name`.
pub fn id_text(ids: &[i64], name: &str, texts: &[&str]) -> datafusion::arrow::array::RecordBatch {
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    datafusion::arrow::array::RecordBatch::try_from_iter(vec![
        (
            "id",
            std::sync::Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef,
        ),
        (
            name,
            std::sync::Arc::new(StringArray::from(texts.to_vec())) as ArrayRef,
        ),
    ])
    .unwrap()
}

/// A port nothing listens on now (for a server a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port` of 127.0.0.1 (at most a minute).
pub fn wait_for(port: u16, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{what} did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The one data file of the table at `table` in partition folder `partition`.
pub async fn only_file(table: &std::path::Path, partition: &str) -> std::path::PathBuf {
    let url = url::Url::from_directory_path(std::fs::canonicalize(table).unwrap()).unwrap();
    let t = deltalake::open_table(url).await.unwrap();
    let files: Vec<String> = t
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| f.path().to_string())
        .filter(|p| p.starts_with(partition))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    table.join(&files[0])
}

/// A Parquet file's footer.
pub fn parquet_metadata(
    path: &std::path::Path,
) -> deltalake::parquet::file::metadata::ParquetMetaData {
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    reader.metadata().clone()
}
