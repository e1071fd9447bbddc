{% import "sql/macros/summary.sql" as summary -%}
MERGE INTO summary t
USING updated u
ON t.cons_acct_key = u.cons_acct_key AND t.rpt_as_of_mo = u.rpt_as_of_mo
WHEN MATCHED THEN UPDATE SET{{ summary.assignments(columns, rolling, ["cons_acct_key", "rpt_as_of_mo"]) }}
WHEN NOT MATCHED THEN INSERT ({{ summary.names(columns, rolling) }})
  VALUES ({{ summary.names(columns, rolling, "u.") }})
