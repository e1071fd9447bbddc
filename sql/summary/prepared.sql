{% import "sql/macros/common.sql" as common -%}
{% import "sql/macros/cleaning.sql" as clean -%}
{% import "sql/macros/months.sql" as months -%}
-- Spec §2 steps 2–3: the records after the watermark that passed the checks of
-- `incoming`, prepared, deduplicated: one record per (cons_acct_key, rpt_as_of_mo).
WITH prepared AS (
  SELECT
{%- for c in columns %}
    {{ clean.prepare(c.from, c.prep | default(""), sentinels) }} AS {{ c.to }},
{%- endfor %}
    insert_ts,
    update_ts
  FROM incoming
),
ranked AS (
  SELECT
    *,
    row_number() OVER (
      PARTITION BY cons_acct_key, rpt_as_of_mo
      ORDER BY base_ts DESC, insert_ts DESC NULLS LAST, update_ts DESC NULLS LAST
    ) AS record_rank
  FROM prepared
),
deduped AS (
SELECT
{%- for c in columns %}
  {{ c.to }},
{%- endfor %}
  CASE
    WHEN acct_type_dtl_cd IN ({{ common.string_literals(orig_loan_hi_credit_types) }})
    THEN hi_credit_am ELSE credit_limit_am
  END AS orig_loan_am,
  CASE
    WHEN days_past_due IS NULL THEN NULL
    WHEN days_past_due >= 180 THEN '6'
    WHEN days_past_due >= 150 THEN '5'
    WHEN days_past_due >= 120 THEN '4'
    WHEN days_past_due >= 90 THEN '3'
    WHEN days_past_due >= 60 THEN '2'
    WHEN days_past_due >= 30 THEN '1'
    WHEN days_past_due >= 0 THEN '0'
    WHEN asset_class_cd IN ('1', '01', 'S') THEN 'S'
    WHEN asset_class_cd IN ('2', '02', 'B') THEN 'B'
    WHEN asset_class_cd IN ('3', '03', 'D') THEN 'D'
    WHEN asset_class_cd IN ('4', '04') THEN 'L'
    WHEN asset_class_cd IN ('5', '05', 'M') THEN 'M'
    WHEN asset_class_cd IN ('0', '6', 'G', 'L', 'C') THEN asset_class_cd
    ELSE NULL
  END AS payment_rating_cd
FROM ranked
WHERE record_rank = 1
)
SELECT * FROM deduped
