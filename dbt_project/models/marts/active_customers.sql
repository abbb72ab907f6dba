{{
  config(
    materialized='incremental',
    unique_key=['period', 'period_start'],
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    pre_hook="{% if is_incremental() %}delete from {{ this }} where period = 'last_30_days'{% else %}select 1{% endif %}",
  )
}}
-- depends_on: {{ ref('int_identities_stitched') }}
-- depends_on: {{ ref('int_identifier_days') }}
-- depends_on: {{ ref('stg_events__aliases') }}
-- Distinct customers active per UTC day, ISO week and calendar month, and the funnel of each
-- period (viewed a product, added to cart, ordered), plus one row for the 30 days ending at
-- the latest day with events: what the Overview dashboard charts, a few hundred rows instead
-- of every session and product event.
--
-- Incremental runs recompute the periods holding a day whose sessions or orders changed:
-- rows of the new loads, and every session and order of the customers whose identifiers new
-- loads moved (their history now counts for another customer). Each period is read through
-- the session_date and order_date indexes. The result equals a full refresh.
with

-- not materialized: incremental runs read a few days of each through indexes

sessions as not materialized (

    select * from {{ ref('fct_sessions') }}

),

orders as not materialized (

    select * from {{ ref('fct_orders') }}

),

bounds as (

    select {{ as_of_date() }} as as_of_date

),

{% if is_incremental() %}
{%- set new_loads = new_load_ids() %}

moved as (

    {{ moved_customers(new_loads) }}

),

touched_days as (

    select session_date as day from sessions where load_id in ({{ new_loads }})
    union
    select order_date from orders where load_id in ({{ new_loads }})
    union
    select sessions.session_date
    from moved
    inner join sessions on moved.customer_id = sessions.customer_id
    union
    select orders.order_date
    from moved
    inner join orders on moved.customer_id = orders.customer_id

),

{% else %}

touched_days as (

    select session_date as day from sessions
    union
    select order_date from orders

),

{% endif %}

periods as (

    select
        'day' as period,
        day as period_start,
        day + 1 as period_end
    from touched_days
    union
    select
        'week' as period,
        date_trunc('week', day)::date as period_start,
        (date_trunc('week', day) + interval '1 week')::date as period_end
    from touched_days
    union
    select
        'month' as period,
        date_trunc('month', day)::date as period_start,
        (date_trunc('month', day) + interval '1 month')::date as period_end
    from touched_days
    union
    select
        'last_30_days' as period,
        as_of_date - 29 as period_start,
        as_of_date + 1 as period_end
    from bounds
    where as_of_date is not null

),

visitors as (

    select
        periods.period,
        periods.period_start,
        count(distinct sessions.customer_id) as active_customers,
        count(distinct sessions.customer_id) filter (
            where sessions.product_views > 0
        ) as product_viewers,
        count(distinct sessions.customer_id) filter (where sessions.cart_adds > 0) as cart_adders,
        max(sessions.load_id) as load_id
    from periods
    inner join sessions
        on
            sessions.session_date >= periods.period_start
            and sessions.session_date < periods.period_end
    where sessions.customer_id is not null
    group by periods.period, periods.period_start

),

buyers as (

    select
        periods.period,
        periods.period_start,
        count(distinct orders.customer_id) as buyers,
        count(*) as orders,
        count(*) filter (where orders.customer_order_number = 1) as first_orders,
        sum(orders.revenue) as revenue,
        max(orders.load_id) as load_id
    from periods
    inner join orders
        on
            orders.order_date >= periods.period_start
            and orders.order_date < periods.period_end
    where orders.customer_id is not null
    group by periods.period, periods.period_start

),

final as (

    select
        periods.period,
        periods.period_start,
        periods.period_end,
        coalesce(visitors.active_customers, 0) as active_customers,
        coalesce(visitors.product_viewers, 0) as product_viewers,
        coalesce(visitors.cart_adders, 0) as cart_adders,
        coalesce(buyers.buyers, 0) as buyers,
        coalesce(buyers.orders, 0) as orders,
        coalesce(buyers.first_orders, 0) as first_orders,
        coalesce(buyers.revenue, 0) as revenue,
        greatest(visitors.load_id, buyers.load_id) as load_id
    from periods
    left join visitors
        on
            periods.period = visitors.period
            and periods.period_start = visitors.period_start
    left join buyers
        on
            periods.period = buyers.period
            and periods.period_start = buyers.period_start
    where visitors.period is not null or buyers.period is not null

)

select * from final
