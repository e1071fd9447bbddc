{#- Shared macros: import with {% import "sql/macros/common.sql" as common %} -#}

{#- `a, b, c` from a list of names, each optionally prefixed with `alias.` -#}
{% macro column_list(columns, alias=none) -%}
{%- for c in columns %}{% if alias %}{{ alias }}.{% endif %}{{ c }}{% if not loop.last %}, {% endif %}{% endfor -%}
{%- endmacro %}

{#- `'a', 'b'` : a list of string literals for IN (...) -#}
{% macro string_literals(values) -%}
{%- for v in values %}{{ v | string | literal }}{% if not loop.last %}, {% endif %}{% endfor -%}
{%- endmacro %}
