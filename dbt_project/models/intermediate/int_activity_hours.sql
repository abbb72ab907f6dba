{{
  config(
    materialized='incremental',
    unique_key='activity_key',
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    indexes=[
      {'columns': ['activity_key'], 'unique': True},
      {'columns': ['device_key', 'event_date']},
      {'columns': ['load_id']},
    ],
  )
}}
-- Activity rolled up per device, user, UTC day and local hour of the week: what the
-- customer-level marts count sessions, active days and habits from, instead of every event.
--
-- The local hour is the event's own, in the time zone its device reported on the call
-- (context.timezone); a call without one keeps its UTC hour (local_time_known = false) and
-- the marts shift it by the customer's time zone.
--
-- Incremental runs recompute, for every device a new load touched, the days from the start
-- of the first session the new events belong to: int_events_sessionized rewrites no earlier
-- row of that device, so the result equals a full refresh over the same data.
with

-- not materialized: referenced more than once, and an incremental run reads only a few
-- keys of it through an index
events as not materialized (

    select * from {{ ref('int_events_sessionized') }}

),

{% if is_incremental() %}

touched as (

    -- devices a new load re-sessionized, from the day of their first recomputed session
    select
        devices.device_key,
        (devices.from_at at time zone 'UTC')::date as from_day
    from ({{ resessionized_devices() }}) as devices

),

scope as (

    select events.*
    from touched
    inner join events
        on
            events.device_key = touched.device_key
            and events.event_at >= touched.from_day::timestamp at time zone 'UTC'

),

{% else %}

scope as (

    select * from events

),

{% endif %}

localised as (

    select
        device_key,
        anonymous_id,
        user_id,
        event_date,
        time_zone is not null as local_time_known,
        event_at at time zone coalesce(time_zone, 'UTC') as local_at,
        event_at,
        session_id,
        event_at = session_start as starts_session,
        load_id
    from scope

),

final as (

    select
        device_key,
        anonymous_id,
        user_id,
        event_date,
        (extract(isodow from local_at)::int - 1) * 24 + extract(hour from local_at)::int
            as hour_of_week,
        local_time_known,
        count(*) as events,
        count(distinct session_id) filter (where starts_session) as sessions_started,
        min(event_at) as first_event_at,
        max(event_at) as last_event_at,
        max(load_id) as load_id
    from localised
    group by 1, 2, 3, 4, 5, 6

)

select
    {{ surrogate_key(['device_key', 'user_id', 'event_date', 'hour_of_week', 'local_time_known']) }}
        as activity_key,
    *
from final
