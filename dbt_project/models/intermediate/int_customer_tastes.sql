{{
  config(
    materialized='incremental',
    unique_key='customer_id',
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    pre_hook=[
      "set local enable_nestloop = off",
      "{{ delete_moved_customers(unprocessed_load_ids(taste_sources())) }}",
    ],
    post_hook="{{ record_processed_loads(taste_sources()) }}",
    indexes=[{'columns': ['customer_id'], 'unique': True}, {'columns': ['load_id']}],
  )
}}
-- depends_on: {{ ref('int_identifier_days') }}
-- depends_on: {{ ref('stg_events__aliases') }}
-- depends_on: {{ ref('int_events_sessionized') }}
-- depends_on: {{ ref('stg_events__product_events') }}
-- One row per customer with product or activity history: tastes and habits over all their
-- history (category affinities, hour-of-week activity profile, push engagement), which do not
-- depend on the as-of date. customer_features joins them to its daily windows. Each row keeps
-- the counts its shares come from (category_counts, slot_counts) and the time zone its
-- hours were placed in.
--
-- Incremental runs touch the customers whose identifiers new loads brought calls for (their
-- int_identifier_profiles row carries the new load). Most of them get the new loads' events
-- added to their stored counts (events are only ever appended; the side table
-- int_customer_tastes__loads makes sure each load is added once). Recomputed from their whole
-- history instead: the customers new loads moved identifiers between (the pre-hook deletes
-- those, an 'anon:' customer may be gone) and the customers whose time zone changed (a call
-- without a time zone of its own is placed in the customer's). The result equals a full
-- refresh.
--
-- No nested loops (set local: this model's transaction only): the planner cannot estimate
-- how many customers a CTE grouped by a computed customer id yields, takes 200, and at 10M
-- events joined two such 90,000-row sets in a nested loop that ran for minutes instead of
-- the 9 s of a full build by hash and merge joins. Lookups that must loop (the laterals of
-- moved_customers) still do.
with

identities as (

    select * from {{ ref('int_identities_stitched') }}

),

profiles as (

    select
        coalesce(profiles.user_id, identities.customer_id) as customer_id,
        profiles.time_zone,
        profiles.time_zone_at,
        profiles.load_id
    from {{ ref('int_identifier_profiles') }} as profiles
    left join identities on identities.identifier = profiles.anonymous_id

),

{% if is_incremental() %}
{%- set new_loads = unprocessed_load_ids(taste_sources()) %}

moved as (

    {{ moved_customers(new_loads) }}

),

touched as (

    select customer_id from profiles where load_id in ({{ new_loads }})
    union
    select customer_id from moved
    {%- for counted in taste_sources()[:3] %}
    union
    select coalesce(counted.user_id, identities.customer_id)
    from {{ counted }} as counted
    left join identities on identities.identifier = counted.anonymous_id
    where counted.load_id in ({{ new_loads }})
    {%- endfor %}

),

{% endif %}

time_zones as (

    -- the customer's time zone as dim_customers gives it (the same latest_non_null over the
    -- resolved profiles), computed here so that this model need not wait for dim_customers,
    -- one of the last models of a run
    select
        customer_id,
        {{ latest_non_null('time_zone', 'time_zone_at') }} as time_zone,
        max(load_id) as load_id
    from profiles
    {%- if is_incremental() %}
    where customer_id in (select customer_id from touched)
    {%- endif %}
    group by customer_id

),

{% if is_incremental() %}

kept as (

    select stored.*
    from {{ this }} as stored
    where stored.customer_id in (select customer_id from touched)

),

recomputed as (

    -- moved customers (the pre-hook deleted their rows) and customers whose time zone changed
    select customer_id from moved
    union
    select kept.customer_id
    from kept
    inner join time_zones on kept.customer_id = time_zones.customer_id
    where kept.time_zone is distinct from time_zones.time_zone

),

added as (

    -- every other touched customer: stored counts plus the new loads' events
    select
        time_zones.customer_id,
        time_zones.time_zone
    from time_zones
    where not exists (
        select from recomputed where recomputed.customer_id = time_zones.customer_id
    )

),

recomputed_devices as (

    -- the anonymous ids of the recomputed customers: rows are filtered on their own ids before
    -- any is resolved (a row's customer is its user id, else its anonymous id's customer)
    select identifier from identities
    where customer_id in (select customer_id from recomputed)

),
{%- set of_recomputed -%}
    {0}.user_id in (select customer_id from recomputed)
    or ({0}.user_id is null and {0}.anonymous_id in (select identifier from recomputed_devices))
{%- endset %}

{% endif %}

activity as (

    select
        coalesce(hours.user_id, identities.customer_id) as customer_id,
        hours.event_date,
        hours.hour_of_week,
        hours.local_time_known,
        hours.events
    from {{ ref('int_activity_hours') }} as hours
    left join identities on identities.identifier = hours.anonymous_id
    {%- if is_incremental() %}
    where {{ of_recomputed.format('hours') }}
    {%- endif %}

),

category_views as (

    select
        coalesce(category_days.user_id, identities.customer_id) as customer_id,
        category_days.category,
        sum(category_days.events) as n
    from {{ ref('int_category_days') }} as category_days
    left join identities on identities.identifier = category_days.anonymous_id
    {%- if is_incremental() %}
    where {{ of_recomputed.format('category_days') }}
    {%- endif %}
    group by 1, 2

),

history_slots as (

    -- hour of week in local time (0 = Monday 00:00): the device's own time zone on each call,
    -- else the customer's, applied to the call's UTC hour
    select
        activity.customer_id,
        case
            when activity.local_time_known then activity.hour_of_week
            else
                (extract(isodow from shifted.local_at)::int - 1) * 24
                + extract(hour from shifted.local_at)::int
        end as slot,
        sum(activity.events) as n
    from activity
    inner join time_zones on activity.customer_id = time_zones.customer_id
    cross join lateral (
        select
            (activity.event_date + make_interval(hours => activity.hour_of_week % 24))
            at time zone 'UTC' at time zone coalesce(time_zones.time_zone, 'UTC') as local_at
    ) as shifted
    group by 1, 2

),

history_pushes as (

    select
        coalesce(push.user_id, identities.customer_id) as customer_id,
        count(*) filter (where push.push_event = 'received') as pushes_received,
        count(*) filter (where push.push_event = 'tapped') as pushes_tapped
    from {{ ref('stg_events__push') }} as push
    left join identities on identities.identifier = push.anonymous_id
    {%- if is_incremental() %}
    where {{ of_recomputed.format('push') }}
    {%- endif %}
    group by 1

),

{% if is_incremental() %}

new_activity as (

    -- the new loads' events of added customers, placed in an hour of the week as above
    select
        resolved.customer_id,
        case
            when resolved.time_zone is not null
                then
                    (extract(isodow from resolved.event_at at time zone resolved.time_zone)::int - 1) * 24
                    + extract(hour from resolved.event_at at time zone resolved.time_zone)::int
            else
                (extract(isodow from shifted.local_at)::int - 1) * 24
                + extract(hour from shifted.local_at)::int
        end as slot,
        count(*) as n
    from (
        select
            coalesce(events.user_id, identities.customer_id) as customer_id,
            events.time_zone,
            events.event_at
        from {{ ref('int_events_sessionized') }} as events
        left join identities on identities.identifier = events.anonymous_id
        where events.load_id in ({{ new_loads }})
    ) as resolved
    inner join added on resolved.customer_id = added.customer_id
    cross join lateral (
        select
            date_trunc('hour', resolved.event_at at time zone 'UTC')
            at time zone 'UTC' at time zone coalesce(added.time_zone, 'UTC') as local_at
    ) as shifted
    group by 1, 2

),

new_categories as (

    select
        resolved.customer_id,
        resolved.category,
        count(*) as n
    from (
        select
            coalesce(product_events.user_id, identities.customer_id) as customer_id,
            product_events.category
        from {{ ref('stg_events__product_events') }} as product_events
        left join identities on identities.identifier = product_events.anonymous_id
        where product_events.load_id in ({{ new_loads }}) and product_events.category is not null
    ) as resolved
    where resolved.customer_id in (select customer_id from added)
    group by 1, 2

),

new_pushes as (

    select
        resolved.customer_id,
        count(*) filter (where resolved.push_event = 'received') as pushes_received,
        count(*) filter (where resolved.push_event = 'tapped') as pushes_tapped
    from (
        select
            coalesce(push.user_id, identities.customer_id) as customer_id,
            push.push_event
        from {{ ref('stg_events__push') }} as push
        left join identities on identities.identifier = push.anonymous_id
        where push.load_id in ({{ new_loads }})
    ) as resolved
    where resolved.customer_id in (select customer_id from added)
    group by 1

),

category_counts as (

    select
        customer_id,
        category,
        sum(n) as n
    from (
        select
            customer_id,
            category,
            n
        from category_views
        union all
        select
            kept.customer_id,
            counted.key,
            counted.value::bigint
        from kept
        cross join lateral jsonb_each_text(kept.category_counts) as counted
        where kept.customer_id in (select customer_id from added)
        union all
        select
            customer_id,
            category,
            n
        from new_categories
    ) as counts
    group by 1, 2

),

slot_counts as (

    select
        customer_id,
        slot,
        sum(n) as n
    from (
        select
            customer_id,
            slot,
            n
        from history_slots
        union all
        select
            kept.customer_id,
            counted.key::int,
            counted.value::bigint
        from kept
        cross join lateral jsonb_each_text(kept.slot_counts) as counted
        where kept.customer_id in (select customer_id from added)
        union all
        select
            customer_id,
            slot,
            n
        from new_activity
    ) as counts
    group by 1, 2

),

push_stats as (

    select
        customer_id,
        sum(pushes_received)::bigint as pushes_received,
        sum(pushes_tapped)::bigint as pushes_tapped
    from (
        select * from history_pushes
        union all
        select
            kept.customer_id,
            kept.pushes_received,
            kept.pushes_tapped
        from kept
        where kept.customer_id in (select customer_id from added)
        union all
        select * from new_pushes
    ) as counts
    group by 1

),

{% else %}

category_counts as (

    select * from category_views

),

slot_counts as (

    select * from history_slots

),

push_stats as (

    select * from history_pushes

),

{% endif %}

affinities as (

    select
        customer_id,
        jsonb_object_agg(category, round(n::numeric / total, 4) order by category) as category_affinity,
        (array_agg(category order by n desc, category asc))[1] as top_category,
        jsonb_object_agg(category, n) as category_counts
    from (
        select
            *,
            sum(n) over (partition by customer_id) as total
        from category_counts
    ) as shares
    group by customer_id

),

slot_shares as (

    select
        customer_id,
        slot,
        n,
        round(n::numeric / sum(n) over (partition by customer_id), 4)::float8 as share,
        -- empty hours between this one and the previous active one
        slot - coalesce(lag(slot) over (partition by customer_id order by slot), -1) - 1
            as empty_before
    from slot_counts

),

hour_of_week as (

    -- shares of activity per hour of week, summing to 1: 168 numbers written out from the
    -- active hours alone (each preceded by its run of zeros), not from 168 rows per customer
    select
        customer_id,
        (
            '{'
            || string_agg(repeat('0,', empty_before) || share::text, ',' order by slot)
            || repeat(',0', 167 - max(slot))
            || '}'
        )::float8[] as activity_hour_of_week,
        jsonb_object_agg(slot::text, n) as slot_counts
    from slot_shares
    group by customer_id

),

final as (

    select
        time_zones.customer_id,
        affinities.category_affinity,
        affinities.top_category,
        hour_of_week.activity_hour_of_week,
        coalesce(push_stats.pushes_received, 0)::bigint as pushes_received,
        coalesce(push_stats.pushes_tapped, 0)::bigint as pushes_tapped,
        affinities.category_counts,
        hour_of_week.slot_counts,
        time_zones.time_zone,
        time_zones.load_id
    from time_zones
    left join affinities using (customer_id)
    left join hour_of_week using (customer_id)
    left join push_stats using (customer_id)

)

select * from final
