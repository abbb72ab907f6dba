-- Every change of consent, per resolved customer and channel: who (the customer), when, from
-- which source, and until when it held. The Consent dashboard and privacy exports read it;
-- dim_customers carries only the current state, and campaigns read only that.
with

consents as (

    select * from {{ ref('stg_events__consents') }}

),

identities as (

    select * from {{ ref('int_identities_stitched') }}

),

resolved as (

    select
        consents.message_id,
        coalesce(consents.user_id, identities.customer_id) as customer_id,
        consents.channel,
        consents.granted,
        consents.consent_source,
        consents.event_at as changed_at
    from consents
    left join identities on identities.identifier = consents.anonymous_id
    where coalesce(consents.user_id, identities.customer_id) is not null

),

final as (

    select
        message_id,
        customer_id,
        channel,
        granted,
        consent_source,
        changed_at,
        lead(changed_at) over (
            partition by customer_id, channel order by changed_at, message_id
        ) as valid_until,
        row_number() over (
            partition by customer_id, channel order by changed_at desc, message_id desc
        ) = 1 as is_current
    from resolved

)

select * from final
