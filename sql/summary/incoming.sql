{% import "sql/macros/batches.sql" as batches -%}
-- Spec §2 step 1: the source records after the watermark, exactly as they are. The
-- stage's checks (see pipelines/summary.yaml) move records that cannot be processed
-- to `rejected_records`, counted; nothing is reinterpreted.
SELECT * FROM accounts
WHERE {{ batches.after_watermark("base_ts", "insert_ts", watermark) }}
