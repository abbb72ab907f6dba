-- One row per product seen in product or order events, with its latest attributes.
with

product_events as (

    select * from {{ ref('stg_events__product_events') }}

),

order_items as (

    select * from {{ ref('fct_order_items') }}

),

latest as (

    select distinct on (product_id)
        product_id,
        sku,
        product_name,
        category,
        brand,
        price
    from product_events
    where price is not null
    order by product_id asc, event_at desc, message_id desc

),

activity as (

    select
        product_id,
        min(event_at) as first_seen_at,
        count(*) filter (where event_name = 'Product Viewed') as views,
        count(*) filter (where event_name = 'Product Added') as cart_adds
    from product_events
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
