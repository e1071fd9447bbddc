-- Spec §3.1: the batch's records by case (relative to latest_summary before the
-- run), and those not applied. Reported by the run.
SELECT kind, count(*) AS records
FROM (
  SELECT
    CASE
      WHEN e.outcome = 'stale' THEN 'stale'
      WHEN e.outcome = 'ignored' THEN 'ignored'
      WHEN e.is_delete THEN 'delete'
      WHEN t.latest_idx IS NULL AND t.min_idx = t.max_idx THEN 'case I: new account, one month'
      WHEN t.latest_idx IS NULL THEN 'case IV: new account, several months'
      WHEN e.month_idx > t.latest_idx THEN 'case II: forward month'
      ELSE 'case III: backfill or correction'
    END AS kind
  FROM effective e
  JOIN touched t ON t.cons_acct_key = e.cons_acct_key
)
GROUP BY kind
ORDER BY kind
