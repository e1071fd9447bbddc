SELECT id, amount
FROM orders
WHERE amount > {{ min_amount }}
