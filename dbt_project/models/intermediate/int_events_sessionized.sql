{{
  config(
    materialized='incremental',
    incremental_strategy='window_replace',
    window_key='device_key',
    window_start='event_at',
    on_schema_change='fail',
    indexes=[
      {'columns': ['device_key', 'event_at']},
      {'columns': ['load_id']},
    ],
  )
}}
-- Activity events (a person doing something on a device) with their session: a new session
-- starts after var('session_gap_minutes') of inactivity on the device.
--
-- Incremental runs take the events of every load not processed yet (new_loads_only: events
-- arriving late are simply in a later load). For each device they touch, sessions are
-- recomputed from the start of the device's last session before its earliest new event:
-- every earlier session is closed (it ends more than the gap before that start, and no new
-- event falls before it), so the result equals a full refresh over the same data.
with

-- not materialized: referenced twice, and the incremental branch reads only a few devices
-- through the (anonymous_id, event_at) index instead of materialising every call
calls as not materialized (

    select
        message_id,
        anonymous_id as device_key,
        anonymous_id,
        user_id,
        call_type,
        coalesce(event_name, call_type) as event_name,
        platform,
        page_path,
        traffic_source,
        time_zone,
        event_at,
        event_date,
        loaded_at,
        load_id
    from {{ ref('stg_events__calls') }}
    where anonymous_id is not null
      -- deliveries and receipts happen to a person; they are not something they did
      and coalesce(event_name, '') not in (
          'Push Notification Received', 'Push Notification Bounced', 'Email Delivered')

),

{% if is_incremental() %}

new_events as (

    -- every load not yet processed (see the new_loads_only macro)
    select calls.*
    from calls
    where true {{ new_loads_only('calls.load_id') }}

),

first_new as (

    select
        device_key,
        min(event_at) as first_new_at
    from new_events
    group by device_key

),

resume_points as (

    -- where each touched device's sessions must be recomputed from: its first new event, or
    -- the start of the session its previous event belongs to when that event is within the
    -- gap (the new events may extend or merge that session)
    select
        first_new.device_key,
        case
            when
                previous.event_at
                >= first_new.first_new_at - interval '{{ var("session_gap_minutes") }} minutes'
                then previous.session_start
            else first_new.first_new_at
        end as resume_from
    from first_new
    left join lateral (
        select
            earlier.event_at,
            earlier.session_start
        from {{ this }} as earlier
        where
            earlier.device_key = first_new.device_key
            and earlier.event_at < first_new.first_new_at
        order by earlier.event_at desc
        limit 1
    ) as previous on true

),

scope as (

    select calls.*
    from resume_points
    inner join calls
        on
            calls.anonymous_id = resume_points.device_key
            and calls.event_at >= resume_points.resume_from

),

{% else %}

scope as (

    select * from calls

),

{% endif %}

gaps as (

    select
        *,
        case
            when lag(event_at) over by_device is null then 1
            when event_at - lag(event_at) over by_device
                 > interval '{{ var("session_gap_minutes") }} minutes' then 1
            else 0
        end as starts_session
    from scope
    window by_device as (partition by device_key order by event_at, message_id)

),

numbered as (

    select
        *,
        sum(starts_session) over (
            partition by device_key order by event_at, message_id
            rows between unbounded preceding and current row
        ) as session_seq
    from gaps

),

final as (

    select
        message_id,
        device_key,
        anonymous_id,
        user_id,
        call_type,
        event_name,
        platform,
        page_path,
        traffic_source,
        time_zone,
        event_at,
        event_date,
        loaded_at,
        load_id,
        min(event_at) over (partition by device_key, session_seq) as session_start
    from numbered

)

select
    *,
    {{ surrogate_key(['device_key', 'session_start']) }} as session_id
from final
