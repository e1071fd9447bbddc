{% import "sql/summary/columns.sql" as cols -%}
MERGE INTO latest_summary t
USING new_latest u
ON t.cons_acct_key = u.cons_acct_key
WHEN MATCHED THEN UPDATE SET
{%- for c in columns if c.to != "cons_acct_key" %}
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
