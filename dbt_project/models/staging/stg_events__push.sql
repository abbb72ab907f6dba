{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    indexes=[{'columns': ['message_id'], 'unique': True}, {'columns': ['load_id']},
             {'columns': ['push_token']}],
  )
}}
-- Push notification receipts, taps and bounces reported by the apps.
with

source as (

    select * from {{ source('raw', 'events') }}
    where
        type = 'track'
        and event in (
            'Push Notification Received', 'Push Notification Tapped',
            'Push Notification Bounced'
        )
        {{ new_loads_only() }}

),

renamed as (

    select
        message_id,
        user_id,
        anonymous_id,
        payload #>> '{context,device,id}' as device_id,
        payload #>> '{context,device,token}' as push_token,
        lower(replace(event, 'Push Notification ', '')) as push_event,
        payload #>> '{properties,campaign_id}' as campaign_id,
        payload #>> '{properties,delivery_id}' as delivery_id,
        event_at,
        loaded_at,
        load_id

    from source

)

select * from renamed
