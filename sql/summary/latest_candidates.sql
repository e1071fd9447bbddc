{% import "sql/macros/summary.sql" as summary -%}
-- Spec §1.4 for the touched accounts, among the rows the run saw (the written rows
-- and the rows read in the windows, or the stored latest row of forward-only
-- accounts): the newest non-deleted row, else the newest row. `new_latest` decides
-- whether it replaces the stored latest row or an older row outside the window does.
WITH candidates AS (
  SELECT {{ summary.names(columns, rolling) }} FROM updated
  UNION ALL
  SELECT {{ summary.names(columns, rolling, "e.") }}
  FROM existing e
  LEFT JOIN updated u ON u.cons_acct_key = e.cons_acct_key AND u.rpt_as_of_mo = e.rpt_as_of_mo
  WHERE u.cons_acct_key IS NULL
),
ranked AS (
  SELECT *,
    {{ summary.is_deleted("soft_del_cd", delete_codes) }} AS best_deleted,
    row_number() OVER (
      PARTITION BY cons_acct_key
      ORDER BY {{ summary.is_deleted("soft_del_cd", delete_codes) }}, rpt_as_of_mo DESC
    ) AS newest
  FROM candidates
)
SELECT r.* EXCLUDE (newest), w.lo, w.hi, t.latest_idx, t.latest_deleted
FROM ranked r
JOIN touched t ON t.cons_acct_key = r.cons_acct_key
LEFT JOIN windows w ON w.cons_acct_key = r.cons_acct_key
WHERE r.newest = 1
