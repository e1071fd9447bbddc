//! Matching a MERGE source's keys in a table's data files: the source keys (a
//! hash set in Arrow's row format, the partition values and integer ranges they
//! cover), which files may hold one (partition values, then key statistics), and,
//! per file, the live rows whose key is a source key with their physical
//! position. The local MERGE runs it in the sqlplan process; on a cluster the
//! `KeyPassExec` node runs it on the executors.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef, UInt64Type};
use datafusion::arrow::row::RowConverter;
use datafusion::common::hash_utils::RandomState;
use datafusion::common::ScalarValue;
use deltalake::kernel::LogicalFileView;

use super::error::{Error, Result};
use super::partition;
use super::vectors::{self as dv, DataFile, ROW_NUMBER};

/// The matched rows' helper columns: the candidate file (its index), the row's
/// position in it, and the source row it matched.
pub const FILE: &str = "__sqlplan_file";
pub const POSITION: &str = "__sqlplan_position";
pub const MATCHED_SOURCE_ROW: &str = "__sqlplan_matched_source_row";

/// What the key pass reads of each candidate file and how it matches.
pub struct Matcher {
    /// Columns read from the files (the referenced ones that are not partition
    /// columns).
    pub read: Vec<String>,
    pub lookup: SourceKeys,
    pub converter: RowConverter,
    pub keys: Vec<String>,
    pub key_types: Vec<DataType>,
    /// Target columns the matched rows carry (keys included), in table order.
    pub referenced: Vec<String>,
    pub target_fields: BTreeMap<String, DataType>,
    /// `referenced`, then the file index, position and matched source row.
    pub matched_schema: SchemaRef,
}

/// One candidate file as the key pass reads it.
pub struct MatchFile {
    /// Its index among the candidates (the matched rows' file column).
    pub index: u32,
    pub file: DataFile,
    pub partition: HashMap<String, Option<String>>,
    /// The rows its existing vector deletes.
    pub keep: Option<Arc<super::vectors::Deleted>>,
}

impl Matcher {
    /// The file's live rows whose key is a source key: the referenced columns, the
    /// file, position and source row. Also returns the file's physical row count.
    pub async fn scan(
        self: Arc<Self>,
        store: Arc<dyn deltalake::ObjectStore>,
        f: MatchFile,
    ) -> Result<(u32, usize, Vec<RecordBatch>)> {
        let keys = self.lookup.pages_of(&f.partition)?;
        let selection = match &keys {
            Some((column, keys)) => dv::Rows::KeyPages { column, keys },
            None => dv::Rows::All,
        };
        let (batches, rows) = dv::read_rows(store, &f.file, &self.read, selection).await?;
        let mut out = Vec::new();
        for b in &batches {
            let key_arrays = self
                .keys
                .iter()
                .zip(&self.key_types)
                .map(|(k, t)| dv::column_of(b, k, t, &f.partition))
                .collect::<Result<Vec<_>>>()?;
            let keys = self.converter.convert_columns(&key_arrays)?;
            let positions = b
                .column_by_name(ROW_NUMBER)
                .ok_or_else(|| Error::table("a key pass read rows without row numbers"))?
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let (mut take_idx, mut pos, mut src) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..b.num_rows() {
                let p = positions.value(i) as u64;
                if f.keep.as_ref().is_some_and(|k| !k.is_live(p)) {
                    continue; // deleted by the file's vector already
                }
                if let Some(s) = self.lookup.rows.get(keys.row(i).as_ref()) {
                    take_idx.push(i as u32);
                    pos.push(p);
                    src.push(*s);
                }
            }
            if take_idx.is_empty() {
                continue;
            }
            let idx = UInt32Array::from(take_idx);
            let mut columns = self
                .referenced
                .iter()
                .map(|r| {
                    let a = dv::column_of(b, r, &self.target_fields[r], &f.partition)?;
                    Ok(take(&a, &idx, None)?)
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            columns.push(Arc::new(UInt32Array::from(vec![f.index; idx.len()])));
            columns.push(Arc::new(UInt64Array::from(pos)));
            columns.push(Arc::new(UInt64Array::from(src)));
            out.push(RecordBatch::try_new(self.matched_schema.clone(), columns)?);
        }
        Ok((f.index, rows, out))
    }
}

/// The source keys: each (non-null) key → its source row, and the values of key
/// columns that are partition columns (to skip files).
pub struct SourceKeys {
    /// Keyed by the row format's bytes, so a lookup borrows the file row's bytes
    /// instead of copying them (one lookup per row of every candidate file).
    pub rows: HashMap<Box<[u8]>, u64, RandomState>,
    /// Per key column that is a partition column: its type and the source's values
    /// (typed: a log's partition string is parsed to be compared, never printed).
    pub partition_values: BTreeMap<String, (DataType, HashSet<ScalarValue>)>,
    /// The least and greatest source value of each integer key column that is not
    /// a partition column (against the files' statistics).
    pub ranges: BTreeMap<String, (serde_json::Value, serde_json::Value)>,
    /// Where the key is one signed integer column besides partition columns:
    /// its source values per partition, for the key pass to read only the pages
    /// that may hold them.
    pub sorted: Option<SortedKeys>,
}

/// The source's values of the one integer key column that is not a partition
/// column, ascending, by the values of the key columns that are (in key order).
pub struct SortedKeys {
    pub column: String,
    /// The key columns that are partition columns, with their types.
    pub partition_keys: Vec<(String, DataType)>,
    pub by_partition: HashMap<Vec<ScalarValue>, Vec<i64>>,
}

impl SortedKeys {
    /// For keys of that shape: the column's index among the keys.
    fn shape(keys: &[String], key_types: &[DataType], partitions: &[String]) -> Option<usize> {
        let data: Vec<usize> = (0..keys.len())
            .filter(|&k| !partitions.contains(&keys[k]))
            .collect();
        let signed = |t: &DataType| {
            matches!(
                t,
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64
            )
        };
        match data[..] {
            [k] if signed(&key_types[k]) => Some(k),
            _ => None,
        }
    }
}

impl SourceKeys {
    pub fn new(
        converter: &RowConverter,
        keyed: &[RecordBatch],
        keys: &[String],
        key_types: &[DataType],
        partitions: &[String],
    ) -> Result<Self> {
        let mut rows = HashMap::with_hasher(RandomState::default());
        let mut partition_values: BTreeMap<String, (DataType, HashSet<ScalarValue>)> = keys
            .iter()
            .zip(key_types.iter().cloned())
            .filter(|(c, _)| partitions.contains(c))
            .map(|(c, t)| (c.clone(), (t, HashSet::new())))
            .collect();
        for b in keyed {
            let arrays = &b.columns()[..keys.len()];
            let converted = converter.convert_columns(arrays)?;
            let source_row = b.column(keys.len()).as_primitive::<UInt64Type>();
            for i in 0..b.num_rows() {
                if arrays.iter().any(|a| a.is_null(i)) {
                    continue; // NULL = NULL is not a match
                }
                rows.insert(converted.row(i).as_ref().into(), source_row.value(i));
                for (k, c) in keys.iter().enumerate() {
                    if let Some((_, values)) = partition_values.get_mut(c) {
                        values.insert(ScalarValue::try_from_array(&arrays[k], i)?);
                    }
                }
            }
        }
        let sorted = match SortedKeys::shape(keys, key_types, partitions) {
            Some(k) => Some(sorted_keys(keyed, keys, key_types, k)?),
            None => None,
        };
        let mut ranges = BTreeMap::new();
        for (k, c) in keys.iter().enumerate() {
            if partitions.contains(c) {
                continue;
            }
            let columns: Vec<&ArrayRef> = keyed.iter().map(|b| b.column(k)).collect();
            if let Some(range) = key_range(&columns) {
                ranges.insert(c.clone(), range);
            }
        }
        Ok(SourceKeys {
            rows,
            partition_values,
            ranges,
            sorted,
        })
    }

    /// The column and the sorted source keys a file with these partition values
    /// may hold (none may be an empty list); None where the key has another
    /// shape (the key pass reads every row).
    pub fn pages_of(
        &self,
        partition: &HashMap<String, Option<String>>,
    ) -> Result<Option<(&str, &[i64])>> {
        let Some(sorted) = &self.sorted else {
            return Ok(None);
        };
        let values = sorted
            .partition_keys
            .iter()
            .map(|(c, t)| {
                let raw = partition.get(c).and_then(|v| v.as_deref());
                partition::value(raw, t)
            })
            .collect::<Result<Vec<_>>>()?;
        let keys = sorted
            .by_partition
            .get(&values)
            .map_or(&[][..], Vec::as_slice);
        Ok(Some((sorted.column.as_str(), keys)))
    }

    /// A file with these partition values and key statistics may hold a source key.
    pub fn may_hold(
        &self,
        file: &LogicalFileView,
        partition: &HashMap<String, Option<String>>,
    ) -> bool {
        let partitions_match = self.partition_values.iter().all(|(c, (t, values))| {
            match partition
                .get(c)
                .map(|raw| partition::value(raw.as_deref(), t))
            {
                Some(Ok(v)) => !v.is_null() && values.contains(&v),
                // Unreadable: the key pass reads the file and reports why.
                Some(Err(_)) => true,
                None => false,
            }
        });
        if !partitions_match || self.ranges.is_empty() {
            return partitions_match;
        }
        let Some(stats) = file
            .stats()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        else {
            return true;
        };
        self.ranges.iter().all(|(c, (lo, hi))| {
            let (min, max) = (&stats["minValues"][c], &stats["maxValues"][c]);
            !(below(max, lo) || below(hi, min))
        })
    }
}

/// `SortedKeys` of key column `k` of the source's keyed batches (key columns
/// first, cast to the key types).
fn sorted_keys(
    keyed: &[RecordBatch],
    keys: &[String],
    key_types: &[DataType],
    k: usize,
) -> Result<SortedKeys> {
    use datafusion::arrow::datatypes::Int64Type;
    let others: Vec<usize> = (0..keys.len()).filter(|&i| i != k).collect();
    let mut by_partition: HashMap<Vec<ScalarValue>, Vec<i64>> = HashMap::new();
    for b in keyed {
        let arrays = &b.columns()[..keys.len()];
        let key = datafusion::arrow::compute::cast(&arrays[k], &DataType::Int64)?;
        let key = key.as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            if arrays.iter().any(|a| a.is_null(i)) {
                continue; // never matches
            }
            let values = others
                .iter()
                .map(|&o| ScalarValue::try_from_array(&arrays[o], i))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            by_partition.entry(values).or_default().push(key.value(i));
        }
    }
    for v in by_partition.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    Ok(SortedKeys {
        column: keys[k].clone(),
        partition_keys: others
            .iter()
            .map(|&o| (keys[o].clone(), key_types[o].clone()))
            .collect(),
        by_partition,
    })
}

/// The least and greatest non-null value of integer key arrays, as JSON values
/// comparable with Delta's file statistics. (Not strings: writers may truncate
/// their statistics.)
pub fn key_range(columns: &[&ArrayRef]) -> Option<(serde_json::Value, serde_json::Value)> {
    use datafusion::arrow::compute::{max, min};
    let mut range: Option<(serde_json::Value, serde_json::Value)> = None;
    let mut widen = |lo: serde_json::Value, hi: serde_json::Value| {
        range = Some(match range.take() {
            None => (lo, hi),
            Some((a, b)) => (
                if below(&lo, &a) { lo } else { a },
                if below(&b, &hi) { hi } else { b },
            ),
        });
    };
    for c in columns {
        match c.data_type() {
            t if t.is_integer() => {
                let c = datafusion::arrow::compute::cast(c, &DataType::Int64).ok()?;
                let c = c.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                if let (Some(lo), Some(hi)) = (min(c), max(c)) {
                    widen(lo.into(), hi.into());
                }
            }
            _ => return None,
        }
    }
    range
}

/// `a < b` for two integers; false for anything else (unknown).
fn below(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a, b) {
        (serde_json::Value::Number(a), serde_json::Value::Number(b)) => {
            matches!((a.as_i64(), b.as_i64()), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::row::SortField;

    fn keyed(ids: Vec<Option<i64>>, months: Vec<&str>) -> RecordBatch {
        let n = ids.len();
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("k0", DataType::Int64, true),
                Field::new("k1", DataType::Utf8, true),
                Field::new("row", DataType::UInt64, false),
            ])),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(months)),
                Arc::new(UInt64Array::from(vec![0; n])),
            ],
        )
        .unwrap()
    }

    /// A key of one integer column and a partition column: each partition's
    /// keys, ascending and once (a NULL key never matches); none for a
    /// partition the source does not reach; no list for another shape of key.
    #[test]
    fn the_key_pass_knows_each_partitions_keys_in_order() {
        let types = [DataType::Int64, DataType::Utf8];
        let converter =
            RowConverter::new(types.iter().cloned().map(SortField::new).collect()).unwrap();
        let batch = keyed(
            vec![Some(9), Some(3), Some(9), None, Some(-4)],
            vec!["2025-06", "2025-06", "2025-06", "2025-06", "2025-07"],
        );
        let keys = ["id".to_string(), "month".to_string()];
        let lookup = SourceKeys::new(
            &converter,
            std::slice::from_ref(&batch),
            &keys,
            &types,
            &["month".into()],
        )
        .unwrap();
        let of = |month: Option<&str>| {
            let partition = HashMap::from([("month".to_string(), month.map(str::to_string))]);
            lookup
                .pages_of(&partition)
                .unwrap()
                .map(|(c, k)| (c.to_string(), k.to_vec()))
        };
        assert_eq!(of(Some("2025-06")), Some(("id".into(), vec![3, 9])));
        assert_eq!(of(Some("2025-07")), Some(("id".into(), vec![-4])));
        assert_eq!(of(Some("2025-08")), Some(("id".into(), vec![])));
        assert_eq!(of(None), Some(("id".into(), vec![])));
        // Both key columns are data columns: no page selection.
        let unpartitioned = SourceKeys::new(&converter, &[batch], &keys, &types, &[]).unwrap();
        assert!(unpartitioned.pages_of(&HashMap::new()).unwrap().is_none());
    }
}
