{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    indexes=[{'columns': ['message_id'], 'unique': True}, {'columns': ['load_id']}],
  )
}}
-- Consent Updated: one change of consent for one channel. An Email Unsubscribed (the link in
-- an e-mail, reported by the mail service) withdraws e-mail consent just the same.
with

source as (

    select * from {{ source('raw', 'events') }}
    where
        type = 'track'
        and event in ('Consent Updated', 'Email Unsubscribed')
        {{ new_loads_only() }}

),

renamed as (

    select
        message_id,
        user_id,
        anonymous_id,
        case
            when event = 'Email Unsubscribed' then 'email'
            else payload #>> '{properties,channel}'
        end as channel,
        case
            when event = 'Email Unsubscribed' then false
            else (payload #>> '{properties,granted}')::boolean
        end as granted,
        case
            when event = 'Email Unsubscribed' then 'unsubscribe_link'
            else payload #>> '{properties,source}'
        end as consent_source,
        event_at,
        loaded_at,
        load_id

    from source

)

select * from renamed
