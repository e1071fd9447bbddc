{% import "sql/macros/months.sql" as months -%}
{% import "sql/macros/history.sql" as history -%}
-- The rows the run writes, by the set-based rule of spec §3.0: element p of the row
-- at month S comes from (1) an applied record at S − p (a delete gives NULL, except
-- at p = 0), else (2) the stored row at S, else (3) Q's stored element.
-- Most rows have one applied record in their window (a forward month, a row after a
-- backfill): for them the rule is one array operation — the stored array with one
-- element set, or the new value followed by Q's array shifted by the gap. Rows with
-- several records take the general path: one row per element, aggregated back.
-- A row's other columns come from the record at its month (`here`), else from its
-- stored row; single rows take them in the same pass that builds their arrays, so
-- only the few general-path rows are joined back to the records and stored rows.
{#- The row's columns before its arrays: `here` says the applied record `a` lies at
    the row's month; `e` is the stored row at that month (none: a new row, whose
    record is at its month). -#}
{% macro scalar_columns(here, a, e, record_ts, key, month_idx) -%}
{%- for c in columns %}
{%- if c.to == "cons_acct_key" %}
    {{ key }} AS cons_acct_key,
{%- elif c.to == "rpt_as_of_mo" %}
    {{ months.from_index(month_idx) }} AS rpt_as_of_mo,
{%- elif e is none %}
    {{ a }}.{{ c.to }} AS {{ c.to }},
{%- elif c.to == "base_ts" %}
    CASE WHEN {{ e }}.cons_acct_key IS NULL THEN {{ a }}.base_ts ELSE greatest({{ e }}.base_ts, {{ record_ts }}) END AS base_ts,
{%- elif c.to == "soft_del_cd" %}
    CASE WHEN {{ here }} THEN {{ a }}.soft_del_cd ELSE {{ e }}.soft_del_cd END AS soft_del_cd,
{%- else %}
    CASE WHEN {{ here }} AND NOT {{ a }}.is_delete THEN {{ a }}.{{ c.to }} ELSE {{ e }}.{{ c.to }} END AS {{ c.to }},
{%- endif %}
{%- endfor %}
{%- for c in ["orig_loan_am", "payment_rating_cd"] %}
{%- if e is none %}
    {{ a }}.{{ c }} AS {{ c }},
{%- else %}
    CASE WHEN {{ here }} AND NOT {{ a }}.is_delete THEN {{ a }}.{{ c }} ELSE {{ e }}.{{ c }} END AS {{ c }},
{%- endif %}
{%- endfor %}
{%- endmacro %}
WITH stored_single AS (
  -- Rows that exist, with one record: the stored arrays with one element set.
  SELECT
{{- scalar_columns("a.month_idx = t.month_idx", "a", "e", "a.base_ts", "t.cons_acct_key", "t.month_idx") }}
{%- for r in rolling %}
    CASE
      WHEN a.is_delete AND a.month_idx = t.month_idx THEN e.{{ r.array }}
      ELSE {{ history.set("e." ~ r.array, "t.month_idx - a.month_idx", "CASE WHEN a.is_delete THEN NULL ELSE a." ~ r.from ~ " END", history_length, r.type) }}
    END AS {{ r.array }}{% if not loop.last %},{% endif %}
{%- endfor %}
  FROM targets t
  JOIN effective a
    ON a.cons_acct_key = t.cons_acct_key AND a.outcome = 'applied'
    AND t.month_idx - a.month_idx BETWEEN 0 AND {{ history_length - 1 }}
  JOIN existing e ON e.cons_acct_key = t.cons_acct_key AND e.month_idx = t.month_idx
  WHERE t.records = 1 AND t.existed
),
new_single AS (
  -- New rows whose one record is their own (a value record at their month): its
  -- columns, and arrays that start now or continue Q's.
  SELECT
{{- scalar_columns("true", "a", none, "a.base_ts", "t.cons_acct_key", "t.month_idx") }}
{%- for r in rolling %}
    CASE
      WHEN np.q_idx IS NULL THEN {{ history.start("a." ~ r.from, history_length, r.type) }}
      ELSE {{ history.shift("a." ~ r.from, "t.month_idx - np.q_idx - 1", "q." ~ r.array, history_length, r.type) }}
    END AS {{ r.array }}{% if not loop.last %},{% endif %}
{%- endfor %}
  FROM targets t
  JOIN effective a
    ON a.cons_acct_key = t.cons_acct_key AND a.month_idx = t.month_idx AND a.outcome = 'applied'
  LEFT JOIN priors np ON np.cons_acct_key = t.cons_acct_key AND np.month_idx = t.month_idx
  LEFT JOIN existing q ON q.cons_acct_key = np.cons_acct_key AND q.month_idx = np.q_idx
  WHERE t.records = 1 AND NOT t.existed
),
multi AS (
  -- Rows with several records, with their prior Q (new rows only).
  SELECT t.cons_acct_key, t.month_idx, t.existed, np.q_idx
  FROM targets t
  LEFT JOIN priors np ON np.cons_acct_key = t.cons_acct_key AND np.month_idx = t.month_idx
  WHERE t.records > 1
),
stored_elements AS (
  -- Their stored rows and Q rows, one row per element (p = the element's place):
  -- narrow rows, where joining the stored arrays to every element copied them 36
  -- times.
  SELECT
    e.cons_acct_key,
    e.month_idx,
    unnest(range(0, {{ history_length }})) AS p,
{%- for r in rolling %}
    unnest(e.{{ r.array }}) AS {{ r.array }}{% if not loop.last %},{% endif %}
{%- endfor %}
  FROM existing e
  JOIN (
    SELECT cons_acct_key, month_idx FROM multi WHERE existed
    UNION
    SELECT cons_acct_key, q_idx FROM multi WHERE q_idx IS NOT NULL
  ) m ON e.cons_acct_key = m.cons_acct_key AND e.month_idx = m.month_idx
),
elements AS (
  SELECT
    m.cons_acct_key,
    m.month_idx,
    ps.p,
{%- for r in rolling %}
    CASE
      WHEN a.cons_acct_key IS NOT NULL AND (ps.p > 0 OR NOT a.is_delete)
        THEN CASE WHEN a.is_delete THEN NULL ELSE a.{{ r.from }} END
      WHEN m.existed THEN se.{{ r.array }}
      WHEN m.q_idx IS NOT NULL AND m.month_idx - ps.p <= m.q_idx THEN sq.{{ r.array }}
    END AS {{ r.array }},
{%- endfor %}
    a.base_ts AS record_ts
  FROM multi m
  CROSS JOIN (SELECT unnest(range(0, {{ history_length }})) AS p) ps
  LEFT JOIN effective a
    ON a.cons_acct_key = m.cons_acct_key AND a.month_idx = m.month_idx - ps.p AND a.outcome = 'applied'
  LEFT JOIN stored_elements se
    ON m.existed AND se.cons_acct_key = m.cons_acct_key AND se.month_idx = m.month_idx AND se.p = ps.p
  LEFT JOIN stored_elements sq
    ON sq.cons_acct_key = m.cons_acct_key AND sq.month_idx = m.q_idx
    AND sq.p = ps.p - (m.month_idx - m.q_idx)
),
several AS (
  -- One element per p, so `max` picks it; an ordered array_agg per array did the
  -- same row by row, several times slower.
  SELECT
    cons_acct_key,
    month_idx,
{%- for r in rolling %}
    make_array({% for k in range(history_length) %}max(CASE WHEN p = {{ k }} THEN {{ r.array }} END){% if not loop.last %}, {% endif %}{% endfor %}) AS {{ r.array }},
{%- endfor %}
    max(record_ts) AS record_ts
  FROM elements
  GROUP BY cons_acct_key, month_idx
),
several_rows AS (
  SELECT
{{- scalar_columns("a.cons_acct_key IS NOT NULL", "a", "e", "x.record_ts", "x.cons_acct_key", "x.month_idx") }}
{%- for r in rolling %}
    x.{{ r.array }}{% if not loop.last %},{% endif %}
{%- endfor %}
  FROM several x
  LEFT JOIN effective a
    ON a.cons_acct_key = x.cons_acct_key AND a.month_idx = x.month_idx AND a.outcome = 'applied'
  LEFT JOIN existing e ON e.cons_acct_key = x.cons_acct_key AND e.month_idx = x.month_idx
),
written AS (
  SELECT * FROM stored_single
  UNION ALL
  SELECT * FROM new_single
  UNION ALL
  SELECT * FROM several_rows
)
SELECT *, {{ history.grid("payment_rating_cd_history") }} AS payment_history_grid
FROM written
