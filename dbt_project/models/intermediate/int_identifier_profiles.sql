{{
  config(
    materialized='incremental',
    unique_key='identifier_key',
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    indexes=[
      {'columns': ['identifier_key'], 'unique': True},
      {'columns': ['load_id']},
    ],
  )
}}
-- Every call rolled up per anonymous id and user id, over all days (int_identifier_days
-- without the day): what dim_customers builds the customer profile from, a sixth of the rows.
--
-- Everything here is a merge that can be repeated (earliest, latest, union, latest value by
-- its time), so an incremental run merges each stored profile with the recomputed days of
-- int_identifier_days that the new loads brought; the result equals a full refresh.
with

days as not materialized (

    select
        {{ surrogate_key(['anonymous_id', 'user_id']) }} as identifier_key,
        *
    from {{ ref('int_identifier_days') }}

),

{% if is_incremental() %}

new_days as (

    select * from days
    where true {{ new_loads_only('days.load_id') }}

),

scope as (

    select
        identifier_key,
        anonymous_id,
        user_id,
        first_event_at,
        last_event_at,
        device_ids,
        platforms,
        time_zone,
        time_zone_at,
        locale,
        locale_at,
        load_id
    from new_days

    union all

    select
        kept.identifier_key,
        kept.anonymous_id,
        kept.user_id,
        kept.first_event_at,
        kept.last_event_at,
        kept.device_ids,
        kept.platforms,
        kept.time_zone,
        kept.time_zone_at,
        kept.locale,
        kept.locale_at,
        kept.load_id
    from {{ this }} as kept
    where kept.identifier_key in (select identifier_key from new_days)

),

{% else %}

scope as (

    select * from days

),

{% endif %}

merged as (

    select
        identifier_key,
        min(anonymous_id) as anonymous_id,
        min(user_id) as user_id,
        min(first_event_at) as first_event_at,
        max(last_event_at) as last_event_at,
        (array_agg(time_zone order by time_zone_at desc, time_zone desc)
            filter (where time_zone is not null))[1] as time_zone,
        max(time_zone_at) filter (where time_zone is not null) as time_zone_at,
        (array_agg(locale order by locale_at desc, locale desc)
            filter (where locale is not null))[1] as locale,
        max(locale_at) filter (where locale is not null) as locale_at,
        max(load_id) as load_id
    from scope
    group by identifier_key

),

device_lists as (

    select
        scope.identifier_key,
        array_agg(distinct device.device_id order by device.device_id) as device_ids
    from scope
    cross join lateral unnest(scope.device_ids) as device (device_id)
    group by scope.identifier_key

),

platform_lists as (

    select
        scope.identifier_key,
        array_agg(distinct platform.platform order by platform.platform) as platforms
    from scope
    cross join lateral unnest(scope.platforms) as platform (platform)
    group by scope.identifier_key

),

final as (

    select
        merged.identifier_key,
        merged.anonymous_id,
        merged.user_id,
        merged.first_event_at,
        merged.last_event_at,
        device_lists.device_ids,
        platform_lists.platforms,
        merged.time_zone,
        merged.time_zone_at,
        merged.locale,
        merged.locale_at,
        merged.load_id
    from merged
    left join device_lists on merged.identifier_key = device_lists.identifier_key
    left join platform_lists on merged.identifier_key = platform_lists.identifier_key

)

select * from final
