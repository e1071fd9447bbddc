SELECT id, amount
FROM orders
WHERE amount > {{ min_amount }} AND ds > {{ since | literal }}
