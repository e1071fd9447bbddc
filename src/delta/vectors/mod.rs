//! Deletion vectors (Delta protocol, `deletionVectors` table feature): turning the
//! feature on (`feature.rs`), the vectors files already have (`read.rs`), the
//! physical rows of a data file, and writing one commit's new vectors into one
//! vector file.
//!
//! The vector format (version byte, size, magic, portable RoaringTreemap, CRC-32) is
//! written by the Delta kernel's `StreamingDeletionVectorWriter` and read by its
//! reader. Written here: the vector file's name and its descriptor (`u` storage:
//! the z85 form of a UUID), and each Add's statistics with a vector.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use buoyant_kernel::actions::deletion_vector_writer::{
    KernelDeletionVector, StreamingDeletionVectorWriter,
};
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use deltalake::kernel::{Add, DeletionVectorDescriptor, StorageType};
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection};
#[allow(deprecated)] // its replacement, SpawnedReader, is for a separate I/O runtime
use deltalake::parquet::arrow::async_reader::ParquetObjectReader;
use deltalake::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask, RowNumber};
use deltalake::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use deltalake::parquet::file::page_index::column_index::ColumnIndexMetaData;
use deltalake::parquet::schema::types::SchemaDescriptor;
use deltalake::{ObjectStore, Path};
use futures::TryStreamExt;

use crate::delta::error::{Doing as _, Error, Result};

mod feature;
mod read;

pub use feature::{enable, enabled};
pub use read::{deleted_rows, keep_masks, Deleted, VectorReader};

/// The column with each row's position in its data file.
pub const ROW_NUMBER: &str = "__sqlplan_row_number";

/// Physical rows of these files (their `numRecords`) and how many of them their
/// deletion vectors delete.
pub fn row_counts<'a>(
    files: impl IntoIterator<Item = &'a deltalake::kernel::LogicalFileView>,
) -> (usize, i64) {
    files.into_iter().fold((0, 0), |(rows, deleted), f| {
        (
            rows + f.num_records().unwrap_or(0),
            deleted + f.deletion_vector_descriptor().map_or(0, |d| d.cardinality),
        )
    })
}

/// One data file of a table, as far as reading its rows goes.
#[derive(Clone, Debug)]
pub struct DataFile {
    /// Relative to the table root, as the log has it.
    pub path: String,
    pub size: u64,
}

/// Which rows of a data file `read_rows` reads.
pub enum Rows<'a> {
    /// Every row.
    All,
    /// The rows in these ranges.
    In(Vec<Range<usize>>),
    /// The rows of the pages whose statistics of the integer column `column` may
    /// hold one of `keys` (ascending); every row where the file has no page index
    /// for it. With the table sorted by key and small pages, a few keys read a
    /// few pages.
    KeyPages { column: &'a str, keys: &'a [i64] },
}

/// Rows of a data file: the `columns` (by name; absent ones are skipped) and
/// `ROW_NUMBER`, for the rows `rows` selects. Returns the batches and the file's
/// physical row count.
pub async fn read_rows(
    store: Arc<dyn ObjectStore>,
    file: &DataFile,
    columns: &[String],
    rows: Rows<'_>,
) -> Result<(Vec<RecordBatch>, usize)> {
    let doing = || format!("reading {}", file.path);
    let location = super::partition::file_path(&Path::default(), &file.path)?;
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(store, location).with_file_size(file.size);
    let row_number =
        Arc::new(Field::new(ROW_NUMBER, DataType::Int64, false).with_extension_type(RowNumber));
    // Page indexes let a selection of rows skip whole pages; a full read needs none.
    let pages = match rows {
        Rows::All => PageIndexPolicy::Skip,
        _ => PageIndexPolicy::Optional,
    };
    let options = ArrowReaderOptions::new()
        .with_page_index_policy(pages)
        .with_virtual_columns(vec![row_number])
        .doing(doing)?;
    let builder = ParquetRecordBatchStreamBuilder::new_with_options(reader, options)
        .await
        .doing(doing)?;
    let total = builder.metadata().file_metadata().num_rows() as usize;
    let roots: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| columns.iter().any(|c| c == f.name()))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let ranges = match rows {
        Rows::All => None,
        Rows::In(ranges) => Some(ranges),
        Rows::KeyPages { column, keys } => {
            key_pages(builder.metadata(), builder.parquet_schema(), column, keys)
        }
    };
    let mut builder = builder.with_projection(mask).with_batch_size(8192);
    if let Some(ranges) = ranges {
        builder = builder.with_row_selection(RowSelection::from_consecutive_ranges(
            ranges.into_iter(),
            total,
        ));
    }
    let batches = builder
        .build()
        .doing(doing)?
        .try_collect()
        .await
        .doing(doing)?;
    Ok((batches, total))
}

/// The row ranges of the pages whose statistics of top-level integer column
/// `column` may hold one of `keys` (ascending): a page without statistics is
/// read, a page of NULLs is not. None (read everything) without a page index for
/// the column, or for a type whose statistics are not signed integers.
fn key_pages(
    metadata: &ParquetMetaData,
    schema: &SchemaDescriptor,
    column: &str,
    keys: &[i64],
) -> Option<Vec<Range<usize>>> {
    let leaf = schema
        .columns()
        .iter()
        .position(|c| c.path().parts() == [column.to_string()])?;
    let (statistics, offsets) = (metadata.column_index()?, metadata.offset_index()?);
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut base = 0usize;
    for (g, group) in metadata.row_groups().iter().enumerate() {
        let rows = group.num_rows() as usize;
        let locations = offsets.get(g)?.get(leaf)?.page_locations();
        let index = statistics.get(g)?.get(leaf)?;
        for (p, page) in locations.iter().enumerate() {
            let bounds = match index {
                ColumnIndexMetaData::INT64(i) => (i.min_value(p).copied(), i.max_value(p).copied()),
                ColumnIndexMetaData::INT32(i) => (
                    i.min_value(p).map(|v| i64::from(*v)),
                    i.max_value(p).map(|v| i64::from(*v)),
                ),
                _ => return None,
            };
            let hit = match bounds {
                (Some(lo), Some(hi)) => {
                    let i = keys.partition_point(|k| *k < lo);
                    i < keys.len() && keys[i] <= hi
                }
                _ => !index.is_null_page(p),
            };
            if !hit {
                continue;
            }
            let start = base + page.first_row_index as usize;
            let end = base
                + locations
                    .get(p + 1)
                    .map_or(rows, |next| next.first_row_index as usize);
            match out.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => out.push(start..end),
            }
        }
        base += rows;
    }
    Some(out)
}

/// The physical row count of a data file, from its Parquet footer.
pub async fn parquet_row_count(
    store: &Arc<dyn ObjectStore>,
    location: &Path,
    size: u64,
) -> Result<usize> {
    #[allow(deprecated)] // its replacement, SpawnedReader, is for a separate I/O runtime
    let mut reader = ParquetObjectReader::new(store.clone(), location.clone()).with_file_size(size);
    let metadata =
        deltalake::parquet::arrow::async_reader::AsyncFileReader::get_metadata(&mut reader, None)
            .await
            .doing(|| format!("reading {location}"))?;
    Ok(metadata.file_metadata().num_rows() as usize)
}

/// Sorted positions as runs of consecutive rows.
pub fn ranges(sorted: impl IntoIterator<Item = u64>) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for p in sorted {
        let p = p as usize;
        match out.last_mut() {
            Some(r) if r.end == p => r.end = p + 1,
            _ => out.push(p..p + 1),
        }
    }
    out
}

/// Each data file's vector descriptor, by its path.
pub type Descriptors = Vec<(String, DeletionVectorDescriptor)>;

/// The vectors of one commit, written into one file beside the data.
#[derive(Default)]
pub struct VectorFile {
    vectors: Vec<(String, KernelDeletionVector)>,
}

impl VectorFile {
    /// Adds the vector of data file `path`: these deleted positions.
    pub fn add(&mut self, path: &str, deleted: impl IntoIterator<Item = u64>) {
        let mut dv = KernelDeletionVector::new();
        dv.add_deleted_row_indexes(deleted);
        self.vectors.push((path.to_string(), dv));
    }

    /// Whether no vector was added.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// The file's bytes (the kernel's format) and each data file's descriptor.
    fn encode(self, uuid: uuid::Uuid) -> Result<(Vec<u8>, Descriptors)> {
        let mut bytes = Vec::new();
        let mut descriptors = Vec::with_capacity(self.vectors.len());
        let mut writer = StreamingDeletionVectorWriter::new(&mut bytes);
        for (path, dv) in self.vectors {
            let written = writer
                .write_deletion_vector(dv)
                .doing(|| "writing a deletion vector".to_string())?;
            descriptors.push((
                path,
                DeletionVectorDescriptor {
                    storage_type: StorageType::UuidRelativePath,
                    path_or_inline_dv: z85::encode(uuid.as_bytes()),
                    offset: Some(written.offset),
                    size_in_bytes: written.size_in_bytes,
                    cardinality: written.cardinality,
                },
            ));
        }
        writer
            .finalize()
            .doing(|| "writing a deletion vector".to_string())?;
        Ok((bytes, descriptors))
    }

    /// The file's bytes, for a file at `url` (outside the table: a cluster's
    /// scratch folder), and each data file's descriptor naming it by that URL
    /// (`p` storage). Such vectors are never committed: they tell executors which
    /// rows of a file to leave out of its rewrite.
    pub fn encode_at(self, url: &url::Url) -> Result<(Vec<u8>, Descriptors)> {
        let (bytes, mut descriptors) = self.encode(uuid::Uuid::new_v4())?;
        for (_, d) in &mut descriptors {
            d.storage_type = StorageType::AbsolutePath;
            d.path_or_inline_dv = url.to_string();
        }
        Ok((bytes, descriptors))
    }

    /// Writes the file into the table root (if any vector was added); returns each
    /// data file's descriptor and the bytes written.
    pub async fn write(
        self,
        store: &dyn ObjectStore,
    ) -> Result<(HashMap<String, DeletionVectorDescriptor>, u64)> {
        if self.vectors.is_empty() {
            return Ok((HashMap::new(), 0));
        }
        let uuid = uuid::Uuid::new_v4();
        let (bytes, descriptors) = self.encode(uuid)?;
        let name = format!("deletion_vector_{uuid}.bin");
        let size = bytes.len() as u64;
        store
            .put(&Path::from(name.as_str()), bytes.into())
            .await
            .doing(|| format!("writing {name}"))?;
        Ok((descriptors.into_iter().collect(), size))
    }
}

/// The Add of a data file that now has `vector` (`rows`: its physical row count).
/// Its statistics say `numRecords` (the protocol requires it with a vector, and
/// positions count from it) and `tightBounds: false`: the minimum, maximum and null
/// counts were taken over every row, and some of those rows are now deleted, so
/// they are bounds, no longer exact (Delta's reference writer refuses a vector on
/// an Add that claims tight bounds).
pub fn with_vector(mut add: Add, vector: DeletionVectorDescriptor, rows: usize) -> Result<Add> {
    let mut stats = match add.stats.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(s) => serde_json::from_str::<serde_json::Value>(s)
            .doing(|| format!("statistics of {}", add.path))?,
        None => serde_json::json!({}),
    };
    let object = stats
        .as_object_mut()
        .ok_or_else(|| Error::table(format!("statistics of {} are not an object", add.path)))?;
    object.insert("numRecords".into(), rows.into());
    object.insert("tightBounds".into(), false.into());
    add.stats = Some(stats.to_string());
    add.deletion_vector = Some(vector);
    add.data_change = true;
    Ok(add)
}

/// Column `name` of a batch read from a data file, as `data_type`: read, or the
/// file's partition value.
pub fn column_of(
    batch: &RecordBatch,
    name: &str,
    data_type: &DataType,
    partition: &HashMap<String, Option<String>>,
) -> Result<ArrayRef> {
    if let Some(value) = partition.get(name) {
        return super::partition::value(value.as_deref(), data_type)?
            .to_array_of_size(batch.num_rows())
            .map_err(Error::from);
    }
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| Error::table(format!("column `{name}` is not in the data file")))?;
    cast(array, data_type).map_err(Error::from)
}

/// A batch as the writer takes it: its columns in the writer's order and types,
/// partition columns filled from the file's values when absent.
pub fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
    partition: &HashMap<String, Option<String>>,
) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            if batch.column_by_name(f.name()).is_some() || !partition.contains_key(f.name()) {
                column_of(batch, f.name(), f.data_type(), &HashMap::new())
            } else {
                column_of(batch, f.name(), f.data_type(), partition)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(Error::from)
}

/// Rows of a data file (those in `kept`, all when None), every column, the
/// partition columns filled from its values, as `schema` has them.
pub async fn live_rows(
    store: Arc<dyn ObjectStore>,
    file: &DataFile,
    partition: &HashMap<String, Option<String>>,
    kept: Option<Vec<Range<usize>>>,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    if kept.as_ref().is_some_and(|k| k.is_empty()) {
        return Ok(Vec::new());
    }
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !partition.contains_key(n))
        .collect();
    let rows = kept.map_or(Rows::All, Rows::In);
    let (batches, _) = read_rows(store, file, &columns, rows).await?;
    batches
        .iter()
        .map(|b| conform(b, schema, partition))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys 0, 2, 4, … 198 in pages of 10 rows (row groups of 40): the pages
    /// whose key range may hold a wanted key, merged into runs; NULL pages and
    /// keys between two pages' ranges read nothing.
    #[tokio::test]
    async fn a_key_pass_reads_the_pages_that_may_hold_its_keys() {
        use datafusion::arrow::array::Int64Array;
        use deltalake::parquet::arrow::ArrowWriter;
        use deltalake::parquet::file::properties::WriterProperties;
        let keys: Vec<Option<i64>> = (0..100)
            .map(|i| (i < 90).then_some(i * 2)) // the last page holds NULLs
            .collect();
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![Field::new(
            "k",
            DataType::Int64,
            true,
        )]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(keys))]).unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(40))
            .set_data_page_row_count_limit(10)
            .set_write_batch_size(10)
            .build();
        let mut bytes = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut bytes, schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(deltalake::logstore::object_store::memory::InMemory::new());
        store
            .put(&Path::from("f.parquet"), bytes.into())
            .await
            .unwrap();
        let file = DataFile {
            path: "f.parquet".into(),
            size: store.head(&Path::from("f.parquet")).await.unwrap().size,
        };
        let read = |keys: Vec<i64>| {
            let (store, file) = (store.clone(), file.clone());
            async move {
                let rows = Rows::KeyPages {
                    column: "k",
                    keys: &keys,
                };
                let (batches, total) = read_rows(store, &file, &["k".into()], rows).await.unwrap();
                assert_eq!(total, 100);
                batches
                    .iter()
                    .flat_map(|b| {
                        let n = b.column_by_name(ROW_NUMBER).unwrap();
                        let n = n
                            .as_any()
                            .downcast_ref::<datafusion::arrow::array::Int64Array>();
                        n.unwrap().values().to_vec()
                    })
                    .collect::<Vec<i64>>()
            }
        };
        // Key 0 (rows 0–9), keys 38 and 40 (rows 10–29), key 119 (no page).
        assert_eq!(
            read(vec![0, 38, 40, 119]).await,
            (0..30).collect::<Vec<i64>>()
        );
        assert!(read(vec![1_000]).await.is_empty());
        assert!(read(Vec::new()).await.is_empty());
        assert_eq!(read(vec![178]).await, (80..90).collect::<Vec<i64>>());
    }

    #[test]
    fn positions_become_runs() {
        assert_eq!(ranges([1, 2, 3, 7, 9, 10]), vec![1..4, 7..8, 9..11]);
        assert!(ranges([]).is_empty());
    }

    #[test]
    fn vectors_share_one_file_at_increasing_offsets() {
        let mut f = VectorFile::default();
        f.add("a", [0, 2, 4]);
        f.add("b", [1]);
        let (bytes, d) = f.encode(uuid::Uuid::nil()).unwrap();
        assert_eq!(bytes[0], 1, "version byte");
        let (a, b) = (&d[0].1, &d[1].1);
        assert_eq!(a.offset, Some(1));
        assert_eq!(b.offset, Some(1 + 4 + a.size_in_bytes + 4));
        assert_eq!((a.cardinality, b.cardinality), (3, 1));
        assert_eq!(
            bytes.len() as i32,
            b.offset.unwrap() + 4 + b.size_in_bytes + 4
        );
        assert_eq!(a.path_or_inline_dv.len(), 20, "z85 of 16 bytes");
    }
}
