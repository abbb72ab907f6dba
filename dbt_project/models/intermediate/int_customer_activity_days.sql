{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook=[
      "{{ lock_change_counts(ref('fct_sessions')) }}",
      "{{ lock_change_counts(ref('fct_orders')) }}",
      "{{ delete_changed_activity_days() }}",
    ],
    post_hook=[
      "{{ count_activity_changes() }}",
      "{{ consume_change_counts(ref('fct_sessions')) }}",
      "{{ consume_change_counts(ref('fct_orders')) }}",
    ],
  )
}}
-- One row per customer and UTC day with a session or an order: sessions, product views, cart
-- adds, orders and revenue. What active_customers counts distinct customers from, a row per
-- customer-day instead of every session.
--
-- Incremental runs recompute the customer-days whose sessions or orders changed, whoever
-- changed them (new loads, rewritten sessions, identity moves, an erasure): the triggers of
-- fct_sessions and fct_orders list them in <table>__changes (macros/change_counts.sql); the
-- pre-hook deletes their rows. The result equals a full refresh. This table's own triggers
-- count its rows per every column but load_id, so active_customers sees the rows that really
-- changed (a customer-day recomputed to the same figures cancels out).
{%- set changed = changed_activity_days() %}
with

-- not materialized: incremental runs read a few customers of each through indexes

sessions as not materialized (

    select * from {{ ref('fct_sessions') }}

),

orders as not materialized (

    select * from {{ ref('fct_orders') }}

),

{% if changed %}

scope as (

    {{ changed }}

),

session_days as (

    select
        sessions.customer_id,
        sessions.session_date as day,
        count(*) as sessions,
        sum(sessions.product_views) as product_views,
        sum(sessions.cart_adds) as cart_adds,
        max(sessions.load_id) as load_id
    from scope
    inner join sessions
        on
            scope.customer_id = sessions.customer_id
            and scope.day = sessions.session_date
    group by sessions.customer_id, sessions.session_date

),

order_days as (

    select
        orders.customer_id,
        orders.order_date as day,
        count(*) as orders,
        count(*) filter (where orders.customer_order_number = 1) as first_orders,
        sum(orders.revenue) as revenue,
        max(orders.load_id) as load_id
    from scope
    inner join orders
        on
            scope.customer_id = orders.customer_id
            and scope.day = orders.order_date
    group by orders.customer_id, orders.order_date

),

{% else %}

session_days as (

    select
        customer_id,
        session_date as day,
        count(*) as sessions,
        sum(product_views) as product_views,
        sum(cart_adds) as cart_adds,
        max(load_id) as load_id
    from sessions
    where customer_id is not null
    group by customer_id, session_date

),

order_days as (

    select
        customer_id,
        order_date as day,
        count(*) as orders,
        count(*) filter (where customer_order_number = 1) as first_orders,
        sum(revenue) as revenue,
        max(load_id) as load_id
    from orders
    where customer_id is not null
    group by customer_id, order_date

),

{% endif %}

final as (

    select
        coalesce(session_days.customer_id, order_days.customer_id) as customer_id,
        coalesce(session_days.day, order_days.day) as day,
        coalesce(session_days.sessions, 0) as sessions,
        coalesce(session_days.product_views, 0) as product_views,
        coalesce(session_days.cart_adds, 0) as cart_adds,
        coalesce(order_days.orders, 0) as orders,
        coalesce(order_days.first_orders, 0) as first_orders,
        coalesce(order_days.revenue, 0) as revenue,
        greatest(session_days.load_id, order_days.load_id) as load_id
    from session_days
    full outer join order_days
        on
            session_days.customer_id = order_days.customer_id
            and session_days.day = order_days.day

)

select * from final
