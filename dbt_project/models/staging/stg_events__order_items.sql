{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    indexes=[{'columns': ['message_id', 'line_number'], 'unique': True},
             {'columns': ['load_id']}, {'columns': ['product_id']}],
  )
}}
-- One row per product line of an Order Completed call.
with

orders as (

    select * from {{ ref('stg_events__orders') }}
    where true {{ new_loads_only() }}

),

lines as (

    select
        orders.message_id,
        orders.order_id,
        item.ordinality::integer as line_number,
        item.value as line,
        orders.load_id
    from orders
    cross join lateral jsonb_array_elements(
        case when jsonb_typeof(orders.products) = 'array' then orders.products else '[]' end
    ) with ordinality as item (value, ordinality)

),

renamed as (

    select
        ---------- ids
        message_id,
        order_id,
        line_number,
        line ->> 'product_id' as product_id,

        ---------- product
        line ->> 'sku' as sku,
        line ->> 'name' as product_name,
        lower(line ->> 'category') as category,
        line ->> 'brand' as brand,

        ---------- numerics
        coalesce({{ to_numeric("line ->> 'price'") }}, 0) as price,
        coalesce({{ to_numeric("line ->> 'quantity'") }}, 1)::integer as quantity,

        ---------- lineage
        load_id

    from lines

)

select * from renamed
