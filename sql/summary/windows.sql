-- The windowed accounts (see `touched`): their summary rows within 35 months of
-- their records are read (spec §3.2).
SELECT cons_acct_key, min_idx - {{ history_length - 1 }} AS lo, max_idx + {{ history_length - 1 }} AS hi
FROM touched
WHERE windowed
