SELECT id, amount
FROM order
