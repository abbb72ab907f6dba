{{
  config(
    materialized='incremental',
    unique_key='device_id',
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    indexes=[
      {'columns': ['device_id'], 'unique': True},
      {'columns': ['push_token']},
      {'columns': ['load_id']},
    ],
  )
}}
-- The latest call carrying a push token, per device: push_devices adds the owner and whether
-- the token bounced since. Incremental runs compare each touched device's latest token in the
-- new loads with the one kept (a late call does not replace a newer one).
with

token_calls as (

    select
        device_id,
        push_token,
        platform,
        anonymous_id,
        user_id,
        time_zone,
        event_at as token_seen_at,
        message_id,
        load_id
    from {{ ref('stg_events__calls') }}
    where push_token is not null {{ new_loads_only('load_id') }}

),

candidates as (

    select * from token_calls
    {% if is_incremental() %}
        union all
        select kept.*
        from {{ this }} as kept
        where kept.device_id in (select token_calls.device_id from token_calls)
    {% endif %}

),

final as (

    select distinct on (device_id) *
    from candidates
    order by device_id asc, token_seen_at desc, message_id desc

)

select * from final
