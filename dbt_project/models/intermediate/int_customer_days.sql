{{ config(materialized='view') }}
-- One row per customer per day since their first visit (over the last
-- var('segment_history_days') days up to the as-of date): what lifecycle rules need. A view:
-- customer_segments_daily is its only reader and stores the same rows with their segment (a
-- full refresh reads every row of it; incremental runs compute the few customers they must
-- with the same macro, customer_days_ctes).
with

activity_hours as (

    select * from {{ ref('int_activity_hours') }}

),

identities as (

    select * from {{ ref('int_identities_stitched') }}

),

orders as (

    select * from {{ ref('fct_orders') }}

),

bounds as (

    select
        {{ as_of_date() }} as as_of_date,
        {{ as_of_date() }} - {{ var('segment_history_days') }} + 1 as first_day

),

activity as (

    select
        coalesce(activity_hours.user_id, identities.customer_id) as customer_id,
        activity_hours.event_date as day,
        max(activity_hours.load_id) as load_id
    from activity_hours
    left join identities on identities.identifier = activity_hours.anonymous_id
    group by 1, 2

),

daily_orders as (

    select
        customer_id,
        order_date as day,
        count(*) as orders,
        max(load_id) as load_id
    from orders
    group by 1, 2

),

{{ customer_days_ctes() }}

select * from customer_days
