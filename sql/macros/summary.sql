{#- Macros of the summary pipeline. Import with
    {% import "sql/macros/summary.sql" as summary %} -#}
{% import "sql/macros/common.sql" as common -%}

{#- Whether a row is soft-deleted: its code is one of the delete codes (NULL or ''
    is active), as a boolean that is never NULL. -#}
{% macro is_deleted(code, delete_codes) -%}
COALESCE({{ code }} IN ({{ common.string_literals(delete_codes) }}), false)
{%- endmacro %}

{#- The summary columns in table order, each as `prefix.name`, comma-separated. -#}
{% macro names(columns, rolling, prefix="") -%}
{%- for c in columns %}{{ prefix }}{{ c.to }}, {% endfor -%}
{{ prefix }}orig_loan_am, {{ prefix }}payment_rating_cd, {% for r in rolling %}{{ prefix }}{{ r.array }}, {% endfor -%}
{{ prefix }}payment_history_grid
{%- endmacro %}

{#- `name = u.name, …` for every summary column except those in `keys`. -#}
{% macro assignments(columns, rolling, keys, source="u") -%}
{%- for c in columns if c.to not in keys %}
  {{ c.to }} = {{ source }}.{{ c.to }},
{%- endfor %}
  orig_loan_am = {{ source }}.orig_loan_am,
  payment_rating_cd = {{ source }}.payment_rating_cd,
{%- for r in rolling %}
  {{ r.array }} = {{ source }}.{{ r.array }},
{%- endfor %}
  payment_history_grid = {{ source }}.payment_history_grid
{%- endmacro %}
