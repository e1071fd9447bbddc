{% import "sql/macros/summary.sql" as summary -%}
-- Spec §1.4 for the touched accounts, ranked on key, month and delete code only:
-- among the rows the run saw (the written rows and the rows read in the windows, or
-- the stored latest row of forward-only accounts), each account's newest
-- non-deleted row, else its newest row — which one it is (`written`: a row of
-- `updated`, else of `existing`), not the row itself (`latest_candidates` fetches
-- it; ranking the wide rows sorted every array of every candidate).
WITH candidates AS (
  SELECT cons_acct_key, rpt_as_of_mo, soft_del_cd, true AS written FROM updated
  UNION ALL
  SELECT e.cons_acct_key, e.rpt_as_of_mo, e.soft_del_cd, false AS written
  FROM existing e
  LEFT JOIN updated u ON u.cons_acct_key = e.cons_acct_key AND u.rpt_as_of_mo = e.rpt_as_of_mo
  WHERE u.cons_acct_key IS NULL
)
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
