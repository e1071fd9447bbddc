{#- The summary columns in table order, each as `prefix.name`, comma-separated. -#}
{% macro names(columns, rolling, prefix="") -%}
{%- for c in columns %}{{ prefix }}{{ c.to }}, {% endfor -%}
{{ prefix }}orig_loan_am, {{ prefix }}payment_rating_cd, {% for r in rolling %}{{ prefix }}{{ r.array }}, {% endfor -%}
{{ prefix }}payment_history_grid
{%- endmacro %}
