-- One row per product seen in product or order events, with its latest attributes.
with

latest as (

    select * from {{ ref('int_product_latest') }}

),

product_days as (

    select * from {{ ref('int_product_days') }}

),

order_items as (

    select * from {{ ref('fct_order_items') }}

),

activity as (

    select
        product_id,
        min(first_event_at) as first_seen_at,
        sum(views)::bigint as views,
        sum(cart_adds)::bigint as cart_adds
    from product_days
    group by product_id

),

sales as (

    select
        product_id,
        count(distinct order_id) as orders,
        sum(quantity) as units_sold,
        sum(line_revenue) as revenue
    from order_items
    group by product_id

),

final as (

    select
        coalesce(latest.product_id, sales.product_id) as product_id,
        latest.sku,
        latest.product_name,
        latest.category,
        latest.brand,
        latest.price,
        activity.first_seen_at,
        coalesce(activity.views, 0) as views,
        coalesce(activity.cart_adds, 0) as cart_adds,
        coalesce(sales.orders, 0) as orders,
        coalesce(sales.units_sold, 0) as units_sold,
        coalesce(sales.revenue, 0) as revenue
    from latest
    full outer join sales on latest.product_id = sales.product_id
    left join activity on coalesce(latest.product_id, sales.product_id) = activity.product_id

)

select * from final
