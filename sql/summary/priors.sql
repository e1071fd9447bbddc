-- For each new row, Q: the greatest stored month below it whose row is not deleted
-- after the batch (a delete record deletes it, a value record re-activates it).
SELECT t.cons_acct_key, t.month_idx, max(e.month_idx) AS q_idx
FROM targets t
JOIN existing e ON e.cons_acct_key = t.cons_acct_key AND e.month_idx < t.month_idx
LEFT JOIN effective a ON a.cons_acct_key = e.cons_acct_key AND a.month_idx = e.month_idx AND a.outcome = 'applied'
WHERE NOT t.existed
  AND NOT CASE WHEN a.cons_acct_key IS NULL THEN e.was_deleted ELSE a.is_delete END
GROUP BY t.cons_acct_key, t.month_idx
