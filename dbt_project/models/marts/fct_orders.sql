{{
  config(
    indexes=[
      {'columns': ['order_id'], 'unique': True},
      {'columns': ['customer_id', 'order_date']},
      {'columns': ['load_id']},
    ],
  )
}}
-- One row per order (the first Order Completed call of each order_id), with its customer and
-- the session it was placed in.
with

orders as (

    select * from {{ ref('stg_events__orders') }}

),

items as (

    select * from {{ ref('stg_events__order_items') }}

),

identities as (

    select * from {{ ref('int_identities_stitched') }}

),

first_calls as (

    select distinct on (order_id) *
    from orders
    order by order_id, event_at, message_id

),

item_summary as (

    select
        message_id,
        count(*) as line_count,
        sum(quantity) as units
    from items
    group by message_id

),

final as (

    select
        ---------- ids
        first_calls.order_id,
        coalesce(first_calls.user_id, identities.customer_id) as customer_id,
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
            partition by coalesce(first_calls.user_id, identities.customer_id)
            order by first_calls.event_at, first_calls.order_id
        ) as customer_order_number

    from first_calls
    left join identities on identities.identifier = first_calls.anonymous_id
    left join item_summary using (message_id)
    left join lateral (
        -- the order's own call, through the message_id index (not a scan of every event)
        select sessionized.session_id
        from {{ ref('int_events_sessionized') }} as sessionized
        where sessionized.message_id = first_calls.message_id
    ) as sessions on true

)

select * from final
