{% import "sql/macros/summary.sql" as summary -%}
-- Spec §1.4 for the touched accounts: the row `latest_best` chose, whole, with the
-- account's window and stored latest row. `new_latest` decides whether it replaces
-- the stored latest row or an older row outside the window does.
WITH winners AS (
  SELECT {{ summary.names(columns, rolling, "u.") }}, b.best_deleted
  FROM latest_best b
  JOIN updated u ON u.cons_acct_key = b.cons_acct_key AND u.rpt_as_of_mo = b.rpt_as_of_mo
  WHERE b.written
  UNION ALL
  SELECT {{ summary.names(columns, rolling, "e.") }}, b.best_deleted
  FROM latest_best b
  JOIN existing e ON e.cons_acct_key = b.cons_acct_key AND e.rpt_as_of_mo = b.rpt_as_of_mo
  WHERE NOT b.written
)
SELECT r.*, w.lo, w.hi, t.latest_idx, t.latest_deleted
FROM winners r
JOIN touched t ON t.cons_acct_key = r.cons_acct_key
LEFT JOIN windows w ON w.cons_acct_key = r.cons_acct_key
