-- identify calls: who a user is. Carries personal data (e-mail, names): only the pii schema
-- and identity stitching read it.
with

source as (

    select * from {{ source('raw', 'events') }}
    where type = 'identify'

),

renamed as (

    select
        ---------- ids
        message_id,
        user_id,
        anonymous_id,

        ---------- traits
        lower(nullif(trim(payload #>> '{traits,email}'), '')) as email,
        nullif(trim(payload #>> '{traits,first_name}'), '') as first_name,
        nullif(trim(payload #>> '{traits,last_name}'), '') as last_name,

        ---------- timestamps
        event_at

    from source

)

select * from renamed
