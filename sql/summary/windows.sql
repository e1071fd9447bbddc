-- Accounts whose records reach at or before their latest month (backfills,
-- corrections, deletes) or whose latest row is deleted: their summary rows within
-- 35 months of the records are read (spec §3.2).
SELECT cons_acct_key, min_idx - {{ history_length - 1 }} AS lo, max_idx + {{ history_length - 1 }} AS hi
FROM touched
WHERE latest_idx IS NOT NULL AND (min_idx <= latest_idx OR latest_deleted)
