{{ config(materialized='table') }}
-- What each campaign earned, against its holdout group.
--
-- The experiment is intention-to-treat: every audience member with a delivery row is in it,
-- the treated arm being everyone not held out (including those suppressed or failed), the
-- control arm the held-out group, whose "slot" is when they would have been sent. Both arms
-- convert alike: an order within `attribution_hours` after the slot. A journey's delivery
-- counts from its triggering event instead (the cart, the first order: not that order itself)
-- to `attribution_hours` after the slot, so an order made during the wait, before the message,
-- counts in both arms alike. Uplift is the difference
-- in conversion rate (and revenue per member) between the arms, with a 95% confidence
-- interval: Agresti-Caffo for the conversion uplift, Welch's normal approximation for revenue
-- with the holdout's variance at least the treated arm's (tested against the simulated shop's
-- planted effects: tests/test_loop.py). Rows whose slot has not come yet are left out.
--
-- Grain: one row per campaign and breakdown, from grouping sets: the campaign as a whole
-- (breakdown 'campaign'), by variant, by segment, by channel, and by all three ('cell').
with

journey_entries as (

    select
        campaign_id,
        customer_id,
        occurrence,
        min(triggered_at) as triggered_at
    from {{ source('crm', 'journey_entries') }}
    where occurrence is not null
    group by campaign_id, customer_id, occurrence

),

deliveries as (

    select
        deliveries.*,
        journey_entries.triggered_at
    from {{ source('crm', 'deliveries') }} as deliveries
    left join journey_entries
        on journey_entries.campaign_id = deliveries.campaign_id
        and journey_entries.customer_id = deliveries.customer_id
        and journey_entries.occurrence = deliveries.occurrence
    where deliveries.slot <= crm.now()

),

engagement as (

    select
        delivery_id,
        bool_or(engagement in ('received', 'delivered')) as delivered,
        bool_or(engaged) as opened
    from {{ ref('fct_message_engagement') }}
    where delivery_id is not null
    group by delivery_id

),

orders as (

    select * from {{ ref('fct_orders') }}

),

outcomes as (

    select
        deliveries.delivery_id,
        deliveries.campaign_id,
        deliveries.variant,
        deliveries.segment,
        deliveries.channel,
        deliveries.state = 'held_out' as held_out,
        deliveries.state = 'sent' as sent,
        coalesce(engagement.delivered, false) as delivered,
        coalesce(engagement.opened, false) as opened,
        count(orders.order_id) > 0 as converted,
        coalesce(sum(orders.revenue), 0) as revenue
    from deliveries
    left join engagement
        on engagement.delivery_id = deliveries.delivery_id::text
    left join orders
        on orders.customer_id = deliveries.customer_id
        and case
            when deliveries.triggered_at is null then orders.ordered_at >= deliveries.slot
            else orders.ordered_at > deliveries.triggered_at
        end
        and orders.ordered_at
            < deliveries.slot + make_interval(hours => {{ var('attribution_hours') }})
    group by 1, 2, 3, 4, 5, 6, 7, 8, 9

),

arms as (

    select
        campaign_id,
        case
            when grouping(variant, segment, channel) = 7 then 'campaign'
            when grouping(variant, segment, channel) = 3 then 'variant'
            when grouping(variant, segment, channel) = 5 then 'segment'
            when grouping(variant, segment, channel) = 6 then 'channel'
            else 'cell'
        end as breakdown,
        coalesce(variant, '(all)') as variant,
        coalesce(segment, '(all)') as segment,
        coalesce(channel, '(all)') as channel,
        count(*) filter (where not held_out) as treated,
        count(*) filter (where held_out) as held_out,
        count(*) filter (where sent) as sent,
        count(*) filter (where delivered) as delivered,
        count(*) filter (where opened) as opened,
        count(*) filter (where converted and not held_out) as converted,
        count(*) filter (where converted and held_out) as converted_held_out,
        coalesce(sum(revenue) filter (where not held_out), 0) as revenue,
        coalesce(sum(revenue) filter (where held_out), 0) as revenue_held_out,
        var_samp(revenue) filter (where not held_out) as revenue_var,
        var_samp(revenue) filter (where held_out) as revenue_var_held_out
    from outcomes
    group by grouping sets (
        (campaign_id),
        (campaign_id, variant),
        (campaign_id, segment),
        (campaign_id, channel),
        (campaign_id, variant, segment, channel)
    )

),

rates as (

    select
        *,
        converted::numeric / nullif(treated, 0) as conversion_rate,
        converted_held_out::numeric / nullif(held_out, 0) as conversion_rate_held_out,
        revenue / nullif(treated, 0) as revenue_per_member,
        revenue_held_out / nullif(held_out, 0) as revenue_per_member_held_out,
        -- Agresti-Caffo: one conversion and one non-conversion added to each arm for the
        -- interval (a small holdout without a single order would otherwise claim certainty)
        (converted + 1)::numeric / (treated + 2) as adjusted,
        (converted_held_out + 1)::numeric / (held_out + 2) as adjusted_held_out,
        -- the holdout's revenue variance, at least the treated arm's, for the same reason
        greatest(revenue_var_held_out, revenue_var) as revenue_var_control
    from arms

),

final as (

    -- rates in double precision, money rounded to cents: what dashboards chart
    select
        campaign_id,
        breakdown,
        variant,
        segment,
        channel,
        treated,
        held_out,
        sent,
        delivered,
        opened,
        converted,
        converted_held_out,
        round(revenue, 2)::float8 as revenue,
        round(revenue_held_out, 2)::float8 as revenue_held_out,
        conversion_rate::float8 as conversion_rate,
        conversion_rate_held_out::float8 as conversion_rate_held_out,
        (conversion_rate - conversion_rate_held_out)::float8 as uplift,
        (adjusted - adjusted_held_out - 1.96 * sqrt(
            adjusted * (1 - adjusted) / (treated + 2)
            + adjusted_held_out * (1 - adjusted_held_out) / nullif(held_out + 2, 2)
        ))::float8 as uplift_ci_low,
        (adjusted - adjusted_held_out + 1.96 * sqrt(
            adjusted * (1 - adjusted) / (treated + 2)
            + adjusted_held_out * (1 - adjusted_held_out) / nullif(held_out + 2, 2)
        ))::float8 as uplift_ci_high,
        (revenue_per_member - revenue_per_member_held_out)::float8 as revenue_uplift_per_member,
        (revenue_per_member - revenue_per_member_held_out - 1.96 * sqrt(
            revenue_var / nullif(treated, 0) + revenue_var_control / nullif(held_out, 0)
        ))::float8 as revenue_uplift_ci_low,
        (revenue_per_member - revenue_per_member_held_out + 1.96 * sqrt(
            revenue_var / nullif(treated, 0) + revenue_var_control / nullif(held_out, 0)
        ))::float8 as revenue_uplift_ci_high,
        round((revenue_per_member - revenue_per_member_held_out) * treated, 2)::float8
            as incremental_revenue
    from rates

)

select * from final
