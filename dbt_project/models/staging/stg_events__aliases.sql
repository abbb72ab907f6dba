-- alias calls: previous_id (usually an anonymous id) is the same person as user_id.
with

source as (

    select * from {{ source('raw', 'events') }}
    where type = 'alias'

),

renamed as (

    select
        message_id,
        previous_id,
        user_id,
        event_at

    from source

)

select * from renamed
