{#- Column preparation macros shared by pipelines.
    Import with {% import "sql/macros/cleaning.sql" as clean %} -#}

{#- NULL when the value is one of the sentinel numbers. -#}
{% macro null_sentinels(expr, sentinels) -%}
CASE WHEN {{ expr }} IN ({{ sentinels | join(", ") }}) THEN NULL ELSE {{ expr }} END
{%- endmacro %}

{#- NULL for dates whose year is below 1000 (placeholder dates such as 0001-01-01). -#}
{% macro valid_date(expr) -%}
CASE WHEN date_part('year', {{ expr }}) < 1000 THEN NULL ELSE {{ expr }} END
{%- endmacro %}

{#- A default for NULL or empty strings. -#}
{% macro default_if_blank(expr, default) -%}
CASE WHEN {{ expr }} IS NULL OR {{ expr }} = '' THEN {{ default | string | literal }} ELSE {{ expr }} END
{%- endmacro %}

{#- Applies a named preparation: sentinel, date, default_999, or none. -#}
{% macro prepare(expr, prep, sentinels) -%}
{%- if prep == "sentinel" %}{{ null_sentinels(expr, sentinels) }}
{%- elif prep == "date" %}{{ valid_date(expr) }}
{%- elif prep == "default_999" %}{{ default_if_blank(expr, "999") }}
{%- else %}{{ expr }}{% endif -%}
{%- endmacro %}
