{% import "sql/macros/summary.sql" as summary -%}
MERGE INTO latest_summary t
USING new_latest u
ON t.cons_acct_key = u.cons_acct_key
WHEN MATCHED THEN UPDATE SET{{ summary.assignments(columns, rolling, ["cons_acct_key"]) }}
WHEN NOT MATCHED THEN INSERT ({{ summary.names(columns, rolling) }})
  VALUES ({{ summary.names(columns, rolling, "u.") }})
