{% import "sql/macros/summary.sql" as summary -%}
{% import "sql/macros/months.sql" as months -%}
-- The rows the run reads: summary rows in the windows; for the other accounts with
-- a latest row, that row (spec §3: the prior row of a forward month) and the rows
-- above it that their records reach (`above_latest`).
SELECT s.*, {{ months.index("s.rpt_as_of_mo") }} AS month_idx, {{ summary.is_deleted("s.soft_del_cd", delete_codes) }} AS was_deleted
FROM summary s
JOIN window_months wm ON s.rpt_as_of_mo = wm.rpt_as_of_mo
JOIN windows w ON s.cons_acct_key = w.cons_acct_key
WHERE {{ months.index("s.rpt_as_of_mo") }} BETWEEN w.lo AND w.hi
UNION ALL
SELECT l.*, {{ months.index("l.rpt_as_of_mo") }} AS month_idx, {{ summary.is_deleted("l.soft_del_cd", delete_codes) }} AS was_deleted
FROM latest_summary l
JOIN touched t ON l.cons_acct_key = t.cons_acct_key
WHERE NOT t.windowed
UNION ALL
SELECT u.*, {{ months.index("u.rpt_as_of_mo") }} AS month_idx, {{ summary.is_deleted("u.soft_del_cd", delete_codes) }} AS was_deleted
FROM summary u
JOIN above_latest_months am ON u.rpt_as_of_mo = am.rpt_as_of_mo
JOIN above_latest a ON u.cons_acct_key = a.cons_acct_key
WHERE {{ months.index("u.rpt_as_of_mo") }} BETWEEN a.lo AND a.hi
