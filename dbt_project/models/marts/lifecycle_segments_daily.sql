{{
  config(
    materialized='incremental',
    unique_key=['day', 'lifecycle_segment'],
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    pre_hook=[
      "{{ lock_change_counts(ref('customer_segments_daily')) }}",
      "{% if is_incremental() and must_recount(ref('customer_segments_daily')) %}delete from {{ this }}{% else %}select 1{% endif %}",
    ],
    post_hook=[
      "delete from {{ this }} where customers = 0",
      "{{ consume_change_counts(ref('customer_segments_daily')) }}",
    ],
  )
}}
-- Customers per lifecycle segment and day: what the Segments dashboard charts, a few hundred
-- rows instead of one per customer and day.
--
-- Incremental runs add the changes customer_segments_daily counted since (its triggers sum
-- the rows each statement inserted and deleted, per day and segment, in
-- customer_segments_daily__changes) to the stored counts, and recount everything when that
-- table was rebuilt. The result equals a full refresh.
{%- set counted = ref('customer_segments_daily') %}
with

{% if must_recount(counted) %}

final as (

    select
        day,
        lifecycle_segment,
        count(*) as customers
    from {{ counted }}
    group by day, lifecycle_segment

)

{% else %}

changed as (

    select
        day,
        lifecycle_segment,
        delta
    from {{ change_counts_relation(counted) }}
    where delta <> 0

),

final as (

    select
        changed.day,
        changed.lifecycle_segment,
        coalesce(kept.customers, 0) + changed.delta as customers
    from changed
    left join {{ this }} as kept
        on
            changed.day = kept.day
            and changed.lifecycle_segment = kept.lifecycle_segment

)

{% endif %}

select * from final
