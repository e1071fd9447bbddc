//! How sqlplan's own plan pieces cross to a Ballista cluster. The client sends the
//! optimized logical plan to the scheduler (logical codec: the `DeltaFiles`
//! provider, a snapshot's file list); the scheduler plans it and sends each stage to
//! the executors (physical codec: the `DeltaFilesExec` scan, with its projection and
//! predicate; its files, with their vector descriptors, are its in-memory input,
//! which Ballista encodes and slices per task). Everything else is Ballista's own
//! encoding, to which both codecs defer.
//!
//! The client, the scheduler and every executor must register these codecs: the
//! `sqlplan scheduler` and `sqlplan executor` commands do.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, Result, TableReference};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::sink::{
    DataWriteExec, DataWriteSpec, ScratchSpec, ScratchWriteExec, Sink, Target, VectorWriteExec,
    VectorWriteSpec,
};
use crate::delta::scan::exec::Reader;
use crate::delta::scan::keys::{
    Candidate as KeyPassCandidate, KeyPassExec, KeyPassFiles, KeyPassSpec,
};
use crate::delta::scan::{DataFile, DeltaFiles, DeltaFilesExec};

/// Marks sqlplan's encodings (Ballista's own never start with it).
const PROVIDER: &[u8] = b"sqlplan/DeltaFiles/1\n";
const SCAN: &[u8] = b"sqlplan/DeltaFilesExec/1\n";
/// Rows written where they are computed (the sink's `Target` as JSON follows).
const SINK: &[u8] = b"sqlplan/Sink/1\n";
const WRITE_EXEC: &[u8] = b"sqlplan/ScratchWriteExec/1\n";
const DATA_WRITE_EXEC: &[u8] = b"sqlplan/DataWriteExec/1\n";
const VECTOR_WRITE_EXEC: &[u8] = b"sqlplan/VectorWriteExec/1\n";
/// A MERGE's key pass (its spec as JSON follows; the provider adds its groups).
const KEY_PASS: &[u8] = b"sqlplan/KeyPassFiles/1\n";
const KEY_PASS_EXEC: &[u8] = b"sqlplan/KeyPassExec/1\n";

/// The key pass provider as it crosses (its schema travels beside it).
#[derive(Serialize, Deserialize)]
struct KeyPassMessage {
    spec: KeyPassSpec,
    groups: Vec<Vec<KeyPassCandidate>>,
}

/// The key pass node as it crosses: its groups are its input.
#[derive(Clone, PartialEq, Message)]
struct KeyPassExecMessage {
    /// `KeyPassSpec` as JSON.
    #[prost(string, tag = "1")]
    spec: String,
    #[prost(message, optional, tag = "2")]
    schema: Option<protobuf::Schema>,
}

/// The one input a node was encoded with.
fn one<T: Clone>(inputs: &[T], what: &str) -> Result<T> {
    match inputs {
        [input] => Ok(input.clone()),
        _ => Err(error(what, "expected one input")),
    }
}

fn error(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("{what}: {e}"))
}

/// The provider as it crosses: its schema travels beside it in the plan, and its
/// files as the table version they are of (the scheduler reads that version's
/// log), or as the list itself for a table without a version.
#[derive(Serialize, Deserialize)]
struct ProviderMessage {
    table_url: url::Url,
    partitions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files: Option<Vec<DataFile>>,
    /// With `version`: the number of files and their bytes, so a list read
    /// earlier for the same URL and version (of a table since replaced, whose
    /// versions start again) is never taken for this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<(u64, u64)>,
}

/// The number of files and their bytes.
fn fingerprint(files: &[DataFile]) -> (u64, u64) {
    (files.len() as u64, files.iter().map(|f| f.size).sum())
}

/// A table's files at a version.
type FileList = ((url::Url, i64), Arc<Vec<DataFile>>);

/// Recently read file lists by table and version: the stages of a run read the
/// same versions again and again.
static FILE_LISTS: std::sync::LazyLock<std::sync::Mutex<std::collections::VecDeque<FileList>>> =
    std::sync::LazyLock::new(Default::default);

/// File lists kept at once.
const KEPT_FILE_LISTS: usize = 32;

/// The files of `table_url` at `version`, read from its log once, which must be
/// the files the client planned (`expected`, their count and bytes).
fn files_at(
    table_url: &url::Url,
    version: i64,
    expected: Option<(u64, u64)>,
) -> Result<Arc<Vec<DataFile>>> {
    let fits = |files: &Arc<Vec<DataFile>>| expected.is_none_or(|e| fingerprint(files) == e);
    let key = (table_url.clone(), version);
    let cached = |lists: &std::collections::VecDeque<_>| {
        lists
            .iter()
            .find(|(k, files): &&FileList| *k == key && fits(files))
            .map(|(_, files)| files.clone())
    };
    if let Some(files) = cached(&FILE_LISTS.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(files);
    }
    // Decoding is synchronous; the scheduler runs it on a worker of a
    // multi-threaded runtime, which may block while the log is read.
    let read = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(crate::delta::scan::files_at(table_url, version))
    })
    .map_err(|e| error(&format!("reading {table_url} at version {version}"), e))?;
    let files = Arc::new(read);
    if !fits(&files) {
        return Err(error(
            &format!("reading {table_url} at version {version}"),
            "its files are not those the client planned (was the table replaced?)",
        ));
    }
    let mut lists = FILE_LISTS.lock().unwrap_or_else(|e| e.into_inner());
    lists.push_back((key, files.clone()));
    if lists.len() > KEPT_FILE_LISTS {
        lists.pop_front();
    }
    Ok(files)
}

/// Ballista's logical codec plus the `DeltaFiles` provider.
#[derive(Debug, Default)]
pub struct LogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        let Some(json) = buf.strip_prefix(SINK) else {
            return self.ballista.try_decode(buf, inputs, ctx);
        };
        let target: Target =
            serde_json::from_slice(json).map_err(|e| error("decoding a sink", e))?;
        let input = one(inputs, "decoding a sink")?;
        Ok(Extension {
            node: Arc::new(Sink::new(input, target)?),
        })
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        let Some(sink) = node.node.as_any().downcast_ref::<Sink>() else {
            return self.ballista.try_encode(node, buf);
        };
        buf.extend_from_slice(SINK);
        serde_json::to_writer(buf, &sink.target).map_err(|e| error("encoding a sink", e))
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        if let Some(json) = buf.strip_prefix(KEY_PASS) {
            let m: KeyPassMessage =
                serde_json::from_slice(json).map_err(|e| error("decoding a key pass", e))?;
            return Ok(Arc::new(KeyPassFiles {
                spec: Arc::new(m.spec),
                schema,
                groups: m.groups,
            }));
        }
        let Some(json) = buf.strip_prefix(PROVIDER) else {
            return self
                .ballista
                .try_decode_table_provider(buf, table_ref, schema, ctx);
        };
        let m: ProviderMessage =
            serde_json::from_slice(json).map_err(|e| error("decoding a Delta scan", e))?;
        let files = match (m.files, m.version) {
            (Some(files), _) => Arc::new(files),
            (None, Some(version)) => files_at(&m.table_url, version, m.fingerprint)?,
            (None, None) => return Err(error("decoding a Delta scan", "no files, no version")),
        };
        Ok(Arc::new(DeltaFiles {
            table_url: m.table_url,
            schema,
            partitions: m.partitions,
            files,
            version: m.version,
        }))
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(pass) = node.downcast_ref::<KeyPassFiles>() {
            buf.extend_from_slice(KEY_PASS);
            let m = KeyPassMessage {
                spec: pass.spec.as_ref().clone(),
                groups: pass.groups.clone(),
            };
            return serde_json::to_writer(buf, &m).map_err(|e| error("encoding a key pass", e));
        }
        let Some(files) = node.downcast_ref::<DeltaFiles>() else {
            return self
                .ballista
                .try_encode_table_provider(table_ref, node, buf);
        };
        buf.extend_from_slice(PROVIDER);
        let m = ProviderMessage {
            table_url: files.table_url.clone(),
            partitions: files.partitions.clone(),
            version: files.version,
            files: files
                .version
                .is_none()
                .then(|| files.files.as_ref().clone()),
            fingerprint: Some(fingerprint(&files.files)),
        };
        serde_json::to_writer(buf, &m).map_err(|e| error("encoding a Delta scan", e))
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.ballista.try_encode_file_format(buf, node)
    }
}

/// The scan node as it crosses.
#[derive(Clone, PartialEq, Message)]
struct ScanMessage {
    #[prost(string, tag = "1")]
    table_url: String,
    #[prost(message, optional, tag = "2")]
    file_schema: Option<protobuf::Schema>,
    #[prost(message, optional, tag = "3")]
    partition_schema: Option<protobuf::Schema>,
    /// Files in all groups (the groups themselves are the scan's input).
    #[prost(uint64, tag = "4")]
    files: u64,
    #[prost(uint64, repeated, tag = "5")]
    projection: Vec<u64>,
    #[prost(message, optional, tag = "6")]
    predicate: Option<protobuf::PhysicalExprNode>,
    #[prost(uint64, optional, tag = "7")]
    limit: Option<u64>,
    /// `Reader` as JSON.
    #[prost(string, tag = "8")]
    reader: String,
    #[prost(uint64, tag = "9")]
    with_vectors: u64,
}

/// Ballista's physical codec plus the `DeltaFilesExec` scan.
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(spec) = buf.strip_prefix(DATA_WRITE_EXEC) {
            let spec: DataWriteSpec =
                serde_json::from_slice(spec).map_err(|e| error("decoding a data write", e))?;
            let input = one(inputs, "decoding a data write")?;
            return Ok(Arc::new(DataWriteExec::new(input, Arc::new(spec))));
        }
        if let Some(spec) = buf.strip_prefix(VECTOR_WRITE_EXEC) {
            let spec: VectorWriteSpec =
                serde_json::from_slice(spec).map_err(|e| error("decoding a vector write", e))?;
            let input = one(inputs, "decoding a vector write")?;
            return Ok(Arc::new(VectorWriteExec::new(input, Arc::new(spec))));
        }
        if let Some(bytes) = buf.strip_prefix(KEY_PASS_EXEC) {
            let m =
                KeyPassExecMessage::decode(bytes).map_err(|e| error("decoding a key pass", e))?;
            let spec: KeyPassSpec =
                serde_json::from_str(&m.spec).map_err(|e| error("decoding a key pass", e))?;
            let schema = m
                .schema
                .as_ref()
                .ok_or_else(|| error("decoding a key pass", "no schema"))?;
            let schema =
                Schema::try_from(schema).map_err(|e| error("decoding a key pass's schema", e))?;
            let groups = one(inputs, "decoding a key pass")?;
            return Ok(Arc::new(KeyPassExec::new(
                Arc::new(spec),
                Arc::new(schema),
                groups,
            )));
        }
        if let Some(json) = buf.strip_prefix(WRITE_EXEC) {
            let spec: ScratchSpec =
                serde_json::from_slice(json).map_err(|e| error("decoding a scratch write", e))?;
            let input = one(inputs, "decoding a scratch write")?;
            return Ok(Arc::new(ScratchWriteExec::new(input, Arc::new(spec))));
        }
        let Some(bytes) = buf.strip_prefix(SCAN) else {
            return self.ballista.try_decode(buf, inputs, ctx, proto_converter);
        };
        let m = ScanMessage::decode(bytes).map_err(|e| error("decoding a Delta scan", e))?;
        let schema = |s: &Option<protobuf::Schema>| -> Result<SchemaRef> {
            let s = s
                .as_ref()
                .ok_or_else(|| error("decoding a Delta scan", "no schema"))?;
            Ok(Arc::new(
                Schema::try_from(s).map_err(|e| error("decoding a Delta scan's schema", e))?,
            ))
        };
        let file_schema = schema(&m.file_schema)?;
        let partition_fields: Vec<FieldRef> = schema(&m.partition_schema)?.fields().to_vec();
        let all: Vec<Arc<Field>> = file_schema
            .fields()
            .iter()
            .chain(&partition_fields)
            .cloned()
            .collect();
        let predicate = m
            .predicate
            .as_ref()
            .map(|p| parse_physical_expr(p, ctx, &Schema::new(all), self))
            .transpose()?;
        let reader: Reader =
            serde_json::from_str(&m.reader).map_err(|e| error("decoding a Delta scan", e))?;
        let table_url =
            url::Url::parse(&m.table_url).map_err(|e| error("decoding a Delta scan", e))?;
        let [partitions] = inputs else {
            return Err(error(
                "decoding a Delta scan",
                "expected its partitions as one input",
            ));
        };
        let scan = DeltaFilesExec::try_new(
            table_url,
            file_schema,
            partition_fields,
            Vec::new(),
            m.projection.iter().map(|i| *i as usize).collect(),
            predicate,
            m.limit.map(|l| l as usize),
            reader,
        )?;
        Ok(Arc::new(
            scan.with_partitions(partitions.clone())
                .with_counts(m.files as usize, m.with_vectors as usize),
        ))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(write) = node.downcast_ref::<DataWriteExec>() {
            buf.extend_from_slice(DATA_WRITE_EXEC);
            return serde_json::to_writer(buf, write.spec.as_ref())
                .map_err(|e| error("encoding a data write", e));
        }
        if let Some(write) = node.downcast_ref::<VectorWriteExec>() {
            buf.extend_from_slice(VECTOR_WRITE_EXEC);
            return serde_json::to_writer(buf, write.spec.as_ref())
                .map_err(|e| error("encoding a vector write", e));
        }
        if let Some(pass) = node.downcast_ref::<KeyPassExec>() {
            let m = KeyPassExecMessage {
                spec: serde_json::to_string(pass.spec.as_ref())
                    .map_err(|e| error("encoding a key pass", e))?,
                schema: Some(
                    protobuf::Schema::try_from(pass.schema().as_ref())
                        .map_err(|e| error("encoding a key pass's schema", e))?,
                ),
            };
            buf.extend_from_slice(KEY_PASS_EXEC);
            return m.encode(buf).map_err(|e| error("encoding a key pass", e));
        }
        if let Some(write) = node.downcast_ref::<ScratchWriteExec>() {
            buf.extend_from_slice(WRITE_EXEC);
            return serde_json::to_writer(buf, write.spec.as_ref())
                .map_err(|e| error("encoding a scratch write", e));
        }
        let Some(scan) = node.downcast_ref::<DeltaFilesExec>() else {
            return self.ballista.try_encode(node, buf, proto_converter);
        };
        let schema = |s: &Schema| {
            protobuf::Schema::try_from(s).map_err(|e| error("encoding a Delta scan's schema", e))
        };
        let m = ScanMessage {
            table_url: scan.table_url.to_string(),
            file_schema: Some(schema(&scan.file_schema)?),
            partition_schema: Some(schema(&Schema::new(scan.partition_fields.clone()))?),
            files: scan.files as u64,
            with_vectors: scan.with_vectors as u64,
            projection: scan.projection.iter().map(|i| *i as u64).collect(),
            predicate: scan
                .predicate
                .as_ref()
                .map(|p| serialize_physical_expr(p, self))
                .transpose()?,
            limit: scan.limit.map(|l| l as u64),
            reader: serde_json::to_string(&scan.reader)
                .map_err(|e| error("encoding a Delta scan", e))?,
        };
        buf.extend_from_slice(SCAN);
        m.encode(buf).map_err(|e| error("encoding a Delta scan", e))
    }
}
