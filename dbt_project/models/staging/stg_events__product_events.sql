{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    indexes=[{'columns': ['load_id']}, {'columns': ['event_at']}],
  )
}}
-- Product interactions from the E-commerce v2 spec, one row per call. Event-sized, so a
-- table filled incrementally, load by load.
with

source as (

    select * from {{ source('raw', 'events') }}
    where
        type = 'track'
        {{ new_loads_only() }}
        and event in (
            'Product Viewed', 'Product Clicked', 'Product Added', 'Product Removed',
            'Product Added to Wishlist'
        )

),

renamed as (

    select
        ---------- ids
        message_id,
        user_id,
        anonymous_id,
        payload #>> '{properties,product_id}' as product_id,

        ---------- product
        event as event_name,
        payload #>> '{properties,sku}' as sku,
        payload #>> '{properties,name}' as product_name,
        lower(payload #>> '{properties,category}') as category,
        payload #>> '{properties,brand}' as brand,

        ---------- numerics
        {{ to_numeric("payload #>> '{properties,price}'") }} as price,
        coalesce({{ to_numeric("payload #>> '{properties,quantity}'") }}, 1)::integer as quantity,

        ---------- timestamps
        event_at,
        loaded_at,
        load_id

    from source

)

select * from renamed
where product_id is not null
