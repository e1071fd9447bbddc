{% import "sql/macros/summary.sql" as summary -%}
{% import "sql/macros/months.sql" as months -%}
-- The prepared records, resolved against hist_rpt when it exists (spec §2.1: the
-- hist_rpt row of the record's month, the greatest, then the rules); hist_rpt is
-- read only for the batch's accounts (key bounds of `prepared`).
{%- if tables.consumer_account_hist_rpt.exists %}
WITH hist AS (
  SELECT
    h.cons_acct_key,
    to_char(h.acct_dt, '%Y-%m') AS hist_mo,
    h.acct_dt,
    h.soft_del_cd,
    {{ summary.is_deleted("h.soft_del_cd", delete_codes) }} AS hist_deleted,
    row_number() OVER (
      PARTITION BY h.cons_acct_key, to_char(h.acct_dt, '%Y-%m')
      ORDER BY h.base_ts DESC NULLS LAST, h.insert_dt DESC NULLS LAST, h.update_dt DESC NULLS LAST,
               h.insert_time DESC NULLS LAST, h.update_time DESC NULLS LAST
    ) AS hist_rank
  FROM consumer_account_hist_rpt h
  JOIN prepared p ON p.cons_acct_key = h.cons_acct_key AND p.rpt_as_of_mo = to_char(h.acct_dt, '%Y-%m')
  WHERE h.acct_dt IS NOT NULL
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
  FROM (SELECT *, {{ summary.is_deleted("soft_del_cd", delete_codes) }} AS record_deleted FROM prepared) r
  LEFT JOIN hist h
    ON h.cons_acct_key = r.cons_acct_key AND h.hist_mo = r.rpt_as_of_mo AND h.hist_rank = 1
)
{%- else %}
WITH records AS (SELECT * FROM prepared)
{%- endif %}
SELECT
  *,
  {{ summary.is_deleted("soft_del_cd", delete_codes) }} AS is_delete,
  {{ months.index("rpt_as_of_mo") }} AS month_idx
FROM records
