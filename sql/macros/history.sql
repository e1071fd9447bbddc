{#- Fixed-length history arrays (element p = the value p periods back), in plain SQL.
    Import with {% import "sql/macros/history.sql" as history %}.
    `t` is the element's SQL type (INT, VARCHAR, ...): NULL elements need one. -#}

{#- An array of n NULLs of type t. -#}
{% macro nulls(n, t) -%}
array_resize(make_array(CAST(NULL AS {{ t }})), {{ n }}, CAST(NULL AS {{ t }}))
{%- endmacro %}

{#- [v, NULL × (n - 1)]: a history that starts now. -#}
{% macro start(v, n, t) -%}
array_resize(make_array(CAST({{ v }} AS {{ t }})), {{ n }}, CAST(NULL AS {{ t }}))
{%- endmacro %}

{#- The first n of [v] ++ [NULL × gap] ++ prior: a new period `gap + 1` periods after
    the one `prior` describes. A NULL prior counts as all NULLs. -#}
{% macro shift(v, gap, prior, n, t) -%}
array_slice(array_concat(make_array(CAST({{ v }} AS {{ t }})), {{ nulls(gap, t) }}, coalesce({{ prior }}, {{ nulls(n, t) }})), 1, {{ n }})
{%- endmacro %}

{#- arr with element p (0-based) replaced by v; p outside [0, n) leaves arr as is. -#}
{% macro set(arr, p, v, n, t) -%}
CASE WHEN ({{ p }}) >= 0 AND ({{ p }}) < {{ n }}
  THEN array_concat(array_slice({{ arr }}, 1, {{ p }}), make_array(CAST({{ v }} AS {{ t }})), array_slice({{ arr }}, ({{ p }}) + 2, {{ n }}))
  ELSE {{ arr }} END
{%- endmacro %}

{#- The elements joined with no separator, NULL shown as `?`. -#}
{% macro grid(arr, null_mark="?") -%}
array_to_string({{ arr }}, '', {{ null_mark | literal }})
{%- endmacro %}
