SELECT
{% for c in columns %}  {{ c }}{% if not loop.last %},{% endif %}
{% endfor %}FROM orders
