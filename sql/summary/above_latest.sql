-- Accounts whose records all lie after their latest month (forward months): the
-- months from their first record to 35 months after their last. `latest_summary`
-- skips deleted rows, so deleted rows can lie above the latest month; a record may
-- land on one (a re-delete or re-activation) or patch one, so these months of
-- summary are read too (spec §3). In the monthly flow they are the batch's new
-- month and later ones, whose partitions do not exist yet: nothing is read.
SELECT cons_acct_key, min_idx AS lo, max_idx + {{ history_length - 1 }} AS hi
FROM touched
WHERE latest_idx IS NOT NULL AND NOT (min_idx <= latest_idx OR latest_deleted)
