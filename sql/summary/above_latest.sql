-- Accounts with a latest row that are not windowed (see `touched`): every record
-- lies after the latest month. `latest_summary` skips deleted rows, so deleted rows
-- can lie above the latest month; a record may land on one (a re-delete or
-- re-activation) or patch a later one, so summary is read from the first record
-- to 35 months after the last (spec §3). Deleted rows between the latest month and
-- the first record are not read: no record changes them, none is a prior row (the
-- prior of a new month is the newest row below it that is not deleted: the latest
-- row) and none is the account's latest row. In the monthly flow the months read
-- are the batch's new month and later ones, whose partitions do not exist yet:
-- nothing is read.
SELECT cons_acct_key, min_idx AS lo, max_idx + {{ history_length - 1 }} AS hi
FROM touched
WHERE latest_idx IS NOT NULL AND NOT windowed
