{% import "sql/summary/columns.sql" as cols -%}
MERGE INTO latest_summary t
USING new_latest u
ON t.cons_acct_key = u.cons_acct_key
WHEN MATCHED THEN UPDATE SET{{ cols.assignments(columns, rolling, ["cons_acct_key"]) }}
WHEN NOT MATCHED THEN INSERT ({{ cols.names(columns, rolling) }})
  VALUES ({{ cols.names(columns, rolling, "u.") }})
