{% import "sql/macros/summary.sql" as summary -%}
{% import "sql/macros/months.sql" as months -%}
-- Per account of the batch: its month range, its latest row before the run, and
-- whether the run reads its summary rows in a window (`windowed`): when a record
-- lies at or before the latest month (backfill, correction, delete), when the
-- latest row is deleted, or when the latest month is older than the newest latest
-- month of the batch's accounts (an account back after a pause: deleted rows above
-- its latest month may lie in partitions that exist). The other accounts with a
-- latest row share that newest latest month (in the monthly flow, the month before
-- the batch's): their latest row comes from latest_summary, and the rows above it
-- from their first record on (`above_latest`), usually no partition at all.
WITH accounts AS (
  SELECT
    b.cons_acct_key,
    min(b.month_idx) AS min_idx,
    max(b.month_idx) AS max_idx,
    max({{ months.index("l.rpt_as_of_mo") }}) AS latest_idx,
    bool_or({{ summary.is_deleted("l.soft_del_cd", delete_codes) }}) AS latest_deleted
  FROM batch b
  LEFT JOIN latest_summary l ON l.cons_acct_key = b.cons_acct_key
  GROUP BY b.cons_acct_key
)
SELECT
  *,
  latest_idx IS NOT NULL
    AND (min_idx <= latest_idx OR latest_deleted OR latest_idx < max(latest_idx) OVER ()) AS windowed
FROM accounts
