{% import "sql/macros/months.sql" as months -%}
{% import "sql/summary/columns.sql" as cols -%}
-- For each `lost_latest` account, its best stored row outside the window: the newest
-- non-deleted row below it, else the newest (deleted) row above it.
SELECT {{ cols.names(columns, rolling) }}
FROM (
  SELECT s.*, row_number() OVER (
    PARTITION BY s.cons_acct_key
    ORDER BY COALESCE(s.soft_del_cd IN ({% for d in delete_codes %}'{{ d }}'{% if not loop.last %}, {% endif %}{% endfor %}), false), s.rpt_as_of_mo DESC
  ) AS newest
  FROM summary s
  JOIN lost_latest k ON s.cons_acct_key = k.cons_acct_key
  WHERE ({{ months.index("s.rpt_as_of_mo") }} < k.lo
         AND NOT COALESCE(s.soft_del_cd IN ({% for d in delete_codes %}'{{ d }}'{% if not loop.last %}, {% endif %}{% endfor %}), false))
     OR {{ months.index("s.rpt_as_of_mo") }} > k.hi
)
WHERE newest = 1
