{{ config(materialized='table') }}
-- Distinct customers active per UTC day, ISO week and calendar month, and the funnel of each
-- period (viewed a product, added to cart, ordered), plus one row for the 30 days ending at
-- the latest day with events: what the Overview dashboard charts, a few hundred rows instead
-- of every session and product event. Rebuilt on every run from int_customer_activity_days
-- (a row per customer and active day), each customer first reduced to one row per period.
with

activity as (

    select * from {{ ref('int_customer_activity_days') }}

),

bounds as (

    select {{ as_of_date() }} as as_of_date

),

in_periods as (

    select
        'day' as period,
        activity.day as period_start,
        activity.day + 1 as period_end,
        activity.*
    from activity
    union all
    select
        'week' as period,
        date_trunc('week', activity.day)::date as period_start,
        (date_trunc('week', activity.day) + interval '1 week')::date as period_end,
        activity.*
    from activity
    union all
    select
        'month' as period,
        date_trunc('month', activity.day)::date as period_start,
        (date_trunc('month', activity.day) + interval '1 month')::date as period_end,
        activity.*
    from activity
    union all
    select
        'last_30_days' as period,
        bounds.as_of_date - 29 as period_start,
        bounds.as_of_date + 1 as period_end,
        activity.*
    from activity
    inner join bounds
        on activity.day > bounds.as_of_date - 30 and activity.day <= bounds.as_of_date

),

per_customer as (

    select
        period,
        period_start,
        period_end,
        customer_id,
        sum(sessions) > 0 as active,
        sum(product_views) > 0 as viewed,
        sum(cart_adds) > 0 as added,
        sum(orders) as orders,
        sum(first_orders) as first_orders,
        sum(revenue) as revenue,
        max(load_id) as load_id
    from in_periods
    group by period, period_start, period_end, customer_id

),

final as (

    select
        period,
        period_start,
        period_end,
        count(*) filter (where active) as active_customers,
        count(*) filter (where viewed) as product_viewers,
        count(*) filter (where added) as cart_adders,
        count(*) filter (where orders > 0) as buyers,
        sum(orders) as orders,
        sum(first_orders) as first_orders,
        sum(revenue) as revenue,
        max(load_id) as load_id
    from per_customer
    group by period, period_start, period_end

)

select * from final
