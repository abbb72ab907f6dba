-- Personal data: each known customer's latest e-mail and names from identify traits.
-- Lives in the pii schema, readable only by roles granted crm_pii.
with

identifies as (

    select * from {{ ref('stg_events__identifies') }}
    where user_id is not null

),

latest as (

    select
        user_id as customer_id,
        (array_agg(email order by event_at desc) filter (where email is not null))[1] as email,
        (array_agg(first_name order by event_at desc) filter (where first_name is not null))[1]
            as first_name,
        (array_agg(last_name order by event_at desc) filter (where last_name is not null))[1]
            as last_name,
        max(event_at) as updated_at
    from identifies
    group by user_id

)

select * from latest
