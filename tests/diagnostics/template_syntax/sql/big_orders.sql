SELECT id, amount
FROM orders
{% if min_amount %}
WHERE amount > {{ min_amount }}
