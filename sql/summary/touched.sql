{% import "sql/macros/summary.sql" as summary -%}
{% import "sql/macros/months.sql" as months -%}
-- Per account of the batch: its month range, its latest row before the run, and
-- whether the run reads its summary rows in a window (`windowed`, always correct):
-- when a record lies at or before the latest month (backfill, correction, delete),
-- when the latest row is deleted, or when a record lies at or before the median
-- latest month of the batch's accounts (in the monthly flow, the month before the
-- batch's). For the other accounts with a latest row, every record lies above it
-- and above that common month: their latest row comes from latest_summary, and the
-- rows above it (all deleted, as latest_summary holds the newest row that is not)
-- from `above_latest` — the batch's month and later, usually no partition at all.
-- (The newest latest month instead of the median let a few accounts with rows in
-- future months window every other account: the whole history was read.)
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
    AND (min_idx <= latest_idx OR latest_deleted OR min_idx <= median(latest_idx) OVER ()) AS windowed
FROM accounts
