-- Consent Updated: one change of consent for one channel.
with

source as (

    select * from {{ source('raw', 'events') }}
    where type = 'track' and event = 'Consent Updated'

),

renamed as (

    select
        message_id,
        user_id,
        anonymous_id,
        payload #>> '{properties,channel}' as channel,
        (payload #>> '{properties,granted}')::boolean as granted,
        payload #>> '{properties,source}' as consent_source,
        event_at

    from source

)

select * from renamed
