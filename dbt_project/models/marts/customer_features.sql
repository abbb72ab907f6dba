-- One row per customer: what ML jobs and audiences filter on. Everything is as of the as-of
-- date (the last day with events unless var('as_of_date') is set).
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

category_days as (

    select * from {{ ref('int_category_days') }}

),

push as (

    select * from {{ ref('stg_events__push') }}

),

as_of as (

    select {{ as_of_date() }} as as_of_date

),

resolved as (

    select
        coalesce(activity_hours.user_id, identities.customer_id) as customer_id,
        activity_hours.event_date,
        activity_hours.hour_of_week,
        activity_hours.local_time_known,
        activity_hours.events,
        activity_hours.sessions_started
    from activity_hours
    left join identities on identities.identifier = activity_hours.anonymous_id

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

category_views as (

    select
        coalesce(category_days.user_id, identities.customer_id) as customer_id,
        category_days.category,
        sum(category_days.events) as n
    from category_days
    left join identities on identities.identifier = category_days.anonymous_id
    group by 1, 2

),

affinities as (

    select
        customer_id,
        jsonb_object_agg(category, round(n::numeric / total, 4) order by category) as category_affinity,
        (array_agg(category order by n desc, category asc))[1] as top_category
    from (
        select
            *,
            sum(n) over (partition by customer_id) as total
        from category_views
    ) as shares
    group by customer_id

),

slot_counts as (

    -- hour of week in local time (0 = Monday 00:00): the device's own time zone on each call,
    -- else the customer's (int_activity_hours)
    select
        resolved.customer_id,
        case
            when resolved.local_time_known then resolved.hour_of_week
            else
                (extract(isodow from shifted.local_at)::int - 1) * 24
                + extract(hour from shifted.local_at)::int
        end as slot,
        sum(resolved.events) as n
    from resolved
    inner join customers on resolved.customer_id = customers.customer_id
    cross join lateral (
        select
            (resolved.event_date + make_interval(hours => resolved.hour_of_week % 24))
            at time zone 'UTC' at time zone coalesce(customers.time_zone, 'UTC') as local_at
    ) as shifted
    group by 1, 2

),

slot_shares as (

    select
        customer_id,
        slot,
        round(n::numeric / sum(n) over (partition by customer_id), 4)::float8 as share,
        -- empty hours between this one and the previous active one
        slot - coalesce(lag(slot) over (partition by customer_id order by slot), -1) - 1
            as empty_before
    from slot_counts

),

hour_of_week as (

    -- shares of activity per hour of week, summing to 1: 168 numbers written out from the
    -- active hours alone (each preceded by its run of zeros), not from 168 rows per customer
    select
        customer_id,
        (
            '{'
            || string_agg(repeat('0,', empty_before) || share::text, ',' order by slot)
            || repeat(',0', 167 - max(slot))
            || '}'
        )::float8[] as activity_hour_of_week
    from slot_shares
    group by customer_id

),

push_stats as (

    select
        coalesce(push.user_id, identities.customer_id) as customer_id,
        count(*) filter (where push_event = 'received') as pushes_received,
        count(*) filter (where push_event = 'tapped') as pushes_tapped
    from push
    left join identities on identities.identifier = push.anonymous_id
    group by 1

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
        coalesce(affinities.category_affinity, '{}'::jsonb) as category_affinity,
        affinities.top_category,
        coalesce(hour_of_week.activity_hour_of_week, array_fill(0::float8, array[168]))
            as activity_hour_of_week,
        ---------- push engagement so far
        coalesce(push_stats.pushes_received, 0) as pushes_received,
        coalesce(push_stats.pushes_tapped, 0) as pushes_tapped,
        case
        when coalesce(push_stats.pushes_received, 0) > 0
            then round(push_stats.pushes_tapped::numeric / push_stats.pushes_received, 4)
        end
        as push_tap_rate
    from customers
    cross join as_of
    left join activity using (customer_id)
    left join order_stats using (customer_id)
    left join affinities using (customer_id)
    left join hour_of_week using (customer_id)
    left join push_stats using (customer_id)

)

select * from final
