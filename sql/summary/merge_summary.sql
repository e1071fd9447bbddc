{% import "sql/summary/columns.sql" as cols -%}
MERGE INTO summary t
USING updated u
ON t.cons_acct_key = u.cons_acct_key AND t.rpt_as_of_mo = u.rpt_as_of_mo
WHEN MATCHED THEN UPDATE SET{{ cols.assignments(columns, rolling, ["cons_acct_key", "rpt_as_of_mo"]) }}
WHEN NOT MATCHED THEN INSERT ({{ cols.names(columns, rolling) }})
  VALUES ({{ cols.names(columns, rolling, "u.") }})
