SELECT customer_id, count(*) AS orders, sum(amount) AS amount, max(ds) AS last_ds
FROM day_orders
GROUP BY customer_id
