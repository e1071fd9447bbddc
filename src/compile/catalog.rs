//! The tables a pipeline names, as the binder sees them: the schema of an existing
//! Delta table from its log (no data file is read), or the declared schema of a
//! table the run will create.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::{empty::EmptyExec, ExecutionPlan};
use datafusion::prelude::SessionContext;

use crate::diag::{Code, Problem, Result};
use crate::render::Rendered;
use crate::spec::{PipelineSpec, TableSpec};

#[derive(Clone, Debug)]
pub struct TableInfo {
    pub name: String,
    pub location: String,
    /// Delta version the plan was bound to; None when the run will create the table.
    pub version: Option<i64>,
    pub num_files: Option<usize>,
    pub schema: SchemaRef,
    pub partition_columns: Vec<String>,
    /// Declared `optional`: when absent it is neither read nor created.
    pub optional: bool,
    /// Declared `deletion_vectors`.
    pub deletion_vectors: Option<crate::spec::VectorOptions>,
    /// The table has them on already (false when the run creates it).
    pub vectors_enabled: bool,
}

impl TableInfo {
    pub fn exists(&self) -> bool {
        self.version.is_some()
    }
}

/// Opens every declared table and registers it in `ctx` under its pipeline name.
pub async fn open(
    spec: &PipelineSpec,
    rendered: &Rendered,
    warehouse: &crate::delta::Warehouse,
    ctx: &SessionContext,
) -> Result<BTreeMap<String, TableInfo>> {
    let mut tables = BTreeMap::new();
    for (name, table) in &spec.tables {
        let location = rendered.locations[name].clone();
        // A location that is no URL and no usable path is the YAML's error.
        crate::delta::table_url(&location).map_err(|e| {
            yaml_problem(
                spec,
                table,
                Code::BadLocation,
                format!("table `{name}`: {e}"),
            )
        })?;
        let info = match warehouse.table(name, &location).await.map_err(|e| {
            yaml_problem(
                spec,
                table,
                Code::UnreadableTable,
                format!("cannot read the Delta log of `{name}` at {location}: {e}"),
            )
        })? {
            Some(delta) => {
                let provider = delta.table_provider().await.map_err(|e| {
                    Problem::failed(
                        Code::UnreadableTable,
                        format!("table `{name}` at {location}: {e}"),
                    )
                })?;
                let snapshot = delta.snapshot().map_err(|e| {
                    Problem::failed(Code::UnreadableTable, format!("table `{name}`: {e}"))
                })?;
                let info = TableInfo {
                    name: name.clone(),
                    location,
                    version: delta.version().map(|v| v as i64),
                    num_files: Some(snapshot.log_data().num_files()),
                    schema: provider.schema(),
                    partition_columns: snapshot.metadata().partition_columns().to_vec(),
                    optional: table.optional,
                    deletion_vectors: table.deletion_vectors.clone(),
                    vectors_enabled: crate::delta::vectors::enabled(&delta),
                };
                register(ctx, name, provider)?;
                info
            }
            // An optional table that is absent is not read (templates see
            // `exists: false`) nor created; its declared schema is kept for tools.
            None if table.optional && table.schema.is_none() => continue,
            None => {
                let schema = declared_schema(spec, table, ctx).await?;
                let info = TableInfo {
                    name: name.clone(),
                    location,
                    version: None,
                    num_files: None,
                    schema: schema.clone(),
                    partition_columns: table.partition_by.iter().map(|p| p.value.clone()).collect(),
                    optional: table.optional,
                    deletion_vectors: table.deletion_vectors.clone(),
                    vectors_enabled: false,
                };
                if !table.optional {
                    register(ctx, name, Arc::new(DeclaredTable::new(schema)))?;
                }
                info
            }
        };
        tables.insert(name.clone(), info);
    }
    Ok(tables)
}

fn register(ctx: &SessionContext, name: &str, provider: Arc<dyn TableProvider>) -> Result<()> {
    ctx.register_table(name, provider)
        .map(|_| ())
        .map_err(|e| Problem::failed(Code::Internal, format!("registering `{name}`: {e}")))
}

/// The declared schema, each type resolved by DataFusion itself (`CAST(NULL AS t)`),
/// so every SQL type name DataFusion knows is accepted.
async fn declared_schema(
    spec: &PipelineSpec,
    table: &TableSpec,
    ctx: &SessionContext,
) -> Result<SchemaRef> {
    let Some(columns) = &table.schema else {
        let message = format!(
            "table `{}` does not exist and declares no schema",
            table.name.value
        );
        let help = "create the table first, \
                    or declare `schema:` (and `partition_by:`) so the run creates it";
        return Err(Problem::invalid(Code::MissingTable, message)
            .in_source(&spec.yaml)
            .label(table.location.span, "no Delta table here")
            .help(help));
    };
    let mut fields = Vec::with_capacity(columns.len());
    for column in columns {
        let data_type = sql_type(ctx, &column.data_type.value).await.map_err(|e| {
            let message = format!("unknown column type `{}`", column.data_type.value);
            let help = format!(
                "use a SQL type such as BIGINT, INT, STRING, DATE, TIMESTAMP, DECIMAL(p,s) \
                 or ARRAY<INT> ({e})"
            );
            Problem::invalid(Code::UnknownType, message)
                .in_source(&spec.yaml)
                .label(column.data_type.span, "not a SQL type DataFusion knows")
                .help(help)
        })?;
        fields.push(Field::new(&column.name.value, data_type, column.nullable));
    }
    Ok(Arc::new(Schema::new(fields)))
}

async fn sql_type(
    ctx: &SessionContext,
    name: &str,
) -> std::result::Result<datafusion::arrow::datatypes::DataType, String> {
    if name.contains(';') || name.contains("--") {
        return Err("not a type".into());
    }
    let df = ctx
        .sql(&format!("SELECT CAST(NULL AS {name}) AS c"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(df.schema().field(0).data_type().clone())
}

fn yaml_problem(
    spec: &PipelineSpec,
    table: &TableSpec,
    code: crate::diag::Code,
    message: String,
) -> Problem {
    Problem::invalid(code, message)
        .in_source(&spec.yaml)
        .label(table.location.span, "this location")
}

/// Stand-in provider for a table the run will create: it has the declared schema
/// and accepts filter pushdown like a Delta table would, so `plan` shows the same
/// filters on its scans as it will once the table exists.
#[derive(Debug)]
pub struct DeclaredTable {
    schema: SchemaRef,
}

impl DeclaredTable {
    pub fn new(schema: SchemaRef) -> Self {
        DeclaredTable { schema }
    }
}

#[async_trait]
impl TableProvider for DeclaredTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        Ok(Arc::new(EmptyExec::new(schema)))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}
