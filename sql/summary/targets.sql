-- Rows the run writes (spec §3.0): stored rows up to 35 months after an applied
-- record, and a new row per value record whose month has none; with the number of
-- applied records in each row's window (`updated` patches rows with one directly).
WITH applied AS (
  SELECT cons_acct_key, month_idx FROM effective WHERE outcome = 'applied'
),
candidates AS (
  SELECT cons_acct_key, month_idx, true AS existed FROM existing
  UNION ALL
  SELECT cons_acct_key, month_idx, false AS existed
  FROM effective
  WHERE outcome = 'applied' AND NOT existed AND NOT is_delete
)
SELECT c.cons_acct_key, c.month_idx, c.existed, count(*) AS records
FROM candidates c
JOIN applied a ON a.cons_acct_key = c.cons_acct_key
WHERE c.month_idx - a.month_idx BETWEEN 0 AND {{ history_length - 1 }}
GROUP BY c.cons_acct_key, c.month_idx, c.existed
