-- Each record with its outcome: stale (a stored row at its month is newer), ignored
-- (a delete of a month with no row) or applied.
SELECT
  b.*,
  e.cons_acct_key IS NOT NULL AS existed,
  CASE
    WHEN e.cons_acct_key IS NOT NULL AND e.base_ts > b.base_ts THEN 'stale'
    WHEN b.is_delete AND e.cons_acct_key IS NULL THEN 'ignored'
    ELSE 'applied'
  END AS outcome
FROM batch b
LEFT JOIN existing e ON e.cons_acct_key = b.cons_acct_key AND e.month_idx = b.month_idx
