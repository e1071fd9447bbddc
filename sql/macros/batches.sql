{#- Which source records a run reads. Import with
    {% import "sql/macros/batches.sql" as batches %} -#}

{#- Records after the watermark. A record without a time (`ts` NULL) cannot be
    ordered; it is read once, by the first run after its `fallback` time (e.g. its
    insert time), so that a check can quarantine it instead of losing it silently. -#}
{% macro after_watermark(ts, fallback, watermark) -%}
({{ ts }} > TIMESTAMP {{ watermark | literal }} OR ({{ ts }} IS NULL AND {{ fallback }} > TIMESTAMP {{ watermark | literal }}))
{%- endmacro %}

{#- The time a record moves the watermark to: its own, else its fallback. -#}
{% macro record_time(ts, fallback) -%}
COALESCE({{ ts }}, {{ fallback }})
{%- endmacro %}
