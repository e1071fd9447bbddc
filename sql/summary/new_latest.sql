{% import "sql/macros/summary.sql" as summary -%}
-- latest_summary rows to write (spec §1.4): a row found outside the window for a
-- `lost_latest` account, else the best candidate — except where the stored latest row lies above
-- every row the batch can change (more than 35 months after its last record) and
-- still wins: not deleted, or deleted and newer than a candidate that is deleted too.
SELECT {{ summary.names(columns, rolling) }} FROM older_latest
UNION ALL
SELECT {{ summary.names(columns, rolling, "c.") }}
FROM latest_candidates c
LEFT JOIN older_latest o ON o.cons_acct_key = c.cons_acct_key
WHERE o.cons_acct_key IS NULL
  AND NOT (c.hi IS NOT NULL AND c.latest_idx > c.hi AND (NOT c.latest_deleted OR c.best_deleted))
