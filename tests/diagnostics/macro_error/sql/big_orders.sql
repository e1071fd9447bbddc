{% import "sql/macros/m.sql" as m %}
SELECT id, amount FROM orders WHERE amount > {{ m.threshold() }}
