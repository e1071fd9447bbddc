SELECT id, amount FROM orders;
SELECT 1;
