{{
  config(
    materialized='incremental',
    unique_key='customer_id',
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    pre_hook=[
      "set local enable_nestloop = off",
      "{{ delete_moved_customers(new_load_ids() if is_incremental() else none) }}",
    ],
    indexes=[{'columns': ['customer_id'], 'unique': True}, {'columns': ['load_id']}],
  )
}}
-- depends_on: {{ ref('int_identifier_days') }}
-- depends_on: {{ ref('stg_events__aliases') }}
-- One row per customer with product or activity history: tastes and habits over all their
-- history (category affinities, hour-of-week activity profile, push engagement), which do not
-- depend on the as-of date. customer_features joins them to its daily windows.
--
-- Incremental runs recompute the customers whose identifiers new loads brought calls for
-- (their int_identifier_profiles row carries the new load) and the customers new loads moved
-- identifiers between (the pre-hook deletes those, an 'anon:' customer may be gone); a
-- customer's rows are read whole, so the result equals a full refresh.
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
{%- set new_loads = new_load_ids() %}

touched as (

    select customer_id from profiles where load_id in ({{ new_loads }})
    union
    {{ moved_customers(new_loads) }}

),

touched_devices as (

    -- the anonymous ids of those customers: rows are filtered on their own ids before any
    -- is resolved (a row's customer is its user id, else its anonymous id's customer)
    select identifier from identities
    where customer_id in (select customer_id from touched)

),
{%- set of_touched -%}
    {0}.user_id in (select customer_id from touched)
    or ({0}.user_id is null and {0}.anonymous_id in (select identifier from touched_devices))
{%- endset %}

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
    where {{ of_touched.format('hours') }}
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
    where {{ of_touched.format('category_days') }}
    {%- endif %}
    group by 1, 2

),

affinities as (

    select
        customer_id,
        jsonb_object_agg(category, round(n::numeric / total, 4) order by category) as category_affinity,
        (array_agg(category order by n desc, category asc))[1] as top_category
    from (
        select
            *,
            sum(n) over (partition by customer_id) as total
        from category_views
    ) as shares
    group by customer_id

),

slot_counts as (

    -- hour of week in local time (0 = Monday 00:00): the device's own time zone on each call,
    -- else the customer's
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

slot_shares as (

    select
        customer_id,
        slot,
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
        )::float8[] as activity_hour_of_week
    from slot_shares
    group by customer_id

),

push_stats as (

    select
        coalesce(push.user_id, identities.customer_id) as customer_id,
        count(*) filter (where push.push_event = 'received') as pushes_received,
        count(*) filter (where push.push_event = 'tapped') as pushes_tapped
    from {{ ref('stg_events__push') }} as push
    left join identities on identities.identifier = push.anonymous_id
    {%- if is_incremental() %}
    where {{ of_touched.format('push') }}
    {%- endif %}
    group by 1

),

final as (

    select
        time_zones.customer_id,
        affinities.category_affinity,
        affinities.top_category,
        hour_of_week.activity_hour_of_week,
        coalesce(push_stats.pushes_received, 0) as pushes_received,
        coalesce(push_stats.pushes_tapped, 0) as pushes_tapped,
        time_zones.load_id
    from time_zones
    left join affinities using (customer_id)
    left join hour_of_week using (customer_id)
    left join push_stats using (customer_id)

)

select * from final
