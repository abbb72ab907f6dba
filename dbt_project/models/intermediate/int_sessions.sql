{{
  config(
    materialized='incremental',
    unique_key='session_id',
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    pre_hook="{{ delete_resessionized('device_key', 'started_at') }}",
    indexes=[
      {'columns': ['session_id'], 'unique': True},
      {'columns': ['device_key', 'started_at']},
      {'columns': ['load_id']},
    ],
  )
}}
-- One row per session (int_events_sessionized), before identity resolution: fct_sessions adds
-- the customer and the orders.
--
-- Incremental runs recompute, for every device a new load touched, the sessions from the start
-- of the first session the new events belong to; the pre-hook first deletes that device's
-- sessions from there (a late event can merge two sessions or move a start, and the old
-- session's row must go). The result equals a full refresh over the same data.
with

-- not materialized: referenced more than once, and an incremental run reads only a few
-- keys of it through an index
events as not materialized (

    select * from {{ ref('int_events_sessionized') }}

),

{% if is_incremental() %}

touched as (

    {{ resessionized_devices() }}

),

scope as (

    select events.*
    from touched
    inner join events
        on
            events.device_key = touched.device_key
            and events.session_start >= touched.from_at

),

{% else %}

scope as (

    select * from events

),

{% endif %}

final as (

    select
        session_id,
        device_key,
        min(anonymous_id) as anonymous_id,
        max(user_id) as user_id,
        min(platform) as platform,
        min(event_at) as started_at,
        max(event_at) as ended_at,
        count(*) as events,
        count(*) filter (where event_name = 'Product Viewed') as product_views,
        count(*) filter (where event_name = 'Product Added') as cart_adds,
        (
            array_agg(page_path order by event_at, message_id)
            filter (where page_path is not null)
        )[1] as entry_page,
        (
            array_agg(traffic_source order by event_at, message_id)
            filter (where traffic_source is not null)
        )[1] as traffic_source,
        max(load_id) as load_id
    from scope
    group by session_id, device_key

)

select * from final
