{{ config(materialized='view') }}
-- One row per customer per day since their first visit (over the last
-- var('segment_history_days') days up to the as-of date): what lifecycle rules need. A view:
-- customer_segments_daily is its only reader and stores the same rows with their segment.
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
        activity_hours.event_date as day
    from activity_hours
    left join identities on identities.identifier = activity_hours.anonymous_id
    group by 1, 2

),

daily_orders as (

    select
        customer_id,
        order_date as day,
        count(*) as orders
    from orders
    group by 1, 2

),

customers as (

    select
        customer_id,
        min(day) as first_seen_date
    from activity
    group by customer_id

),

grid as (

    select
        customers.customer_id,
        customers.first_seen_date,
        calendar.day::date as day
    from customers
    cross join bounds
    cross join lateral generate_series(
        greatest(customers.first_seen_date, bounds.first_day), bounds.as_of_date, interval '1 day'
    ) as calendar (day)

),

activity_before as (

    -- activity and orders before the grid's first day still count
    select
        activity.customer_id,
        max(activity.day) as last_active_before
    from activity
    cross join bounds
    where activity.day < bounds.first_day
    group by activity.customer_id

),

orders_before as (

    select
        daily_orders.customer_id,
        sum(daily_orders.orders) as orders_before
    from daily_orders
    cross join bounds
    where daily_orders.day < bounds.first_day
    group by daily_orders.customer_id

),

filled as (

    select
        grid.customer_id,
        grid.day,
        grid.first_seen_date,
        max(activity.day) over running as last_active_in_grid,
        sum(coalesce(daily_orders.orders, 0)) over running as orders_in_grid
    from grid
    left join activity
        on grid.customer_id = activity.customer_id and grid.day = activity.day
    left join daily_orders
        on grid.customer_id = daily_orders.customer_id and grid.day = daily_orders.day
    window running as (
        partition by grid.customer_id order by grid.day
        rows between unbounded preceding and current row
    )

),

final as (

    select
        filled.customer_id,
        filled.day,
        filled.day - filled.first_seen_date as days_since_first_seen,
        filled.day - coalesce(filled.last_active_in_grid, activity_before.last_active_before)
            as days_since_active,
        (filled.orders_in_grid + coalesce(orders_before.orders_before, 0))::integer
            as orders_to_date
    from filled
    left join activity_before on filled.customer_id = activity_before.customer_id
    left join orders_before on filled.customer_id = orders_before.customer_id

)

select * from final
