{% import "sql/macros/summary.sql" as summary -%}
-- Spec §1.4 for the touched accounts, among the rows the run saw (the written rows
-- and the rows read in the windows, or the stored latest row of forward-only
-- accounts): the newest non-deleted row, else the newest row. `new_latest` decides
-- whether it replaces the stored latest row or an older row outside the window does.
-- The ranking reads the key, month and delete code only; the winning rows alone are
-- then fetched whole (ranking the wide rows sorted every array of every candidate).
WITH candidates AS (
  SELECT cons_acct_key, rpt_as_of_mo, soft_del_cd, true AS written FROM updated
  UNION ALL
  SELECT e.cons_acct_key, e.rpt_as_of_mo, e.soft_del_cd, false AS written
  FROM existing e
  LEFT JOIN updated u ON u.cons_acct_key = e.cons_acct_key AND u.rpt_as_of_mo = e.rpt_as_of_mo
  WHERE u.cons_acct_key IS NULL
),
best AS (
  SELECT cons_acct_key, rpt_as_of_mo, written, best_deleted
  FROM (
    SELECT cons_acct_key, rpt_as_of_mo, written,
      {{ summary.is_deleted("soft_del_cd", delete_codes) }} AS best_deleted,
      row_number() OVER (
        PARTITION BY cons_acct_key
        ORDER BY {{ summary.is_deleted("soft_del_cd", delete_codes) }}, rpt_as_of_mo DESC
      ) AS newest
    FROM candidates
  )
  WHERE newest = 1
),
winners AS (
  SELECT {{ summary.names(columns, rolling, "u.") }}, b.best_deleted
  FROM best b
  JOIN updated u ON u.cons_acct_key = b.cons_acct_key AND u.rpt_as_of_mo = b.rpt_as_of_mo
  WHERE b.written
  UNION ALL
  SELECT {{ summary.names(columns, rolling, "e.") }}, b.best_deleted
  FROM best b
  JOIN existing e ON e.cons_acct_key = b.cons_acct_key AND e.rpt_as_of_mo = b.rpt_as_of_mo
  WHERE NOT b.written
)
SELECT r.*, w.lo, w.hi, t.latest_idx, t.latest_deleted
FROM winners r
JOIN touched t ON t.cons_acct_key = r.cons_acct_key
LEFT JOIN windows w ON w.cons_acct_key = r.cons_acct_key
