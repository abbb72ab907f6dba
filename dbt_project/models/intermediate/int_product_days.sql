{{
  config(
    materialized='incremental',
    incremental_strategy='replace_days',
    day_column='event_date',
    on_schema_change='fail',
    indexes=[
      {'columns': ['product_day_key'], 'unique': True},
      {'columns': ['event_date']},
      {'columns': ['load_id']},
    ],
  )
}}
-- Product events rolled up per product and UTC day: what dim_products counts views and cart
-- adds from. Incremental runs recompute the days the new loads have product events on.
with

scope as (

    -- incremental runs: every product event of the days the new loads touched
    {{ rows_of_touched_days(ref('stg_events__product_events')) }}

),

final as (

    select
        product_id,
        (event_at at time zone 'UTC')::date as event_date,
        min(event_at) as first_event_at,
        count(*) filter (where event_name = 'Product Viewed') as views,
        count(*) filter (where event_name = 'Product Added') as cart_adds,
        max(load_id) as load_id
    from scope
    group by 1, 2

)

select
    {{ surrogate_key(['product_id', 'event_date']) }} as product_day_key,
    *
from final
