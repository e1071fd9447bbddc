SELECT id, amount + DATE '2024-01-01' AS amount
FROM orders
