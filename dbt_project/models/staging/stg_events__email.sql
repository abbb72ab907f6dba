{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    indexes=[{'columns': ['message_id'], 'unique': True}, {'columns': ['load_id']}],
  )
}}
-- E-mail deliveries, opens, clicks and unsubscribes (usually sent by the e-mail provider).
with

source as (

    select * from {{ source('raw', 'events') }}
    where
        type = 'track'
        and event in ('Email Delivered', 'Email Opened', 'Email Link Clicked', 'Email Unsubscribed')
        {{ new_loads_only() }}

),

renamed as (

    select
        message_id,
        user_id,
        anonymous_id,
        lower(replace(replace(event, 'Email ', ''), ' ', '_')) as email_event,
        payload #>> '{properties,campaign_id}' as campaign_id,
        payload #>> '{properties,delivery_id}' as delivery_id,
        payload #>> '{properties,email_id}' as email_id,
        event_at,
        loaded_at,
        load_id

    from source

)

select * from renamed
