-- Accounts whose stored latest row was inside the window and not deleted, and whose
-- rows in the window are all deleted after the batch: their latest row now lies
-- outside the window, if anywhere (read by `older_latest`; usually there are no
-- such accounts and summary is not read at all).
SELECT cons_acct_key, lo, hi
FROM latest_candidates
WHERE best_deleted AND lo IS NOT NULL AND NOT latest_deleted AND latest_idx <= hi
