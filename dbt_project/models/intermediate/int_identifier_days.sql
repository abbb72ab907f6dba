{{
  config(
    materialized='incremental',
    unique_key='identifier_day_key',
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    indexes=[
      {'columns': ['identifier_day_key'], 'unique': True},
      {'columns': ['event_date']},
      {'columns': ['anonymous_id']},
      {'columns': ['user_id']},
      {'columns': ['load_id']},
    ],
  )
}}
-- Every call rolled up per anonymous id, user id and UTC day: what identity stitching and the
-- customer profile (dim_customers) read instead of every call.
--
-- Calls are only ever appended, so an incremental run recomputes the keys (device or user,
-- and day) the new loads have calls for, from every call of those keys; the result equals a
-- full refresh.
with

-- not materialized: referenced more than once, and an incremental run reads only a few
-- keys of it through an index
calls as not materialized (

    select * from {{ ref('stg_events__calls') }}

),

{% if is_incremental() %}

touched as (

    -- the keys of every load not yet processed (see the new_loads_only macro)
    select distinct
        anonymous_id,
        user_id,
        event_date
    from calls
    where true {{ new_loads_only('load_id') }}

),

scope as (

    -- every call of a touched device-day, through the (anonymous_id, event_at) index ...
    select calls.*
    from (
        select distinct
            anonymous_id,
            event_date
        from touched
        where anonymous_id is not null
    ) as days
    inner join calls
        on
            calls.anonymous_id = days.anonymous_id
            and calls.event_at >= days.event_date::timestamp at time zone 'UTC'
            and calls.event_at < (days.event_date + 1)::timestamp at time zone 'UTC'

    union all

    -- ... and of a touched user-day of server-side calls, through the user_id index
    select calls.*
    from (
        select distinct
            user_id,
            event_date
        from touched
        where anonymous_id is null
    ) as days
    inner join calls
        on
            calls.user_id = days.user_id
            and calls.anonymous_id is null
            and calls.event_date = days.event_date

),

{% else %}

scope as (

    select * from calls

),

{% endif %}

final as (

    select
        anonymous_id,
        user_id,
        event_date,
        count(*) as calls,
        min(event_at) as first_event_at,
        (array_agg(message_id order by event_at, message_id))[1] as first_message_id,
        max(event_at) as last_event_at,
        array_agg(distinct device_id order by device_id)
            filter (where platform <> 'server') as device_ids,
        array_agg(distinct platform order by platform)
            filter (where platform not in ('server', 'unknown')) as platforms,
        (array_agg(time_zone order by event_at desc, message_id desc)
            filter (where time_zone is not null))[1] as time_zone,
        max(event_at) filter (where time_zone is not null) as time_zone_at,
        (array_agg(locale order by event_at desc, message_id desc)
            filter (where locale is not null))[1] as locale,
        max(event_at) filter (where locale is not null) as locale_at,
        max(load_id) as load_id
    from scope
    group by anonymous_id, user_id, event_date

)

select
    {{ surrogate_key(['anonymous_id', 'user_id', 'event_date']) }} as identifier_day_key,
    *
from final
