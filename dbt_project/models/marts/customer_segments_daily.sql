-- Each customer's lifecycle segment on each day: how segments move over time.
-- Exactly one segment per customer and day; the rules live in the lifecycle_segment macro.
with

customer_days as (

    select * from {{ ref('int_customer_days') }}

),

final as (

    select
        customer_id,
        day,
        {{ lifecycle_segment('days_since_first_seen', 'days_since_active', 'orders_to_date') }}
            as lifecycle_segment,
        days_since_first_seen,
        days_since_active,
        orders_to_date
    from customer_days

)

select * from final
