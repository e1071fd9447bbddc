SELECT {% for c in shown %}{{ c.name }}{% if not loop.last %}, {% endif %}{% endfor %}
FROM orders
WHERE amount > {{ min_amount }}
