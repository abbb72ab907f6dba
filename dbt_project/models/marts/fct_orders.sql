{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook="{{ delete_order_customers() }}",
    post_hook="{{ count_changes(['order_date', 'customer_id'], ['date', 'text']) }}",
  )
}}
-- depends_on: {{ ref('int_identifier_days') }}
-- depends_on: {{ ref('stg_events__aliases') }}
-- One row per order (the first Order Completed call of each order_id), with its customer and
-- the session it was placed in.
--
-- Incremental runs append the new orders of customers whose new orders all come after their
-- stored ones, numbered on from their stored count (most customers who order). They rewrite
-- every order of the customers new loads moved identifiers between, re-sent an order of, or
-- brought an order placed before a stored one (macro orders_plan); the pre-hook deletes
-- those customers' rows. The result equals a full refresh.
{%- set plan = orders_plan() %}
with

-- not materialized: incremental runs read a few rows of each through indexes

orders as not materialized (

    select * from {{ ref('stg_events__orders') }}

),

items as not materialized (

    select * from {{ ref('stg_events__order_items') }}

),

identities as not materialized (

    select * from {{ ref('int_identities_stitched') }}

),

first_calls as (

    select
        calls.*,
        coalesce(calls.user_id, identities.customer_id) as customer_id
    from (
        select distinct on (order_id) *
        from orders
        order by order_id, event_at, message_id
    ) as calls
    left join identities on identities.identifier = calls.anonymous_id
    {%- if plan.incremental %}
    where
        -- every order of the customers rewritten whole, and the new orders of everyone else
        -- (an order is new when its first call is: a re-sent order keeps its first call)
        coalesce(calls.user_id, identities.customer_id) in ({{ order_customers(plan) }})
        or calls.load_id in ({{ plan.new_loads }})
    {%- endif %}

),

final as (

    select
        ---------- ids
        first_calls.order_id,
        first_calls.customer_id,
        first_calls.message_id,
        sessions.session_id,

        ---------- numerics
        first_calls.revenue,
        first_calls.total,
        first_calls.subtotal,
        first_calls.discount,
        first_calls.shipping,
        first_calls.tax,
        first_calls.currency,
        first_calls.coupon,
        coalesce(item_summary.line_count, 0) as line_count,
        coalesce(item_summary.units, 0) as units,

        ---------- lineage
        first_calls.load_id,

        ---------- timestamps
        first_calls.event_at as ordered_at,
        (first_calls.event_at at time zone 'UTC')::date as order_date,
        row_number() over (
            partition by first_calls.customer_id
            order by first_calls.event_at, first_calls.order_id
        ){% if plan.incremental %} + stored.orders{% endif %} as customer_order_number

    from first_calls
    cross join lateral (
        -- the order's lines, through the message_id index
        select
            count(*) as line_count,
            sum(items.quantity) as units
        from items
        where items.message_id = first_calls.message_id
    ) as item_summary
    left join lateral (
        -- the order's own call, through the (device_key, event_at) index
        select sessionized.session_id
        from {{ ref('int_events_sessionized') }} as sessionized
        where
            sessionized.device_key = first_calls.anonymous_id
            and sessionized.event_at = first_calls.event_at
            and sessionized.message_id = first_calls.message_id
        -- keeps the planner from flattening it into a hash join over every event
        offset 0  -- noqa: AM09
    ) as sessions on true
    {%- if plan.incremental %}
    cross join lateral (
        -- orders stored before this run: none for the rewritten customers (deleted)
        select count(*) as orders
        from {{ this }} as kept
        where kept.customer_id = first_calls.customer_id
    ) as stored
    {%- endif %}

)

select * from final
