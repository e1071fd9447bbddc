{#- Month arithmetic on `YYYY-MM` strings, in plain SQL so any pipeline can use it.
    Import with {% import "sql/macros/months.sql" as months %}.
    Arguments are SQL expressions (columns, or quoted literals like "'2025-11'"). -#}

{#- Months since year 0: '2025-11' → 24310. Differences of indexes are month gaps. -#}
{% macro index(m) -%}
(CAST(substr({{ m }}, 1, 4) AS INT) * 12 + CAST(substr({{ m }}, 6, 2) AS INT) - 1)
{%- endmacro %}

{#- The `YYYY-MM` of a month index (inverse of `index`). -#}
{% macro from_index(i) -%}
concat(lpad(CAST(({{ i }}) / 12 AS VARCHAR), 4, '0'), '-', lpad(CAST(({{ i }}) % 12 + 1 AS VARCHAR), 2, '0'))
{%- endmacro %}

{#- Months from b to a: diff('2026-01', '2025-11') = 2. -#}
{% macro diff(a, b) -%}
({{ index(a) }} - {{ index(b) }})
{%- endmacro %}

{#- The month n months after m (n may be negative). -#}
{% macro add(m, n) -%}
{{ from_index(index(m) ~ " + (" ~ n ~ ")") }}
{%- endmacro %}
