-- Rows the run writes (spec §3.0): stored rows up to 35 months after an applied
-- record, and a new row per value record whose month has none.
SELECT DISTINCT e.cons_acct_key, e.month_idx, true AS existed
FROM existing e
JOIN effective a ON a.cons_acct_key = e.cons_acct_key
WHERE a.outcome = 'applied' AND e.month_idx - a.month_idx BETWEEN 0 AND {{ history_length - 1 }}
UNION ALL
SELECT a.cons_acct_key, a.month_idx, false AS existed
FROM effective a
WHERE a.outcome = 'applied' AND NOT a.existed AND NOT a.is_delete
