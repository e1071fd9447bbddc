//! The next monthly batch for a warehouse that has been run: records for the month
//! after the newest month of `latest_summary`, with the same mix as the first batch
//! (forward months from each account's latest row, late records, soft deletes, new
//! accounts, duplicates and noise). For runs of several months in a row.

use datafusion::common::ScalarValue;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::diag::{Code, Problem, Result};

/// Appends the next month's batch to `accounts`; returns what was written.
pub async fn next_batch(
    pipeline: &Path,
    root: Option<&Path>,
    options: &SummaryOptions,
) -> Result<Generated> {
    let vars = [("warehouse".to_string(), options.warehouse.clone())];
    let plan = crate::build_plan(pipeline, root, &vars).await?;
    let layout = Layout::new(&plan)?;
    let latest = latest_rows(table(&plan, "latest_summary")?, &layout).await?;
    let month_of = |row: &[V]| {
        row[layout.idx["rpt_as_of_mo"]]
            .as_str()
            .and_then(parse_month)
    };
    // The month most accounts are at (some jumped ahead with a gap): the next
    // batch reports the month after it.
    let mut at: BTreeMap<Month, usize> = BTreeMap::new();
    for m in latest.iter().filter_map(|r| month_of(r)) {
        *at.entry(m).or_default() += 1;
    }
    let Some(newest) = at.iter().max_by_key(|(m, n)| (**n, **m)).map(|(m, _)| *m) else {
        return Err(Problem::invalid(
            Code::GenerateSchema,
            "--next-batch: latest_summary is empty; generate a warehouse and run the pipeline first",
        ));
    };
    let month = newest + 1;
    let options = SummaryOptions {
        accounts: latest.len(),
        batch_records: match options.batch_records {
            0 => latest.len(),
            n => n,
        },
        ..options.clone()
    };
    let mut values = Values {
        layout: &layout,
        rng: ChaCha8Rng::seed_from_u64(options.seed ^ month as u64),
    };
    let mut batch = Batch::new(&layout, &options, month)?;
    let mut max_key = 0;
    for row in latest {
        let Some(m) = month_of(&row) else { continue };
        max_key = max_key.max(row[layout.idx["cons_acct_key"]].as_int().unwrap_or(0));
        let deleted = row[layout.idx["soft_del_cd"]]
            .as_str()
            .is_some_and(|c| layout.delete_codes.iter().any(|d| d == c));
        // The account as far as the batch needs it: its latest row.
        let account = Account {
            rows: vec![Some(Row {
                values: row,
                deleted,
            })],
        };
        batch.existing_account(&mut values, &account, m);
    }
    batch.new_accounts(&mut values, max_key + 1);
    let mut out = Generated {
        last_month: month_name(newest),
        batch_month: month_name(month),
        latest_rows: options.accounts,
        batch_rows: batch.rows.len(),
        batch: batch.kinds.clone(),
        ..Default::default()
    };
    let files = append(table(&plan, "accounts")?, vec![batch.rows.finish()?]).await?;
    out.files.insert("accounts".into(), files);
    Ok(out)
}

/// Every row of latest_summary as values in the summary layout (arrays left out).
async fn latest_rows(t: &TablePlan, layout: &Layout) -> Result<Vec<Vec<V>>> {
    let failed = |e: &dyn std::fmt::Display| {
        Problem::failed(Code::GenerateSchema, format!("latest_summary: {e}"))
    };
    let url = crate::delta::table_url(&t.location).map_err(|e| failed(&e))?;
    let table = crate::delta::open_if_exists(&url)
        .await
        .map_err(|e| failed(&e))?
        .ok_or_else(|| failed(&"does not exist; generate a warehouse first"))?;
    let ctx = crate::session::new_context();
    let provider = table.table_provider().await.map_err(|e| failed(&e))?;
    let df = ctx.read_table(provider).map_err(|e| failed(&e))?;
    // In key order (the table's first column, one row per account), so the batch
    // depends on the rows only, not on how they are laid out in files.
    let first = df.schema().field(0).name().clone();
    let df = df
        .sort(vec![datafusion::logical_expr::Expr::Column(
            datafusion::common::Column::from_name(first),
        )
        .sort(true, false)])
        .map_err(|e| failed(&e))?;
    let batches = df.collect().await.map_err(|e| failed(&e))?;
    let mut rows = Vec::new();
    for b in &batches {
        let columns: Vec<Option<usize>> = layout
            .summary
            .fields()
            .iter()
            .map(|f| b.schema().index_of(f.name()).ok())
            .collect();
        for i in 0..b.num_rows() {
            let row = columns
                .iter()
                .map(|c| match c {
                    Some(c) => ScalarValue::try_from_array(b.column(*c), i).map(value),
                    None => Ok(V::Null),
                })
                .collect::<std::result::Result<Vec<V>, _>>()
                .map_err(|e| failed(&e))?;
            rows.push(row);
        }
    }
    Ok(rows)
}

/// A scalar as a generator value; arrays (rebuilt by the pipeline) as NULL.
fn value(s: ScalarValue) -> V {
    match s {
        ScalarValue::Int64(Some(i)) => V::Int(i),
        ScalarValue::Int32(Some(i)) => V::Int(i as i64),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => V::Str(s),
        ScalarValue::Date32(Some(d)) => V::Date(d),
        ScalarValue::TimestampMicrosecond(Some(t), _) => V::Ts(t),
        _ => V::Null,
    }
}
