//! Reading a table's existing deletion vectors with the Delta kernel's reader: the
//! positions a file's vector deletes, and the keep masks of candidate files.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::kernel::DeletionVectorDescriptor;
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::{DeltaTable, ObjectStore, Path};

use super::parquet_row_count;
use crate::delta::error::{Doing as _, Error, Result};

/// The rows a file's existing vector deletes, as the vector holds them (a Roaring
/// bitmap: a few bits a row at most, where a byte per row would not fit a large
/// table in memory), with the file's physical row count.
#[derive(Clone, Debug)]
pub struct Deleted {
    pub rows: usize,
    positions: roaring::RoaringTreemap,
}

impl Deleted {
    /// Whether the row at `position` is still live.
    pub fn is_live(&self, position: u64) -> bool {
        !self.positions.contains(position)
    }

    /// The deleted positions, in order.
    pub fn positions(&self) -> impl Iterator<Item = u64> + '_ {
        self.positions.iter()
    }

    /// How many rows the vector deletes.
    pub fn count(&self) -> u64 {
        self.positions.len()
    }
}

/// The deleted rows of those `files` that have a deletion
/// vector, by their path (decoded, as `LogicalFileView::path`). Read with the
/// kernel's reader, as the scan reads them (`VectorReader`); delta-rs's
/// `DeltaScan::deletion_vectors` selects files by URL-joining the paths it is given,
/// which a decoded path with an escaped partition folder (`ts=x%20y`) does not match.
pub async fn keep_masks(
    table: &DeltaTable,
    files: &[&deltalake::kernel::LogicalFileView],
) -> Result<HashMap<String, Deleted>> {
    let store = table.object_store();
    let mut reader = VectorReader::for_table(table);
    let mut masks = HashMap::new();
    for f in files {
        let Some(descriptor) = f.deletion_vector_descriptor() else {
            continue;
        };
        let path = f.path().to_string();
        let size = f.size().max(0) as u64;
        let keep = deleted_rows(
            &mut reader,
            &store,
            &path,
            size,
            f.num_records(),
            &descriptor,
        )
        .await?;
        masks.insert(path, keep);
    }
    Ok(masks)
}

/// The rows one data file's vector deletes (`path` relative to the table root,
/// which `store` serves), with its physical rows (read from its footer when the log
/// does not say).
pub async fn deleted_rows(
    reader: &mut VectorReader,
    store: &Arc<dyn ObjectStore>,
    path: &str,
    size: u64,
    rows: Option<usize>,
    descriptor: &DeletionVectorDescriptor,
) -> Result<Deleted> {
    let rows = match rows {
        Some(rows) => rows,
        None => {
            let location = crate::delta::partition::file_path(&Path::default(), path)?;
            parquet_row_count(store, &location, size).await?
        }
    };
    let positions = reader.bitmap(descriptor).await?;
    if let Some(p) = positions.max().filter(|&p| p >= rows as u64) {
        return Err(Error::table(format!(
            "the deletion vector of {path} deletes position {p}, past its {rows} rows"
        )));
    }
    Ok(Deleted { rows, positions })
}

/// Reads the deletion vectors of one table's files with the kernel's reader
/// (version, size, magic, CRC checks). That reader is synchronous, so each vector
/// file is fetched first, once: one commit's vectors share one file.
pub struct VectorReader {
    /// The store at the root of the table's URL (vectors are found by URL).
    store: Arc<dyn ObjectStore>,
    /// The table root, with a trailing slash: what vector paths are relative to.
    root: url::Url,
    fetched: HashMap<url::Url, bytes::Bytes>,
}

impl VectorReader {
    /// `store` serves the root of `table_url`'s scheme and host.
    pub fn new(store: Arc<dyn ObjectStore>, table_url: &url::Url) -> Self {
        let mut root = table_url.clone();
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        VectorReader {
            store,
            root,
            fetched: HashMap::new(),
        }
    }

    pub fn for_table(table: &DeltaTable) -> Self {
        Self::new(table.log_store().root_object_store(None), table.table_url())
    }

    /// The positions a data file's vector deletes, in order.
    pub async fn deleted(&mut self, descriptor: &DeletionVectorDescriptor) -> Result<Vec<u64>> {
        Ok(self.bitmap(descriptor).await?.iter().collect())
    }

    /// The positions a data file's vector deletes, as the vector's bitmap.
    pub async fn bitmap(
        &mut self,
        descriptor: &DeletionVectorDescriptor,
    ) -> Result<roaring::RoaringTreemap> {
        use buoyant_kernel::actions::deletion_vector::DeletionVectorDescriptor as Kernel;
        let kernel = Kernel::try_from(descriptor.clone()).map_err(Error::from)?;
        // The kernel's reader gets only the file this vector is in (none for an
        // inline vector), not every file fetched so far.
        let mut one = HashMap::new();
        if let Some(url) = kernel.absolute_path(&self.root).map_err(Error::from)? {
            if !self.fetched.contains_key(&url) {
                let path = Path::from_url_path(url.path()).map_err(Error::from)?;
                let bytes = self
                    .store
                    .get(&path)
                    .await
                    .doing(|| format!("deletion vector {url}"))?
                    .bytes()
                    .await
                    .doing(|| format!("deletion vector {url}"))?;
                self.fetched.insert(url.clone(), bytes);
            }
            one.insert(url.clone(), self.fetched[&url].clone());
        }
        let storage = Arc::new(Fetched(one));
        let deleted = kernel
            .read(storage, &self.root)
            .doing(|| format!("deletion vector of a file in {}", self.root))?;
        Ok(deleted)
    }
}

/// Vector files already in memory, served to the kernel's reader.
struct Fetched(HashMap<url::Url, bytes::Bytes>);

impl buoyant_kernel::StorageHandler for Fetched {
    fn list_from(
        &self,
        _: &url::Url,
    ) -> buoyant_kernel::DeltaResult<
        Box<dyn Iterator<Item = buoyant_kernel::DeltaResult<buoyant_kernel::FileMeta>>>,
    > {
        Err(buoyant_kernel::Error::generic(
            "listing is not needed to read a vector",
        ))
    }

    fn read_files(
        &self,
        files: Vec<buoyant_kernel::FileSlice>,
    ) -> buoyant_kernel::DeltaResult<
        Box<dyn Iterator<Item = buoyant_kernel::DeltaResult<bytes::Bytes>>>,
    > {
        let read: Vec<_> = files
            .into_iter()
            .map(|(url, range)| {
                let bytes = self.0.get(&url).cloned().ok_or_else(|| {
                    buoyant_kernel::Error::generic(format!("{url} was not fetched"))
                })?;
                Ok(match range {
                    Some(r) => bytes.slice(r.start as usize..r.end as usize),
                    None => bytes,
                })
            })
            .collect();
        Ok(Box::new(read.into_iter()))
    }

    fn copy_atomic(&self, _: &url::Url, _: &url::Url) -> buoyant_kernel::DeltaResult<()> {
        Err(buoyant_kernel::Error::generic("read only"))
    }

    fn put(&self, _: &url::Url, _: bytes::Bytes, _: bool) -> buoyant_kernel::DeltaResult<()> {
        Err(buoyant_kernel::Error::generic("read only"))
    }

    fn head(&self, url: &url::Url) -> buoyant_kernel::DeltaResult<buoyant_kernel::FileMeta> {
        Err(buoyant_kernel::Error::file_not_found(url.to_string()))
    }

    fn delete(&self, _: &url::Url) -> buoyant_kernel::DeltaResult<()> {
        Err(buoyant_kernel::Error::generic("read only"))
    }
}
