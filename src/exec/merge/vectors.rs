//! MERGE into a table with deletion vectors: only the changed rows are written.
//!
//! 1. Candidate files come from the log: those whose partition values some source
//!    key has (every file when no key column is a partition column).
//! 2. Their key columns (and the target columns the clauses read) are read with each
//!    row's physical position, skipping rows an existing vector already deletes; a
//!    row matches when its key is a source key.
//! 3. DataFusion evaluates the WHEN clauses over the source joined with the matched
//!    rows (first applicable clause wins), giving the rows to write and the
//!    positions to delete.
//! 4. Per file: every row deleted → the file is removed; the changed share of its
//!    live rows above the table's `rewrite_above` → the file is rewritten without
//!    them; otherwise it gets a vector: the union of its old one and the new
//!    positions. Files without a matched row are not touched.
//! 5. One commit: removes, re-adds with vectors, new files, the run's transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch, UInt64Array};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{Column, JoinType, ScalarValue};
use datafusion::logical_expr::dml::{MergeIntoAction, MergeIntoClauseKind};
use datafusion::logical_expr::{cast as cast_expr, col, lit, when, Expr};
use datafusion::prelude::DataFrame;
use deltalake::protocol::DeltaOperation;
use deltalake::DeltaTable;

use super::super::changes::{candidates, Changes, Deleted};
use super::super::context::{df_err, Executor, StageResult};
use super::{frame, key_pairs, Merge};
use crate::delta::keys::{Matcher, SourceKeys, FILE, MATCHED_SOURCE_ROW, POSITION};
use crate::delta::vectors as dv;
use crate::delta::writer::FileWriter;
use crate::plan::{StagePlan, VectorOptions};
use crate::report::StageMetrics;

/// Helper columns: a source row's index, and the clause that applies to a row.
const SOURCE_ROW: &str = "__sqlplan_source_row";
pub(super) const ACTION: &str = "__sqlplan_action";

/// The MERGE key as (target column, source expression), when this writer can run
/// the statement: ON is only such equalities and no clause is NOT MATCHED BY SOURCE
/// (which needs every target row; delta-rs's merge does that).
pub(super) fn key_columns(merge: &Merge) -> Option<Vec<(String, Expr)>> {
    let pairs = key_pairs(&merge.on, &merge.target);
    let conjuncts = datafusion::logical_expr::utils::split_conjunction(&merge.on).len();
    let by_source = merge
        .clauses
        .iter()
        .any(|c| c.kind.canonical() == MergeIntoClauseKind::NotMatchedBySource);
    (!pairs.is_empty() && pairs.len() == conjuncts && !by_source).then_some(pairs)
}

/// What one clause does to the row it applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Act {
    Update,
    Delete,
    Insert,
}

impl Executor {
    pub(super) async fn merge_with_vectors(
        &self,
        stage: &StagePlan,
        merge: Merge,
        keys: Vec<(String, Expr)>,
        table: DeltaTable,
        options: &VectorOptions,
    ) -> StageResult<StageMetrics> {
        let target_fields = merge.target_fields();
        let snapshot = table.snapshot().map_err(df_err)?.clone();
        let partitions: Vec<String> = snapshot.metadata().partition_columns().to_vec();

        // The source, each row numbered, and its keys.
        let (source_schema, source) = numbered(&merge.source_schema, &merge.source)?;
        let source_df = frame(self, source_schema, source, &merge.source_alias)?;
        let pass =
            Arc::new(key_pass(&merge, &keys, &target_fields, &partitions, &source_df).await?);

        // 1-2. Candidate files, with their existing vectors; their matched rows.
        let mut candidates = candidates(&table, |f, p| pass.lookup.may_hold(f, p)).await?;
        let matched = super::keys::run(&pass, &table, &mut candidates).await?;

        // 3. The clauses, over the source joined with the matched rows.
        let table_schema = snapshot.snapshot().arrow_schema();
        let outcome = self
            .outcome(
                &merge,
                &keys,
                source_df,
                matched,
                &pass.matched_schema,
                &table_schema,
            )
            .await?;

        // Rows to write (written as they come), positions to delete.
        let mut writer = FileWriter::for_table(&table, None)?;
        let applied = apply(&merge, outcome, &mut writer, table_schema.fields().len()).await?;

        // 4-5. Per file: remove, rewrite or give it a vector; one commit.
        let operation = merge_operation(&merge);
        let changes = Changes {
            deleted: Deleted::Positions {
                positions: applied.deleted,
                rewrite_above: options.rewrite_above,
            },
            writer,
            added: Vec::new(),
        };
        let w = self
            .commit_changes(stage, &merge.target, table, &candidates, changes, operation)
            .await?;
        Ok(StageMetrics {
            literal_bounds: merge.literal_bounds.clone(),
            rows_out: Some(merge.source_rows()),
            rows_inserted: Some(applied.inserted),
            rows_updated: Some(applied.updated),
            rows_deleted: Some(applied.deleted_rows),
            files_scanned: Some(candidates.len() as u64),
            ..w.metrics()
        })
    }

    /// Each joined row's clause and the table's columns as that clause sets them,
    /// in key order (so the new files' key statistics let later reads skip row
    /// groups as they do in key-ordered files).
    async fn outcome(
        &self,
        merge: &Merge,
        keys: &[(String, Expr)],
        source_df: DataFrame,
        matched: Vec<RecordBatch>,
        matched_schema: &SchemaRef,
        table_schema: &SchemaRef,
    ) -> StageResult<Vec<RecordBatch>> {
        let matched_df = frame(self, matched_schema.clone(), matched, &merge.target)?;
        let joined = source_df
            .join(
                matched_df,
                JoinType::Left,
                &[SOURCE_ROW],
                &[MATCHED_SOURCE_ROW],
                None,
            )
            .map_err(df_err)?;
        let order: Vec<_> = keys
            .iter()
            .map(|(c, _)| col(c.as_str()).sort(true, false))
            .collect();
        clauses(merge, joined, table_schema)?
            .sort(order)
            .map_err(df_err)?
            .collect()
            .await
            .map_err(df_err)
    }
}

/// The clauses over the source joined with the matched rows: each row's clause
/// (`ACTION`), the table's columns as that clause sets them, and the matched row's
/// file and position.
pub(super) fn clauses(
    merge: &Merge,
    joined: DataFrame,
    table_schema: &SchemaRef,
) -> StageResult<DataFrame> {
    clauses_joined(merge, joined, table_schema, Joined::Left)
}

/// How the source met the matched rows.
pub(super) enum Joined {
    /// LEFT from the source: every joined row has a source row.
    Left,
    /// FULL: the expression holds where a joined row has a source row.
    Full(Expr),
}

/// `clauses`, over the source joined with the target's rows as `how` says.
pub(super) fn clauses_joined(
    merge: &Merge,
    joined: DataFrame,
    table_schema: &SchemaRef,
    how: Joined,
) -> StageResult<DataFrame> {
    joined
        .with_column(ACTION, action_expr(merge, how)?)
        .map_err(df_err)?
        .filter(col(ACTION).gt(lit(0u32)))
        .map_err(df_err)?
        .select(output_exprs(merge, table_schema)?)
        .map_err(df_err)
}

/// The key pass of this MERGE: the source's keys looked up, what it reads of each
/// candidate file and the schema of the matched rows.
async fn key_pass(
    merge: &Merge,
    keys: &[(String, Expr)],
    target_fields: &BTreeMap<String, DataType>,
    partitions: &[String],
    source_df: &DataFrame,
) -> StageResult<Matcher> {
    let key_types: Vec<DataType> = keys.iter().map(|(c, _)| target_fields[c].clone()).collect();
    let keyed = source_df
        .clone()
        .select(
            keys.iter()
                .zip(&key_types)
                .map(|((c, e), t)| cast_expr(e.clone(), t.clone()).alias(c))
                .chain([col(SOURCE_ROW)])
                .collect::<Vec<_>>(),
        )
        .map_err(df_err)?
        .collect()
        .await
        .map_err(df_err)?;
    let converter = RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())
        .map_err(df_err)?;
    let names: Vec<String> = keys.iter().map(|(c, _)| c.clone()).collect();
    let lookup = SourceKeys::new(&converter, &keyed, &names, &key_types, partitions)?;
    let referenced = referenced_columns(merge, keys, target_fields);
    let read: Vec<String> = referenced
        .iter()
        .filter(|c| !partitions.contains(c))
        .cloned()
        .collect();
    let matched_schema = Arc::new(Schema::new(
        referenced
            .iter()
            .map(|c| Field::new(c, target_fields[c].clone(), true))
            .chain([
                Field::new(FILE, DataType::UInt32, false),
                Field::new(POSITION, DataType::UInt64, false),
                Field::new(MATCHED_SOURCE_ROW, DataType::UInt64, false),
            ])
            .collect::<Vec<_>>(),
    ));
    Ok(Matcher {
        read,
        lookup,
        converter,
        keys: keys.iter().map(|(c, _)| c.clone()).collect(),
        key_types,
        referenced,
        target_fields: target_fields.clone(),
        matched_schema,
    })
}

/// What the clauses did: positions to delete per candidate file, and counts.
pub(super) struct Applied {
    pub(super) deleted: BTreeMap<u32, Vec<u64>>,
    pub(super) updated: u64,
    pub(super) inserted: u64,
    pub(super) deleted_rows: u64,
}

/// Hands the rows the clauses write to `writer` and collects the positions they
/// delete (an UPDATE deletes the old version of its row too).
pub(super) async fn apply(
    merge: &Merge,
    outcome: Vec<RecordBatch>,
    writer: &mut FileWriter,
    table_columns: usize,
) -> StageResult<Applied> {
    let acts = acts(merge);
    let writer_schema = writer.arrow_schema();
    let columns: Vec<usize> = (0..table_columns).collect();
    let mut applied = Applied {
        deleted: BTreeMap::new(),
        updated: 0,
        inserted: 0,
        deleted_rows: 0,
    };
    for b in outcome {
        let column = |name: &str| {
            b.column_by_name(name)
                .ok_or("a MERGE helper column is missing")
        };
        let action = column(ACTION)?.as_primitive::<UInt32Type>();
        let file = column(FILE)?.as_primitive::<UInt32Type>();
        let pos = column(POSITION)?.as_primitive::<UInt64Type>();
        let mut keep = Vec::with_capacity(b.num_rows());
        for i in 0..b.num_rows() {
            let act = acts[action.value(i) as usize - 1];
            match act {
                Act::Update => applied.updated += 1,
                Act::Delete => applied.deleted_rows += 1,
                Act::Insert => applied.inserted += 1,
            }
            if act != Act::Insert {
                applied
                    .deleted
                    .entry(file.value(i))
                    .or_default()
                    .push(pos.value(i));
            }
            keep.push(act != Act::Delete);
        }
        let rows = filter_record_batch(&b, &BooleanArray::from(keep)).map_err(df_err)?;
        if rows.num_rows() > 0 {
            let rows = rows.project(&columns).map_err(df_err)?;
            let rows = dv::conform(&rows, &writer_schema, &HashMap::new())?;
            writer.write(rows).await?;
        }
    }
    Ok(applied)
}

/// The operation a MERGE's commit records.
pub(super) fn merge_operation(merge: &Merge) -> DeltaOperation {
    DeltaOperation::Merge {
        predicate: None,
        merge_predicate: Some(merge.on.to_string()),
        matched_predicates: vec![],
        not_matched_predicates: vec![],
        not_matched_by_source_predicates: vec![],
    }
}

/// What each clause does, in clause order (`ACTION` is its index plus one).
pub(super) fn acts(merge: &Merge) -> Vec<Act> {
    merge
        .clauses
        .iter()
        .map(|c| match &c.action {
            MergeIntoAction::Update(_) => Act::Update,
            MergeIntoAction::Delete => Act::Delete,
            MergeIntoAction::Insert { .. } => Act::Insert,
        })
        .collect()
}

/// Target columns the clauses read, the keys, and those an UPDATE keeps.
pub(super) fn referenced_columns(
    merge: &Merge,
    keys: &[(String, Expr)],
    target_fields: &BTreeMap<String, DataType>,
) -> Vec<String> {
    let mut cols: BTreeSet<String> = keys.iter().map(|(c, _)| c.clone()).collect();
    for clause in &merge.clauses {
        let mut exprs: Vec<&Expr> = clause.predicate.iter().collect();
        match &clause.action {
            MergeIntoAction::Update(sets) => {
                exprs.extend(sets.iter().map(|(_, e)| e));
                for name in target_fields.keys() {
                    if !sets.iter().any(|(c, _)| c == name) {
                        cols.insert(name.clone());
                    }
                }
            }
            MergeIntoAction::Insert { values, .. } => exprs.extend(values),
            MergeIntoAction::Delete => {}
        }
        for e in exprs {
            for c in e.column_refs() {
                if c.relation
                    .as_ref()
                    .is_some_and(|r| r.table() == merge.target)
                {
                    cols.insert(c.name.clone());
                }
            }
        }
    }
    // In the target's column order.
    target_fields
        .keys()
        .filter(|c| cols.contains(*c))
        .cloned()
        .collect()
}

/// The numbered clause (1-based) that applies to each joined row, 0 for none.
fn action_expr(merge: &Merge, how: Joined) -> StageResult<Expr> {
    use datafusion::logical_expr::not;
    let target = Expr::Column(Column::new(Some(merge.target.clone()), POSITION)).is_not_null();
    let source = match how {
        Joined::Left => lit(true),
        Joined::Full(present) => present,
    };
    let mut case: Option<datafusion::logical_expr::conditional_expressions::CaseBuilder> = None;
    for (i, clause) in merge.clauses.iter().enumerate() {
        let side = match clause.kind.canonical() {
            MergeIntoClauseKind::Matched => target.clone().and(source.clone()),
            MergeIntoClauseKind::NotMatchedBySource => target.clone().and(not(source.clone())),
            _ => source.clone().and(not(target.clone())),
        };
        let condition = match &clause.predicate {
            Some(p) => side.and(p.clone()),
            None => side,
        };
        let value = lit(i as u32 + 1);
        case = Some(match case {
            None => when(condition, value),
            Some(mut c) => c.when(condition, value),
        });
    }
    match case {
        Some(mut c) => c.otherwise(lit(0u32)).map_err(df_err),
        None => Ok(lit(0u32)),
    }
}

/// The table's columns as each row's clause sets them, then the action, file and
/// position.
fn output_exprs(merge: &Merge, table_schema: &SchemaRef) -> StageResult<Vec<Expr>> {
    let names: Vec<String> = merge
        .target_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let target_col = |c: &str| Expr::Column(Column::new(Some(merge.target.clone()), c));
    let mut out = Vec::new();
    for field in table_schema.fields() {
        let name = field.name();
        let mut case: Option<datafusion::logical_expr::conditional_expressions::CaseBuilder> = None;
        for (i, clause) in merge.clauses.iter().enumerate() {
            let value = match &clause.action {
                MergeIntoAction::Update(sets) => Some(
                    sets.iter()
                        .find(|(c, _)| c == name)
                        .map(|(_, e)| e.clone())
                        .unwrap_or_else(|| target_col(name)),
                ),
                MergeIntoAction::Insert { columns, values } => {
                    let columns = if columns.is_empty() { &names } else { columns };
                    Some(
                        columns
                            .iter()
                            .position(|c| c == name)
                            .map(|p| values[p].clone())
                            .unwrap_or(lit(ScalarValue::Null)),
                    )
                }
                MergeIntoAction::Delete => None,
            };
            if let Some(v) = value {
                let condition = col(ACTION).eq(lit(i as u32 + 1));
                case = Some(match case {
                    None => when(condition, v),
                    Some(mut c) => c.when(condition, v),
                });
            }
        }
        let value = match case {
            Some(c) => c.end().map_err(df_err)?,
            None => lit(ScalarValue::Null),
        };
        out.push(cast_expr(value, field.data_type().clone()).alias(name));
    }
    out.push(col(ACTION));
    out.push(Expr::Column(Column::new(Some(merge.target.clone()), FILE)).alias(FILE));
    out.push(Expr::Column(Column::new(Some(merge.target.clone()), POSITION)).alias(POSITION));
    Ok(out)
}

/// The source batches with a row number column.
fn numbered(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> StageResult<(SchemaRef, Vec<RecordBatch>)> {
    let mut fields = schema.fields().to_vec();
    fields.push(Arc::new(Field::new(SOURCE_ROW, DataType::UInt64, false)));
    let numbered_schema = Arc::new(Schema::new(fields));
    let mut next = 0u64;
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let n = b.num_rows() as u64;
        let mut columns = b.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from_iter_values(next..next + n)));
        next += n;
        out.push(RecordBatch::try_new(numbered_schema.clone(), columns).map_err(df_err)?);
    }
    Ok((numbered_schema, out))
}
