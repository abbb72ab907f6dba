{{
  config(
    materialized='incremental',
    unique_key='product_id',
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    indexes=[{'columns': ['product_id'], 'unique': True}, {'columns': ['load_id']}],
  )
}}
-- Each product's latest attributes (the latest product event with a price). Incremental runs
-- compare each touched product's latest event in the new loads with the one kept.
with

priced as (

    select
        product_id,
        sku,
        product_name,
        category,
        brand,
        price,
        event_at,
        message_id,
        load_id
    from {{ ref('stg_events__product_events') }}
    where price is not null {{ new_loads_only('load_id') }}

),

candidates as (

    select * from priced
    {% if is_incremental() %}
        union all
        select kept.*
        from {{ this }} as kept
        where kept.product_id in (select priced.product_id from priced)
    {% endif %}

),

final as (

    select distinct on (product_id) *
    from candidates
    order by product_id asc, event_at desc, message_id desc

)

select * from final
