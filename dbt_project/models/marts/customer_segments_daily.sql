{{
  config(
    materialized='incremental',
    incremental_strategy='window_replace',
    window_key='customer_id',
    window_start='day',
    on_schema_change='fail',
    pre_hook="{{ segment_days_pre_hook() }}",
    post_hook=[
      "{{ count_changes(['day', 'lifecycle_segment'], ['date', 'text']) }}",
      "{{ analyze_after_increment() }}",
    ],
  )
}}
-- depends_on: {{ ref('int_identifier_days') }}
-- depends_on: {{ ref('stg_events__aliases') }}
-- depends_on: {{ ref('int_identities_stitched') }}
-- depends_on: {{ ref('int_activity_hours') }}
-- depends_on: {{ ref('fct_orders') }}
-- Each customer's lifecycle segment on each day: how segments move over time.
-- Exactly one segment per customer and day; the rules live in the lifecycle_segment macro.
--
-- A full refresh stores every row of int_customer_days. An incremental run rewrites, for each
-- customer, only the days from the first one a new load changed (usually just the new day),
-- starting from the customer's stored row of the day before; everyone else gets the new days
-- carried on from their last row. Customers whose identifiers new loads moved (an anonymous
-- device tied to a user), and customers without a stored row to start from, are recomputed
-- from their own activity through indexes. The result equals a full refresh.
{%- set plan = segment_days_plan() %}
with

{% if plan.mode == 'incremental' %}

-- not materialized: each is read a few rows at a time, through indexes

identities as not materialized (

    select * from {{ ref('int_identities_stitched') }}

),

activity_hours as not materialized (

    select * from {{ ref('int_activity_hours') }}

),

orders as not materialized (

    select * from {{ ref('fct_orders') }}

),

bounds as (

    select
        {{ as_of_date() }} as as_of_date,
        {{ as_of_date() }} - {{ var('segment_history_days') }} + 1 as first_day

),

new_activity as (

    select
        coalesce(activity_hours.user_id, identities.customer_id) as customer_id,
        activity_hours.event_date as day,
        max(activity_hours.load_id) as load_id
    from activity_hours
    left join identities on identities.identifier = activity_hours.anonymous_id
    where activity_hours.load_id in ({{ plan.new_loads }})
    group by 1, 2

),

moved as (

    {{ moved_customers(plan.new_loads) }}

),

touched as (

    select
        customer_id,
        min(day) as from_day
    from (
        select
            customer_id,
            day
        from new_activity
        union all
        select
            customer_id,
            order_date as day
        from orders
        where load_id in ({{ plan.new_loads }})
    ) as changed
    group by customer_id

),

scope as (

    -- everyone stored on the last day, and everyone new loads touched: the first day to write
    select
        coalesce(kept.customer_id, touched.customer_id) as customer_id,
        least(touched.from_day, cast('{{ plan.last_day }}' as date) + 1) as from_day
    from (
        select customer_id
        from {{ this }}
        where day = cast('{{ plan.last_day }}' as date)
    ) as kept
    full outer join touched on kept.customer_id = touched.customer_id
    where not exists (
        select from moved
        where moved.customer_id = coalesce(kept.customer_id, touched.customer_id)
    )

),

-- Customers with a stored row the day before their first day to write: go on from it.

state as (

    select
        scope.customer_id,
        scope.from_day,
        prev.day - prev.days_since_first_seen as first_seen_date,
        prev.day - prev.days_since_active as last_active_before,
        prev.orders_to_date as orders_before,
        prev.load_id as load_before
    from scope
    cross join lateral (
        -- lateral: one index lookup per customer
        select stored.*
        from {{ this }} as stored
        where stored.customer_id = scope.customer_id and stored.day = scope.from_day - 1
        -- keeps the planner from flattening it into a hash join over every row
        offset 0  -- noqa: AM09
    ) as prev

),

state_changes as (

    -- what happened from the first day to write: stored days (activity and loads), new
    -- activity, and orders
    select
        customer_id,
        day,
        bool_or(active) as active,
        sum(orders) as orders,
        max(load_id) as load_id
    from (
        select
            state.customer_id,
            kept.day,
            kept.days_since_active = 0 as active,
            0 as orders,
            kept.load_id
        from state
        cross join lateral (
            select stored.*
            from {{ this }} as stored
            where stored.customer_id = state.customer_id and stored.day >= state.from_day
            offset 0  -- noqa: AM09
        ) as kept
        union all
        select
            customer_id,
            day,
            true as active,
            0 as orders,
            load_id
        from new_activity  -- all of it: only state customers' days are looked up below
        union all
        select
            orders.customer_id,
            orders.order_date as day,
            false as active,
            1 as orders,
            orders.load_id
        from state
        cross join lateral (
            select placed.*
            from orders as placed
            where placed.customer_id = state.customer_id and placed.order_date >= state.from_day
            offset 0  -- noqa: AM09
        ) as orders
    ) as changes
    group by customer_id, day

),

state_filled as (

    select
        state.customer_id,
        calendar.day::date as day,
        state.first_seen_date,
        state.last_active_before,
        state.orders_before,
        state.load_before,
        max(state_changes.day) filter (where state_changes.active) over running as last_active_since,
        sum(coalesce(state_changes.orders, 0)) over running as orders_since,
        max(state_changes.load_id) over running as load_since
    from state
    cross join bounds
    cross join lateral generate_series(state.from_day, bounds.as_of_date, interval '1 day')
        as calendar (day)
    left join state_changes
        on state_changes.customer_id = state.customer_id and state_changes.day = calendar.day
    window running as (
        partition by state.customer_id order by calendar.day
        rows between unbounded preceding and current row
    )

),

state_days as (

    select
        customer_id,
        day,
        day - first_seen_date as days_since_first_seen,
        day - coalesce(last_active_since, last_active_before) as days_since_active,
        (orders_before + orders_since)::integer as orders_to_date,
        greatest(load_before, load_since) as load_id
    from state_filled

),

-- Everyone else in scope, and the customers identifiers moved between: from their own
-- activity, found through their devices.

recomputed as (

    select customer_id from moved
    union
    select scope.customer_id
    from scope
    where not exists (select from state where state.customer_id = scope.customer_id)

),

devices as (

    select
        recomputed.customer_id,
        identities.identifier as device_key
    from recomputed
    cross join lateral (
        select tied.identifier
        from identities as tied
        where tied.customer_id = recomputed.customer_id and tied.identifier_type = 'anonymous_id'
        offset 0  -- noqa: AM09
    ) as identities
    union
    select
        recomputed.customer_id,
        seen.anonymous_id as device_key
    from recomputed
    cross join lateral (
        select days.anonymous_id
        from {{ ref('int_identifier_days') }} as days
        where days.user_id = recomputed.customer_id and days.anonymous_id is not null
        offset 0  -- noqa: AM09
    ) as seen

),

activity as (

    select
        devices.customer_id,
        activity_hours.event_date as day,
        max(activity_hours.load_id) as load_id
    from devices
    cross join lateral (
        select hours.*
        from activity_hours as hours
        where hours.device_key = devices.device_key
        offset 0  -- noqa: AM09
    ) as activity_hours
    left join identities on identities.identifier = activity_hours.anonymous_id
    where coalesce(activity_hours.user_id, identities.customer_id) = devices.customer_id
    group by 1, 2

),

daily_orders as (

    select
        orders.customer_id,
        orders.order_date as day,
        count(*) as orders,
        max(orders.load_id) as load_id
    from recomputed
    cross join lateral (
        select placed.*
        from orders as placed
        where placed.customer_id = recomputed.customer_id
        offset 0  -- noqa: AM09
    ) as orders
    group by 1, 2

),

{{ customer_days_ctes() }},

customer_day_rows as (

    select * from state_days
    union all
    select * from customer_days

),

{% else %}

customer_day_rows as (

    select * from {{ ref('int_customer_days') }}

),

{% endif %}

final as (

    select
        customer_id,
        day,
        {{ lifecycle_segment('days_since_first_seen', 'days_since_active', 'orders_to_date') }}
            as lifecycle_segment,
        days_since_first_seen,
        days_since_active,
        orders_to_date,
        load_id
    from customer_day_rows
    where day > {{ as_of_date() }} - {{ var('segment_history_days') }}

)

select * from final
