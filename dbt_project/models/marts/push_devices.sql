-- The latest push token of each device, with its platform and owner. A token is invalid once
-- FCM or the app reported it bounced after it was last seen.
with

calls as (

    select * from {{ ref('stg_events__calls') }}
    where push_token is not null

),

identities as (

    select * from {{ ref('int_identities_stitched') }}

),

bounces as (

    select
        push_token,
        max(event_at) as bounced_at
    from {{ ref('stg_events__push') }}
    where push_event = 'bounced'
    group by push_token

),

latest as (

    select distinct on (device_id)
        device_id,
        push_token,
        platform,
        anonymous_id,
        user_id,
        time_zone,
        event_at as token_seen_at
    from calls
    order by device_id asc, event_at desc, message_id desc

),

final as (

    select
        latest.device_id,
        coalesce(latest.user_id, identities.customer_id) as customer_id,
        latest.platform,
        latest.push_token,
        latest.time_zone,
        latest.token_seen_at,
        bounces.bounced_at is null or bounces.bounced_at < latest.token_seen_at as is_valid
    from latest
    left join identities on identities.identifier = latest.anonymous_id
    left join bounces using (push_token)

)

select * from final
