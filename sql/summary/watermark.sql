{% import "sql/macros/batches.sql" as batches -%}
-- The next run's watermark: the greatest time among every record this run read,
-- the quarantined ones included (so that they are not read again).
SELECT CAST(max({{ batches.record_time("base_ts", "insert_ts") }}) AS VARCHAR) AS watermark
FROM accounts
WHERE {{ batches.after_watermark("base_ts", "insert_ts", watermark) }}
