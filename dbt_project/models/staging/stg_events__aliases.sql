{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    indexes=[{'columns': ['message_id'], 'unique': True}, {'columns': ['load_id']}],
  )
}}
-- alias calls: previous_id (usually an anonymous id) is the same person as user_id.
with

source as (

    select * from {{ source('raw', 'events') }}
    where
        type = 'alias'
        {{ new_loads_only() }}

),

renamed as (

    select
        message_id,
        previous_id,
        user_id,
        event_at,
        loaded_at,
        load_id

    from source

)

select * from renamed
