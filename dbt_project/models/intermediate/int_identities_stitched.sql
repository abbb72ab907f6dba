{{
  config(
    indexes=[
      {'columns': ['identifier'], 'unique': True},
      {'columns': ['customer_id']},
      {'columns': ['linked_load_id']},
    ],
  )
}}
-- Every user_id and anonymous_id resolved to one customer.
--
-- Rule (first touch): an anonymous id belongs to the first user it was seen with, on any call
-- carrying both ids (identify, or any event after login) or as the previousId of an alias
-- call. A later login of another user on the same device does not move the device's earlier
-- history. A user_id resolves to itself; an anonymous id never linked to a user is a customer
-- of its own ('anon:' || anonymous_id), so every identifier resolves.
with

identifier_days as (

    -- calls rolled up per anonymous id, user id and day (first call of each: first touch)
    select * from {{ ref('int_identifier_days') }}

),

aliases as (

    select * from {{ ref('stg_events__aliases') }}

),

links as (

    select
        anonymous_id as identifier,
        user_id,
        first_event_at as event_at,
        first_message_id as message_id,
        load_id
    from identifier_days
    where anonymous_id is not null and user_id is not null

    union all

    select
        previous_id as identifier,
        user_id,
        event_at,
        message_id,
        load_id
    from aliases
    where previous_id is not null and previous_id <> user_id

),

first_links as (

    select distinct on (identifier)
        identifier,
        user_id as customer_id,
        event_at as linked_at,
        load_id as linked_load_id
    from links
    order by identifier, event_at, message_id

),

users as (

    select
        user_id as identifier,
        'user_id' as identifier_type,
        user_id as customer_id,
        min(event_at) as linked_at,
        null::bigint as linked_load_id
    from (
        select
            user_id,
            first_event_at as event_at
        from identifier_days where user_id is not null
        union all
        select
            user_id,
            event_at
        from aliases where user_id is not null
    ) as user_calls
    group by user_id

),

anonymous_ids as (

    select
        identifier_days.anonymous_id as identifier,
        'anonymous_id' as identifier_type,
        coalesce(first_links.customer_id, 'anon:' || identifier_days.anonymous_id) as customer_id,
        min(first_links.linked_at) as linked_at,
        min(first_links.linked_load_id) as linked_load_id
    from identifier_days
    left join first_links on first_links.identifier = identifier_days.anonymous_id
    where identifier_days.anonymous_id is not null
    group by identifier_days.anonymous_id, first_links.customer_id

),

alias_only as (

    -- previousIds seen only in alias calls
    select
        first_links.identifier,
        'anonymous_id' as identifier_type,
        first_links.customer_id,
        first_links.linked_at,
        first_links.linked_load_id
    from first_links
    where
        not exists (select 1 from anonymous_ids where anonymous_ids.identifier = first_links.identifier)
        and not exists (select 1 from users where users.identifier = first_links.identifier)

),

final as (

    select * from users
    union all
    select * from anonymous_ids
    where not exists (select 1 from users where users.identifier = anonymous_ids.identifier)
    union all
    select * from alias_only

)

select
    identifier,
    identifier_type,
    customer_id,
    customer_id not like 'anon:%' as is_known,
    linked_at,
    linked_load_id
from final
