{{ config(materialized='view') }}
-- One row per message receipt and engagement (push received / tapped / bounced, e-mail
-- delivered / opened / clicked) with the resolved customer: what best-send-time models learn
-- from. A view, so a build costs nothing.
with

push as (

    select * from {{ ref('stg_events__push') }}

),

email as (

    select * from {{ ref('stg_events__email') }}

),

identities as (

    select * from {{ ref('int_identities_stitched') }}

),

messages as (

    select
        message_id,
        user_id,
        anonymous_id,
        'push' as channel,
        push_event as engagement,
        campaign_id,
        delivery_id,
        event_at
    from push

    union all

    select
        message_id,
        user_id,
        anonymous_id,
        'email' as channel,
        email_event as engagement,
        campaign_id,
        delivery_id,
        event_at
    from email

),

final as (

    select
        messages.message_id,
        coalesce(messages.user_id, identities.customer_id) as customer_id,
        messages.channel,
        messages.engagement,
        messages.engagement in ('tapped', 'opened', 'link_clicked') as engaged,
        messages.campaign_id,
        messages.delivery_id,
        messages.event_at
    from messages
    left join identities on identities.identifier = messages.anonymous_id
    where messages.user_id is not null or messages.anonymous_id is not null

)

select * from final
