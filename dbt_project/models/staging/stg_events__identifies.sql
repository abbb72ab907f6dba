{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    indexes=[{'columns': ['message_id'], 'unique': True}, {'columns': ['load_id']}],
  )
}}
-- identify calls: who a user is. The loader has already taken the personal traits out
-- (they are in pii.contact_traits): what is left is the SHA-256 of the e-mail address.
with

source as (

    select * from {{ source('raw', 'events') }}
    where
        type = 'identify'
        {{ new_loads_only() }}

),

renamed as (

    select
        ---------- ids
        message_id,
        user_id,
        anonymous_id,

        ---------- traits
        payload #>> '{traits,email_sha256}' as email_sha256,

        ---------- timestamps
        event_at,
        loaded_at,
        load_id

    from source

)

select * from renamed
