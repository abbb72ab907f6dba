-- One row per customer: what ML jobs and audiences filter on. Everything is as of the as-of
-- date (the last day with events unless var('as_of_date') is set). Rebuilt whole each run
-- (every customer's windows and recency move daily); the tastes and habits over all history
-- come from int_customer_tastes, which an incremental run updates for the customers it touched.
with

customers as (

    select * from {{ ref('dim_customers') }}

),

activity_hours as (

    select * from {{ ref('int_activity_hours') }}

),

identities as (

    select * from {{ ref('int_identities_stitched') }}

),

orders as (

    select * from {{ ref('fct_orders') }}

),

tastes as (

    select * from {{ ref('int_customer_tastes') }}

),

as_of as (

    select {{ as_of_date() }} as as_of_date

),

resolved as (

    select
        coalesce(activity_hours.user_id, identities.customer_id) as customer_id,
        activity_hours.event_date,
        activity_hours.events,
        activity_hours.sessions_started
    from activity_hours
    left join identities on identities.identifier = activity_hours.anonymous_id
    -- only the widest window counts here (a shop's older history is read by the tastes)
    where activity_hours.event_date > (select as_of.as_of_date - 90 from as_of)

),

activity as (

    -- a session counts in a window when it started in it
    select
        customer_id,
        (sum(sessions_started) filter (where event_date > as_of_date - 7))::bigint as sessions_7d,
        (sum(sessions_started) filter (where event_date > as_of_date - 30))::bigint as sessions_30d,
        (sum(sessions_started) filter (where event_date > as_of_date - 90))::bigint as sessions_90d,
        (sum(events) filter (where event_date > as_of_date - 30))::bigint as events_30d
    from resolved
    cross join as_of
    group by customer_id

),

order_stats as (

    select
        customer_id,
        count(*) filter (where order_date > as_of_date - 7) as orders_7d,
        count(*) filter (where order_date > as_of_date - 30) as orders_30d,
        count(*) filter (where order_date > as_of_date - 90) as orders_90d,
        coalesce(sum(revenue) filter (where order_date > as_of_date - 90), 0) as revenue_90d,
        avg(revenue) as average_order_value
    from orders
    cross join as_of
    group by customer_id

),

final as (

    select
        customers.customer_id,
        as_of.as_of_date,
        customers.lifecycle_segment,
        ---------- RFM
        as_of.as_of_date - (customers.last_seen_at at time zone 'UTC')::date as recency_days,
        as_of.as_of_date - (customers.last_order_at at time zone 'UTC')::date as days_since_last_order,
        customers.orders_count as frequency,
        customers.revenue as monetary,
        coalesce(order_stats.average_order_value, 0) as average_order_value,
        ---------- windows
        coalesce(activity.sessions_7d, 0) as sessions_7d,
        coalesce(activity.sessions_30d, 0) as sessions_30d,
        coalesce(activity.sessions_90d, 0) as sessions_90d,
        coalesce(activity.events_30d, 0) as events_30d,
        coalesce(order_stats.orders_7d, 0) as orders_7d,
        coalesce(order_stats.orders_30d, 0) as orders_30d,
        coalesce(order_stats.orders_90d, 0) as orders_90d,
        coalesce(order_stats.revenue_90d, 0) as revenue_90d,
        ---------- tastes and habits
        coalesce(tastes.category_affinity, '{}'::jsonb) as category_affinity,
        tastes.top_category,
        coalesce(tastes.activity_hour_of_week, array_fill(0::float8, array[168]))
            as activity_hour_of_week,
        ---------- push engagement so far
        coalesce(tastes.pushes_received, 0) as pushes_received,
        coalesce(tastes.pushes_tapped, 0) as pushes_tapped,
        case
        when coalesce(tastes.pushes_received, 0) > 0
            then round(tastes.pushes_tapped::numeric / tastes.pushes_received, 4)
        end
        as push_tap_rate
    from customers
    cross join as_of
    left join activity using (customer_id)
    left join order_stats using (customer_id)
    left join tastes using (customer_id)

)

select * from final
