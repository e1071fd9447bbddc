MERGE INTO totals t
USING big_orders b
ON t.id = b.id
WHEN MATCHED THEN UPDATE SET amount = b.amount
WHEN NOT MATCHED THEN INSERT (id, amount) VALUES (b.id, b.amount)
