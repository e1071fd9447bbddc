SELECT id, amount
FROM orders
WHERE {{ sort_column }} > {{ min_amount }}
