{{ config(materialized='view') }}
-- Each customer's predicted value beside their churn risk: the latest scoring run's
-- ml.customer_value and ml.churn_scores (a view, so it is as fresh as the scores), with the
-- customers a marketer should not lose flagged.
select
    c.customer_id,
    c.lifecycle_segment,
    coalesce(v.value_band, 'not scored') as value_band,
    v.orders_to_date,
    v.predicted_orders_90d,
    v.predicted_value_90d,
    v.predicted_orders_365d,
    v.predicted_value_365d,
    v.p_alive,
    v.expected_next_order_at,
    ch.churn_probability,
    coalesce(ch.risk_band, 'not scored') as risk_band,
    coalesce(
        v.value_band in ('top', 'high') and (ch.risk_band = 'high' or v.p_alive < 0.5),
        false
    ) as valuable_at_risk,
    v.scored_at
from {{ ref('dim_customers') }} as c
left join {{ source('ml', 'customer_value') }} as v on v.customer_id = c.customer_id
left join {{ source('ml', 'churn_scores') }} as ch on ch.customer_id = c.customer_id
