{% import "sql/macros/cleaning.sql" as clean -%}
{% import "sql/macros/months.sql" as months -%}
-- Spec §2 steps 1–3: records after the watermark, prepared, deduplicated.
WITH prepared AS (
  SELECT
{%- for c in columns %}
    {{ clean.prepare(c.from, c.prep | default(""), sentinels) }} AS {{ c.to }},
{%- endfor %}
    insert_ts,
    update_ts
  FROM accounts
  WHERE base_ts > TIMESTAMP '{{ watermark }}'
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
    WHEN acct_type_dtl_cd IN ({% for t in orig_loan_hi_credit_types %}'{{ t }}'{% if not loop.last %}, {% endif %}{% endfor %})
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
{%- if tables.consumer_account_hist_rpt.exists %},
-- Spec §2.1: the hist_rpt row of the record's month (the greatest), then the rules.
hist AS (
  SELECT
    cons_acct_key,
    to_char(acct_dt, '%Y-%m') AS hist_mo,
    acct_dt,
    soft_del_cd,
    COALESCE(soft_del_cd IN ({% for d in delete_codes %}'{{ d }}'{% if not loop.last %}, {% endif %}{% endfor %}), false) AS hist_deleted,
    row_number() OVER (
      PARTITION BY cons_acct_key, to_char(acct_dt, '%Y-%m')
      ORDER BY base_ts DESC NULLS LAST, insert_dt DESC NULLS LAST, update_dt DESC NULLS LAST,
               insert_time DESC NULLS LAST, update_time DESC NULLS LAST
    ) AS hist_rank
  FROM consumer_account_hist_rpt
  WHERE acct_dt IS NOT NULL
),
records AS (
  SELECT
{%- for c in columns %}
{%- if c.to == "acct_dt" %}
    CASE
      WHEN h.cons_acct_key IS NULL THEN r.acct_dt
      WHEN r.record_deleted AND h.hist_deleted THEN NULL
      WHEN NOT r.record_deleted AND (h.hist_deleted OR r.acct_dt > h.acct_dt) THEN r.acct_dt
      WHEN NOT h.hist_deleted AND (r.record_deleted OR h.acct_dt > r.acct_dt) THEN h.acct_dt
      ELSE r.acct_dt
    END AS acct_dt,
{%- elif c.to == "soft_del_cd" %}
    CASE
      WHEN h.cons_acct_key IS NULL OR (r.record_deleted AND h.hist_deleted) THEN r.soft_del_cd
      WHEN NOT r.record_deleted AND (h.hist_deleted OR r.acct_dt > h.acct_dt) THEN r.soft_del_cd
      WHEN NOT h.hist_deleted AND (r.record_deleted OR h.acct_dt > r.acct_dt) THEN h.soft_del_cd
      ELSE r.soft_del_cd
    END AS soft_del_cd,
{%- else %}
    r.{{ c.to }},
{%- endif %}
{%- endfor %}
    r.orig_loan_am,
    r.payment_rating_cd
  FROM (SELECT *, COALESCE(soft_del_cd IN ({% for d in delete_codes %}'{{ d }}'{% if not loop.last %}, {% endif %}{% endfor %}), false) AS record_deleted FROM deduped) r
  LEFT JOIN hist h
    ON h.cons_acct_key = r.cons_acct_key AND h.hist_mo = r.rpt_as_of_mo AND h.hist_rank = 1
)
{%- else %},
records AS (SELECT * FROM deduped)
{%- endif %}
SELECT
  *,
  COALESCE(soft_del_cd IN ({% for d in delete_codes %}'{{ d }}'{% if not loop.last %}, {% endif %}{% endfor %}), false) AS is_delete,
  {{ months.index("rpt_as_of_mo") }} AS month_idx
FROM records
