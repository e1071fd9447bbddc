MERGE INTO customer_totals AS t
USING day_totals AS d
ON t.customer_id = d.customer_id
WHEN MATCHED AND d.last_ds > t.last_ds THEN UPDATE SET
  orders = t.orders + d.orders,
  amount = t.amount + d.amount,
  last_ds = d.last_ds
WHEN NOT MATCHED THEN INSERT (customer_id, orders, amount, last_ds)
  VALUES (d.customer_id, d.orders, d.amount, d.last_ds)
