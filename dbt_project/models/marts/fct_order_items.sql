{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook="{{ delete_order_customers() }}",
    indexes=[
      {'columns': ['order_item_id'], 'unique': True},
      {'columns': ['customer_id', 'product_id']},
      {'columns': ['load_id']},
    ],
  )
}}
-- depends_on: {{ ref('int_identifier_days') }}
-- depends_on: {{ ref('stg_events__aliases') }}
-- depends_on: {{ ref('stg_events__orders') }}
-- depends_on: {{ ref('int_identities_stitched') }}
-- One row per product line of an order.
--
-- Incremental runs rewrite the lines of the customers whose orders fct_orders rewrote (the
-- pre-hook deletes them first), through the customer and message_id indexes.
{%- set plan = orders_plan() %}
with

orders as (

    select * from {{ ref('fct_orders') }}
    {%- if plan.incremental %}
    where customer_id in ({{ order_customers(plan) }})
    {%- endif %}

),

items as not materialized (

    select * from {{ ref('stg_events__order_items') }}

),

final as (

    select
        {{ surrogate_key(['orders.order_id', 'items.line_number']) }} as order_item_id,
        orders.order_id,
        items.line_number,
        orders.customer_id,
        items.product_id,
        items.sku,
        items.category,
        items.brand,
        items.price,
        items.quantity,
        items.price * items.quantity as line_revenue,
        orders.ordered_at,
        orders.load_id
    from orders
    inner join items on orders.message_id = items.message_id

)

select * from final
