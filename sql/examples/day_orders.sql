{% import "sql/macros/common.sql" as common -%}
SELECT order_id, customer_id, amount, status, ds
FROM orders
WHERE ds = {{ day | string | literal }}
  AND status IN ({{ common.string_literals(statuses) }})
  AND amount IS NOT NULL
