{% import "sql/summary/columns.sql" as cols -%}
-- Spec §1.4 for the touched accounts: the newest non-deleted row, else the newest.
WITH candidates AS (
  SELECT {{ cols.names(columns, rolling) }} FROM updated
  UNION ALL
  SELECT {{ cols.names(columns, rolling, "e.") }}
  FROM existing e
  LEFT JOIN updated u ON u.cons_acct_key = e.cons_acct_key AND u.rpt_as_of_mo = e.rpt_as_of_mo
  WHERE u.cons_acct_key IS NULL
),
ranked AS (
  SELECT *, row_number() OVER (
    PARTITION BY cons_acct_key
    ORDER BY COALESCE(soft_del_cd IN ({% for d in delete_codes %}'{{ d }}'{% if not loop.last %}, {% endif %}{% endfor %}), false), rpt_as_of_mo DESC
  ) AS newest
  FROM candidates
)
SELECT {{ cols.names(columns, rolling) }} FROM ranked WHERE newest = 1
