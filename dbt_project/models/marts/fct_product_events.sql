{{ config(materialized='view') }}
-- One row per product view, click and cart add, with the resolved customer: the time-stamped
-- browsing history recommendations train on. A view over the incremental staging table, so a
-- build costs nothing.
with

product_events as (

    select * from {{ ref('stg_events__product_events') }}

),

identities as (

    select * from {{ ref('int_identities_stitched') }}

),

final as (

    select
        product_events.message_id,
        coalesce(product_events.user_id, identities.customer_id) as customer_id,
        product_events.product_id,
        product_events.event_name,
        product_events.category,
        product_events.price,
        product_events.event_at,
        product_events.load_id
    from product_events
    left join identities on identities.identifier = product_events.anonymous_id
    where product_events.user_id is not null or product_events.anonymous_id is not null

)

select * from final
