-- Personal data: each customer's latest e-mail, names and phone, from the traits the loader
-- took out of their calls (pii.contact_traits), across every identifier stitched to them.
-- Lives in the pii schema, readable only by roles granted crm_pii.
with

contact_traits as (

    select * from {{ source('pii', 'contact_traits') }}

),

stitched as (

    select * from {{ ref('int_identities_stitched') }}

),

traits as (

    select
        coalesce(by_user.customer_id, by_device.customer_id, contact_traits.user_id)
            as customer_id,
        lower(nullif(trim(contact_traits.traits ->> 'email'), '')) as email,
        nullif(trim(coalesce(contact_traits.traits ->> 'first_name',
                             contact_traits.traits ->> 'firstName')), '') as first_name,
        nullif(trim(coalesce(contact_traits.traits ->> 'last_name',
                             contact_traits.traits ->> 'lastName')), '') as last_name,
        nullif(trim(contact_traits.traits ->> 'phone'), '') as phone,
        contact_traits.event_at
    from contact_traits
    left join stitched as by_user
        on by_user.identifier = contact_traits.user_id
    left join stitched as by_device
        on by_device.identifier = contact_traits.anonymous_id

),

latest as (

    select
        customer_id,
        (array_agg(email order by event_at desc) filter (where email is not null))[1] as email,
        (array_agg(first_name order by event_at desc) filter (where first_name is not null))[1]
            as first_name,
        (array_agg(last_name order by event_at desc) filter (where last_name is not null))[1]
            as last_name,
        (array_agg(phone order by event_at desc) filter (where phone is not null))[1] as phone,
        max(event_at) as updated_at
    from traits
    where customer_id is not null
    group by customer_id

)

select * from latest
