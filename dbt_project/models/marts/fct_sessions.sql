{{
  config(
    materialized='incremental',
    unique_key='session_id',
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    pre_hook="{{ delete_resessionized('device_key', 'started_at') }}",
    post_hook="{{ count_changes(['session_date', 'customer_id'], ['date', 'text']) }}",
  )
}}
-- depends_on: {{ ref('int_events_sessionized') }}
-- One row per session: where it started, how long it lasted, whether it converted.
--
-- Incremental runs rewrite what int_sessions rewrote (the sessions of every re-sessionized
-- device from its first recomputed session; the pre-hook deletes that device's sessions from
-- there, as int_sessions' does) and the sessions of anonymous devices new loads tied to a
-- user (their customer changed). The result equals a full refresh.
with

-- not materialized: incremental runs read a few rows of each through indexes

all_sessions as not materialized (

    select * from {{ ref('int_sessions') }}

),

identities as not materialized (

    select * from {{ ref('int_identities_stitched') }}

),

{% if is_incremental() %}

sessions as (

    select all_sessions.*
    from ({{ resessionized_devices() }}) as touched
    inner join all_sessions
        on
            all_sessions.device_key = touched.device_key
            and all_sessions.started_at >= touched.from_at

    union

    select all_sessions.*
    from identities as tied
    inner join all_sessions on all_sessions.device_key = tied.identifier
    where
        tied.identifier_type = 'anonymous_id'
        and tied.linked_load_id in ({{ new_load_ids() }})
        and all_sessions.user_id is null

),

{% else %}

sessions as (

    select * from all_sessions

),

{% endif %}

orders as (

    select
        placed.session_id,
        count(*) as orders,
        sum(placed.revenue) as revenue
    from {{ ref('fct_orders') }} as placed
    where
        placed.session_id is not null
        {%- if is_incremental() %}
        and placed.session_id in (select session_id from sessions)
        {%- endif %}
    group by placed.session_id

),

final as (

    select
        sessions.session_id,
        coalesce(sessions.user_id, identities.customer_id) as customer_id,
        sessions.device_key,
        sessions.platform,
        sessions.started_at,
        sessions.ended_at,
        extract(epoch from sessions.ended_at - sessions.started_at)::integer as duration_seconds,
        sessions.events,
        sessions.product_views,
        sessions.cart_adds,
        sessions.entry_page,
        sessions.traffic_source,
        coalesce(orders.orders, 0) > 0 as converted,
        coalesce(orders.orders, 0) as orders,
        coalesce(orders.revenue, 0) as revenue,
        (sessions.started_at at time zone 'UTC')::date as session_date,
        sessions.load_id
    from sessions
    left join identities on identities.identifier = sessions.anonymous_id
    left join orders using (session_id)

)

select * from final
