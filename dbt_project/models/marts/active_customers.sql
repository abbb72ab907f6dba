{{
  config(
    materialized='incremental',
    unique_key=['period', 'period_start'],
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    pre_hook="{{ lock_change_counts(ref('int_customer_activity_days')) }}",
    post_hook=[
      "delete from {{ this }} where active_customers = 0 and buyers = 0",
      "delete from {{ this }} where period = 'last_30_days' and period_start < (select max(period_start) from {{ this }} where period = 'last_30_days')",
      "{{ consume_change_counts(ref('int_customer_activity_days')) }}",
    ],
  )
}}
-- Distinct customers active per UTC day, ISO week and calendar month, and the funnel of each
-- period (viewed a product, added to cart, ordered), plus one row for the 30 days ending at
-- the latest day with events: what the Overview dashboard charts, a few hundred rows instead
-- of every session and product event.
--
-- Distinct counts do not add up, but their changes do, customer by customer. Incremental runs
-- read the rows of int_customer_activity_days that changed since (its triggers count them, per
-- every column, in int_customer_activity_days__changes: +1 inserted, -1 deleted), and for each
-- customer and period they touch compare the customer's period before (today's rows, minus
-- those added, plus those removed) with after (today's rows): the differences of the counts
-- are added to the stored ones. The last 30 days move every day and are recounted through the
-- day index. A full build, or a rebuilt int_customer_activity_days, counts everything. The
-- result equals a full refresh.
{%- set counted = ref('int_customer_activity_days') %}
{%- set recount = must_recount(counted) %}
with

activity as not materialized (

    select * from {{ counted }}

),

bounds as (

    select {{ as_of_date() }} as as_of_date

),

last_30_days as (

    select
        'last_30_days' as period,
        bounds.as_of_date - 29 as period_start,
        bounds.as_of_date + 1 as period_end,
        activity.customer_id,
        activity.sessions,
        activity.product_views,
        activity.cart_adds,
        activity.orders,
        activity.first_orders,
        activity.revenue,
        1 as weight_after,
        1 as weight_before
    from bounds
    inner join activity
        on activity.day > bounds.as_of_date - 30 and activity.day <= bounds.as_of_date

),

{% if recount %}

counted_rows as (

    select
        activity.*,
        1 as weight_after,
        1 as weight_before
    from activity

),

{% else %}

changes as (

    select *
    from {{ change_counts_relation(counted) }}
    where delta <> 0

),

-- today's rows of every customer with a change, and the changed rows weighted to give the
-- customer's rows before (a row added counts after but not before, a row removed before only)
counted_rows as (

    select
        activity.*,
        1 as weight_after,
        1 as weight_before
    from activity
    where activity.customer_id in (select changes.customer_id from changes)
    union all
    select
        changes.customer_id,
        changes.day,
        changes.sessions,
        changes.product_views,
        changes.cart_adds,
        changes.orders,
        changes.first_orders,
        changes.revenue,
        null as load_id,
        0 as weight_after,
        -changes.delta as weight_before
    from changes

),

-- the periods each customer changed in
touched as (

    select distinct
        customer_id,
        day
    from changes

),

{% endif %}

in_periods as (

    {%- for period, start, length in [
        ('day', 'counted_rows.day', "interval '1 day'"),
        ('week', "date_trunc('week', counted_rows.day)::date", "interval '1 week'"),
        ('month', "date_trunc('month', counted_rows.day)::date", "interval '1 month'"),
    ] %}
    select
        '{{ period }}' as period,
        {{ start }} as period_start,
        ({{ start }} + {{ length }})::date as period_end,
        counted_rows.customer_id,
        counted_rows.sessions,
        counted_rows.product_views,
        counted_rows.cart_adds,
        counted_rows.orders,
        counted_rows.first_orders,
        counted_rows.revenue,
        counted_rows.weight_after,
        counted_rows.weight_before
    from counted_rows
    {%- if not recount %}
    where exists (
        select from touched
        where
            touched.customer_id = counted_rows.customer_id
            and {{ start | replace('counted_rows.day', 'touched.day') }} = {{ start }}
    )
    {%- endif %}
    union all
    {%- endfor %}
    select * from last_30_days

),

per_customer as (

    select
        period,
        period_start,
        period_end,
        customer_id,
        {%- for when in ['after', 'before'] %}
        sum(sessions * weight_{{ when }}) > 0 as active_{{ when }},
        sum(product_views * weight_{{ when }}) > 0 as viewed_{{ when }},
        sum(cart_adds * weight_{{ when }}) > 0 as added_{{ when }},
        sum(orders * weight_{{ when }}) as orders_{{ when }},
        sum(first_orders * weight_{{ when }}) as first_orders_{{ when }},
        sum(revenue * weight_{{ when }}) as revenue_{{ when }},
        {%- endfor %}
        period = 'last_30_days' as recounted
    from in_periods
    group by period, period_start, period_end, customer_id

),

-- what each period gained (all of it, for a recount)
differences as (

    select
        period,
        period_start,
        period_end,
        bool_or(recounted) as recounted,
        count(*) filter (where active_after)
        - count(*) filter (where {{ 'false' if recount else 'not recounted and active_before' }})
            as active_customers,
        count(*) filter (where viewed_after)
        - count(*) filter (where {{ 'false' if recount else 'not recounted and viewed_before' }})
            as product_viewers,
        count(*) filter (where added_after)
        - count(*) filter (where {{ 'false' if recount else 'not recounted and added_before' }})
            as cart_adders,
        count(*) filter (where orders_after > 0)
        - count(*) filter (where {{ 'false' if recount else 'not recounted and orders_before > 0' }})
            as buyers,
        sum(orders_after) - {{ '0' if recount else 'coalesce(sum(orders_before) filter (where not recounted), 0)' }}
            as orders,
        sum(first_orders_after)
        - {{ '0' if recount else 'coalesce(sum(first_orders_before) filter (where not recounted), 0)' }}
            as first_orders,
        sum(revenue_after) - {{ '0' if recount else 'coalesce(sum(revenue_before) filter (where not recounted), 0)' }}
            as revenue
    from per_customer
    group by period, period_start, period_end

),

final as (

    select
        differences.period,
        differences.period_start,
        differences.period_end,
        {%- for column, type in [
            ('active_customers', 'bigint'), ('product_viewers', 'bigint'),
            ('cart_adders', 'bigint'), ('buyers', 'bigint'), ('orders', 'numeric'),
            ('first_orders', 'numeric'), ('revenue', 'numeric'),
        ] %}
        {%- if recount %}
        differences.{{ column }}::{{ type }} as {{ column }}{{ ',' if not loop.last }}
        {%- else %}
        (
            case when differences.recounted then 0 else coalesce(kept.{{ column }}, 0) end
            + coalesce(differences.{{ column }}, 0)
        )::{{ type }} as {{ column }}{{ ',' if not loop.last }}
        {%- endif %}
        {%- endfor %}
    from differences
    {%- if not recount %}
    left join {{ this }} as kept
        on
            differences.period = kept.period
            and differences.period_start = kept.period_start
    {%- endif %}

)

select * from final
