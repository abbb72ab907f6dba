-- Customer x product signals for recommendations: views, cart adds and purchases, weighted by
-- var('weight_view'), var('weight_cart') and var('weight_purchase').
with

product_events as (

    select * from {{ ref('stg_events__product_events') }}
    where event_name in ('Product Viewed', 'Product Clicked', 'Product Added')

),

identities as (

    select * from {{ ref('int_identities_stitched') }}

),

order_items as (

    select * from {{ ref('fct_order_items') }}

),

browsing as (

    select
        coalesce(product_events.user_id, identities.customer_id) as customer_id,
        product_events.product_id,
        count(*) filter (where event_name <> 'Product Added') as views,
        count(*) filter (where event_name = 'Product Added') as cart_adds,
        max(product_events.event_at) as last_browsed_at
    from product_events
    left join identities on identities.identifier = product_events.anonymous_id
    group by 1, 2

),

buying as (

    select
        customer_id,
        product_id,
        sum(quantity) as units_bought,
        count(distinct order_id) as purchases,
        max(ordered_at) as last_bought_at
    from order_items
    group by 1, 2

),

final as (

    select
        customer_id,
        product_id,
        coalesce(browsing.views, 0) as views,
        coalesce(browsing.cart_adds, 0) as cart_adds,
        coalesce(buying.purchases, 0) as purchases,
        coalesce(buying.units_bought, 0) as units_bought,
        greatest(browsing.last_browsed_at, buying.last_bought_at) as last_interaction_at,
        buying.last_bought_at,
        (
            {{ var('weight_view') }} * coalesce(browsing.views, 0)
            + {{ var('weight_cart') }} * coalesce(browsing.cart_adds, 0)
            + {{ var('weight_purchase') }} * coalesce(buying.purchases, 0)
        )::numeric as weight
    from browsing
    full outer join buying using (customer_id, product_id)

)

select * from final
where customer_id is not null
