SELECT id, amuont
FROM orders
