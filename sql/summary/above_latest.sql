-- Accounts with a latest row that are not windowed (see `touched`): every record
-- lies after the latest month, which is the newest latest month of the batch's
-- accounts. `latest_summary` skips deleted rows, so deleted rows can lie above the
-- latest month; a record may land on one (a re-delete or re-activation) or patch a
-- later one, so summary is read from the first record to 35 months after the last
-- (spec §3). In the monthly
-- flow those are the batch's new month and later ones, whose partitions do not
-- exist yet: nothing is read.
SELECT cons_acct_key, min_idx AS lo, max_idx + {{ history_length - 1 }} AS hi
FROM touched
WHERE latest_idx IS NOT NULL AND NOT windowed
