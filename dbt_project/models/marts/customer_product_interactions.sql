{{
  config(
    materialized='incremental',
    unique_key=['customer_id', 'product_id'],
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    pre_hook="{{ delete_moved_customers(unprocessed_load_ids(
        [ref('stg_events__product_events'), ref('fct_order_items')])) }}",
    post_hook="{{ record_processed_loads(
        [ref('stg_events__product_events'), ref('fct_order_items')]) }}",
  )
}}
-- depends_on: {{ ref('int_identifier_days') }}
-- depends_on: {{ ref('stg_events__aliases') }}
-- Customer x product signals for recommendations: views, cart adds and purchases, weighted by
-- var('weight_view'), var('weight_cart') and var('weight_purchase').
--
-- Incremental runs rewrite the (customer, product) pairs new loads touched: browsing counts
-- are the stored ones plus the new events' (events are only ever appended, and the side
-- table customer_product_interactions__loads makes sure each load is added once), purchases are
-- recounted from fct_order_items. Customers whose identifiers new loads moved (an anonymous
-- device tied to a user) lose their rows in the pre-hook and are recomputed from every event.
-- The result equals a full refresh.
with

-- not materialized: incremental runs read a few rows of each through indexes

product_events as not materialized (

    select * from {{ ref('stg_events__product_events') }}
    where event_name in ('Product Viewed', 'Product Clicked', 'Product Added')

),

identities as not materialized (

    select * from {{ ref('int_identities_stitched') }}

),

order_items as not materialized (

    select * from {{ ref('fct_order_items') }}

),

{% if is_incremental() %}
{%- set new_loads = unprocessed_load_ids(
    [ref('stg_events__product_events'), ref('fct_order_items')]) %}

moved as (

    {{ moved_customers(new_loads) }}

),

new_browsing as (

    {{ browsing_counts('product_events.load_id in (' ~ new_loads ~ ')') }}

),

touched as (

    -- pairs with new events or new orders, of customers whose identifiers stayed put, with
    -- the new events' counts (one pass: no join between two estimates of new rows, which
    -- the planner, before statistics know the new loads, may take for one row each)
    select
        pairs.customer_id,
        pairs.product_id,
        sum(pairs.views)::bigint as views,
        sum(pairs.cart_adds)::bigint as cart_adds,
        max(pairs.last_browsed_at) as last_browsed_at,
        max(pairs.load_id) as load_id
    from (
        select
            customer_id,
            product_id,
            views,
            cart_adds,
            last_browsed_at,
            load_id
        from new_browsing
        union all
        select
            customer_id,
            product_id,
            0 as views,
            0 as cart_adds,
            null::timestamptz as last_browsed_at,
            null::bigint as load_id
        from order_items
        where load_id in ({{ new_loads }})
    ) as pairs
    where not exists (select from moved where moved.customer_id = pairs.customer_id)
    group by pairs.customer_id, pairs.product_id

),

browsing as (

    select
        touched.customer_id,
        touched.product_id,
        coalesce(kept.views, 0) + touched.views as views,
        coalesce(kept.cart_adds, 0) + touched.cart_adds as cart_adds,
        greatest(kept.last_browsed_at, touched.last_browsed_at) as last_browsed_at,
        greatest(kept.load_id, touched.load_id) as load_id
    from touched
    left join lateral (
        select stored.*
        from {{ this }} as stored
        where stored.customer_id = touched.customer_id and stored.product_id = touched.product_id
        -- keeps the planner from flattening it into a hash join over every row
        offset 0  -- noqa: AM09
    ) as kept on true

    union all

    -- customers identifiers moved between: every event of theirs
    {%- set moved_events %}
        (
            product_events.user_id in (select customer_id from moved)
            or product_events.anonymous_id in (
                select tied.identifier
                from moved
                inner join identities as tied on tied.customer_id = moved.customer_id
            )
        )
        and coalesce(product_events.user_id, identities.customer_id) in (select customer_id from moved)
    {%- endset %}
    {{ browsing_counts(moved_events) }}

),

buying as (

    select
        order_items.customer_id,
        order_items.product_id,
        sum(order_items.quantity) as units_bought,
        count(distinct order_items.order_id) as purchases,
        max(order_items.ordered_at) as last_bought_at,
        max(order_items.load_id) as load_id
    from (
        select
            customer_id,
            product_id
        from browsing
        union
        select
            moved.customer_id,
            placed.product_id
        from moved
        inner join order_items as placed on placed.customer_id = moved.customer_id
    ) as pairs
    cross join lateral (
        select placed.*
        from order_items as placed
        where placed.customer_id = pairs.customer_id and placed.product_id = pairs.product_id
        offset 0  -- noqa: AM09
    ) as order_items
    group by 1, 2

),

{% else %}

browsing as (

    {{ browsing_counts() }}

),

buying as (

    select
        customer_id,
        product_id,
        sum(quantity) as units_bought,
        count(distinct order_id) as purchases,
        max(ordered_at) as last_bought_at,
        max(load_id) as load_id
    from order_items
    group by 1, 2

),

{% endif %}

final as (

    select
        customer_id,
        product_id,
        coalesce(browsing.views, 0) as views,
        coalesce(browsing.cart_adds, 0) as cart_adds,
        coalesce(buying.purchases, 0) as purchases,
        coalesce(buying.units_bought, 0) as units_bought,
        browsing.last_browsed_at,
        greatest(browsing.last_browsed_at, buying.last_bought_at) as last_interaction_at,
        buying.last_bought_at,
        (
            {{ var('weight_view') }} * coalesce(browsing.views, 0)
            + {{ var('weight_cart') }} * coalesce(browsing.cart_adds, 0)
            + {{ var('weight_purchase') }} * coalesce(buying.purchases, 0)
        )::numeric as weight,
        greatest(browsing.load_id, buying.load_id) as load_id
    from browsing
    full outer join buying using (customer_id, product_id)

)

select * from final
where customer_id is not null
