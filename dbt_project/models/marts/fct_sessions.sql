-- One row per session: where it started, how long it lasted, whether it converted.
with

events as (

    select * from {{ ref('int_events_sessionized') }}

),

identities as (

    select * from {{ ref('int_identities_stitched') }}

),

orders as (

    select
        session_id,
        count(*) as orders,
        sum(revenue) as revenue
    from {{ ref('fct_orders') }}
    where session_id is not null
    group by session_id

),

sessions as (

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
        (
            array_agg(page_path order by event_at, message_id)
            filter (where page_path is not null)
        )[1
        ] as entry_page,
        (
            array_agg(traffic_source order by event_at, message_id)
            filter (where traffic_source is not null)
        )[1
        ] as traffic_source
    from events
    group by session_id, device_key

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
        sessions.entry_page,
        sessions.traffic_source,
        coalesce(orders.orders, 0) > 0 as converted,
        coalesce(orders.orders, 0) as orders,
        coalesce(orders.revenue, 0) as revenue,
        (sessions.started_at at time zone 'UTC')::date as session_date
    from sessions
    left join identities on identities.identifier = sessions.anonymous_id
    left join orders using (session_id)

)

select * from final
