{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    indexes=[{'columns': ['load_id'], 'type': 'brin'}, {'columns': ['anonymous_id', 'event_at']},
             {'columns': ['event_date']}],
    post_hook="{{ partial_index(['user_id', 'event_date'], 'anonymous_id is null') }}",
  )
}}
-- Indexes: message_id is unique by construction (raw.message_ids); load_id grows with the
-- heap, so BRIN finds a load's rows at almost no cost per insert; server-side calls (no
-- anonymous id) get a small partial index for the per-user roll-up.
-- Every call with the common fields typed and the device context flattened. Event-sized, so
-- a table filled incrementally, load by load: JSON is parsed once per event, not per build.
with

source as (

    select * from {{ source('raw', 'events') }}
    where true {{ new_loads_only() }}

),

renamed as (

    select
        ---------- ids
        message_id,
        user_id,
        anonymous_id,
        coalesce(payload #>> '{context,device,id}', anonymous_id) as device_id,

        ---------- call
        type as call_type,
        event as event_name,
        coalesce(
            payload #>> '{context,device,type}',
            case when payload #>> '{context,library,name}' = 'analytics.js' then 'web' end,
            case when anonymous_id is null then 'server' end,
            'unknown'
        ) as platform,
        payload #>> '{context,device,token}' as push_token,
        payload #>> '{context,timezone}' as time_zone,
        payload #>> '{context,locale}' as locale,
        coalesce(
            payload #>> '{context,page,path}',
            case when type in ('page', 'screen') then event end
        ) as page_path,
        payload #>> '{properties,source}' as traffic_source,

        ---------- timestamps
        event_at,
        event_date,
        loaded_at,
        load_id

    from source

)

select * from renamed
