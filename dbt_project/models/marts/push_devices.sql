-- The latest push token of each device, with its platform and owner. A token is invalid once
-- FCM or the app reported it bounced after it was last seen.
with

tokens as (

    select * from {{ ref('int_push_tokens') }}

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

final as (

    select
        tokens.device_id,
        coalesce(tokens.user_id, identities.customer_id) as customer_id,
        tokens.platform,
        tokens.push_token,
        tokens.time_zone,
        tokens.token_seen_at,
        bounces.bounced_at is null or bounces.bounced_at < tokens.token_seen_at as is_valid
    from tokens
    left join identities on identities.identifier = tokens.anonymous_id
    left join bounces using (push_token)

)

select * from final
