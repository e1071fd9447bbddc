{% import "sql/macros/months.sql" as months -%}
-- Per account of the batch: its month range and its latest row before the run.
SELECT
  b.cons_acct_key,
  min(b.month_idx) AS min_idx,
  max(b.month_idx) AS max_idx,
  max({{ months.index("l.rpt_as_of_mo") }}) AS latest_idx,
  bool_or(COALESCE(l.soft_del_cd IN ({% for d in delete_codes %}'{{ d }}'{% if not loop.last %}, {% endif %}{% endfor %}), false)) AS latest_deleted
FROM batch b
LEFT JOIN latest_summary l ON l.cons_acct_key = b.cons_acct_key
GROUP BY b.cons_acct_key
