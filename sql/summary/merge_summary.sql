{% import "sql/summary/columns.sql" as cols -%}
MERGE INTO summary t
USING updated u
ON t.cons_acct_key = u.cons_acct_key AND t.rpt_as_of_mo = u.rpt_as_of_mo
WHEN MATCHED THEN UPDATE SET
{%- for c in columns if c.to not in ["cons_acct_key", "rpt_as_of_mo"] %}
  {{ c.to }} = u.{{ c.to }},
{%- endfor %}
  orig_loan_am = u.orig_loan_am,
  payment_rating_cd = u.payment_rating_cd,
{%- for r in rolling %}
  {{ r.array }} = u.{{ r.array }},
{%- endfor %}
  payment_history_grid = u.payment_history_grid
WHEN NOT MATCHED THEN INSERT ({{ cols.names(columns, rolling) }})
  VALUES ({{ cols.names(columns, rolling, "u.") }})
