{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    indexes=[{'columns': ['message_id'], 'unique': True}, {'columns': ['load_id']}],
  )
}}
-- Order Completed calls (the contract guarantees order_id and at least one product).
with

source as (

    select * from {{ source('raw', 'events') }}
    where
        type = 'track'
        and event = 'Order Completed'
        {{ new_loads_only() }}

),

renamed as (

    select
        ---------- ids
        message_id,
        payload #>> '{properties,order_id}' as order_id,
        user_id,
        anonymous_id,

        ---------- numerics
        coalesce(
            {{ to_numeric("payload #>> '{properties,revenue}'") }},
            {{ to_numeric("payload #>> '{properties,total}'") }}, 0
        ) as revenue,
        {{ to_numeric("payload #>> '{properties,total}'") }} as total,
        {{ to_numeric("payload #>> '{properties,subtotal}'") }} as subtotal,
        coalesce({{ to_numeric("payload #>> '{properties,discount}'") }}, 0) as discount,
        coalesce({{ to_numeric("payload #>> '{properties,shipping}'") }}, 0) as shipping,
        coalesce({{ to_numeric("payload #>> '{properties,tax}'") }}, 0) as tax,
        coalesce(payload #>> '{properties,currency}', 'USD') as currency,
        payload #>> '{properties,coupon}' as coupon,
        payload -> 'properties' -> 'products' as products,

        ---------- timestamps
        event_at,
        loaded_at,
        load_id

    from source

)

select * from renamed
