{% macro threshold() %}
{{ no_such_var }}
{% endmacro %}
