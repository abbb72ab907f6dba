-- depends_on: {{ ref('stg_events__orders') }}
-- Revenue in the marts equals revenue in the raw Order Completed calls (first call per order),
-- so nothing is lost or double counted between raw.events and fct_orders / fct_order_items.
--
-- A full refresh (or --vars '{test_all_rows: true}') reconciles every raw order with the marts.
-- An incremental run reconciles in two links instead, so it need not scan all of raw.events:
-- raw -> staging for the loads it processed (each load's orders and revenue; older loads were
-- reconciled when they arrived and staging only appends), and staging -> marts for every order.
{% set everything = test_every_row() %}
with

raw_calls as (

    select
        message_id,
        load_id,
        event_at,
        payload #>> '{properties,order_id}' as order_id,
        coalesce(
            (payload #>> '{properties,revenue}')::numeric,
            (payload #>> '{properties,total}')::numeric, 0
        ) as revenue
    from {{ source('raw', 'events') }}
    where
        type = 'track' and event = 'Order Completed'
        {% if not everything %}and {{ recent_loads_filter() }}{% endif %}

),

{% if everything %}

source_orders as (

    select distinct on (order_id) *
    from raw_calls
    order by order_id, event_at, message_id

),

{% else %}

per_load as (

    select
        coalesce(raw_side.load_id, staged_side.load_id) as load_id,
        raw_side.calls as raw_calls,
        staged_side.calls as staged_calls,
        raw_side.revenue as raw_revenue,
        staged_side.revenue as staged_revenue
    from (
        select
            load_id,
            count(*) as calls,
            sum(revenue) as revenue
        from raw_calls
        group by load_id
    ) as raw_side
    full outer join (
        select
            load_id,
            count(*) as calls,
            sum(revenue) as revenue
        from {{ ref('stg_events__orders') }}
        where {{ recent_loads_filter() }}
        group by load_id
    ) as staged_side
        on raw_side.load_id = staged_side.load_id

),

source_orders as (

    select distinct on (order_id) *
    from {{ ref('stg_events__orders') }}
    order by order_id, event_at, message_id

),

{% endif %}

totals as (

    select
        (select coalesce(sum(revenue), 0) from source_orders) as raw_revenue,
        (select coalesce(sum(revenue), 0) from {{ ref('fct_orders') }}) as mart_revenue,
        (select count(*) from source_orders) as raw_orders,
        (select count(*) from {{ ref('fct_orders') }}) as mart_orders,
        (select coalesce(sum(revenue), 0) from {{ ref('dim_customers') }}) as customer_revenue

)

select
    'marts' as link,
    null::bigint as load_id,
    raw_revenue,
    mart_revenue,
    raw_orders,
    mart_orders,
    customer_revenue
from totals
where
    raw_revenue <> mart_revenue
    or raw_orders <> mart_orders
    or raw_revenue <> customer_revenue
{% if not everything %}

union all

select
    'raw -> staging' as link,
    load_id,
    raw_revenue,
    staged_revenue,
    raw_calls,
    staged_calls,
    null as customer_revenue
from per_load
where
    raw_calls is distinct from staged_calls
    or raw_revenue is distinct from staged_revenue
{% endif %}
