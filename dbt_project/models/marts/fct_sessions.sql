-- One row per session: where it started, how long it lasted, whether it converted.
with

sessions as (

    select * from {{ ref('int_sessions') }}

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
