-- Revenue in the marts equals revenue in the raw Order Completed calls (first call per order),
-- so nothing is lost or double counted between raw.events and fct_orders / fct_order_items.
with

raw_orders as (

    select distinct on (payload #>> '{properties,order_id}')
        payload #>> '{properties,order_id}' as order_id,
        coalesce(
            (payload #>> '{properties,revenue}')::numeric,
            (payload #>> '{properties,total}')::numeric, 0
        ) as revenue
    from {{ source('raw', 'events') }}
    where type = 'track' and event = 'Order Completed'
    order by payload #>> '{properties,order_id}', event_at, message_id

),

totals as (

    select
        (select coalesce(sum(revenue), 0) from raw_orders) as raw_revenue,
        (select coalesce(sum(revenue), 0) from {{ ref('fct_orders') }}) as mart_revenue,
        (select count(*) from raw_orders) as raw_orders,
        (select count(*) from {{ ref('fct_orders') }}) as mart_orders,
        (select coalesce(sum(revenue), 0) from {{ ref('dim_customers') }}) as customer_revenue

)

select *
from totals
where
    raw_revenue <> mart_revenue
    or raw_orders <> mart_orders
    or raw_revenue <> customer_revenue
