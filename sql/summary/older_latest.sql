{% import "sql/macros/months.sql" as months -%}
{% import "sql/macros/summary.sql" as summary -%}
-- For each `lost_latest` account, its best stored row outside the window: the newest
-- non-deleted row below it, else the newest (deleted) row above it.
SELECT {{ summary.names(columns, rolling) }}
FROM (
  SELECT s.*, row_number() OVER (
    PARTITION BY s.cons_acct_key
    ORDER BY {{ summary.is_deleted("s.soft_del_cd", delete_codes) }}, s.rpt_as_of_mo DESC
  ) AS newest
  FROM summary s
  JOIN lost_latest k ON s.cons_acct_key = k.cons_acct_key
  WHERE ({{ months.index("s.rpt_as_of_mo") }} < k.lo
         AND NOT {{ summary.is_deleted("s.soft_del_cd", delete_codes) }})
     OR {{ months.index("s.rpt_as_of_mo") }} > k.hi
)
WHERE newest = 1
