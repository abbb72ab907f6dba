{{
  config(
    materialized='incremental',
    incremental_strategy='replace_days',
    day_column='event_date',
    on_schema_change='fail',
    indexes=[
      {'columns': ['category_day_key'], 'unique': True},
      {'columns': ['event_date']},
      {'columns': ['load_id']},
    ],
  )
}}
-- Product events with a category rolled up per anonymous id, user, category and UTC day: what
-- customer_features computes category affinities from. Incremental runs recompute the days the
-- new loads have product events on.
with

scope as (

    -- incremental runs: every product event of the days the new loads touched
    {{ rows_of_touched_days(ref('stg_events__product_events')) }}

),

final as (

    select
        anonymous_id,
        user_id,
        category,
        (event_at at time zone 'UTC')::date as event_date,
        count(*) as events,
        max(load_id) as load_id
    from scope
    where category is not null
    group by 1, 2, 3, 4

)

select
    {{ surrogate_key(['anonymous_id', 'user_id', 'category', 'event_date']) }} as category_day_key,
    *
from final
