{% import "sql/macros/months.sql" as months -%}
-- Every month some `above_latest` range covers, as partition values (they prune `summary`).
SELECT DISTINCT {{ months.from_index("m") }} AS rpt_as_of_mo
FROM (SELECT unnest(range(lo, hi + 1)) AS m FROM above_latest)
