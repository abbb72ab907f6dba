{{
  config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    indexes=[{'columns': ['load_id']}, {'columns': ['anonymous_id', 'event_at']},
             {'columns': ['event_date']}],
    post_hook="{{ partial_index(['user_id', 'event_date'], 'anonymous_id is null') }}",
  )
}}
-- Indexes: message_id is unique by construction (raw.message_ids). load_id is a B-tree, not
-- a BRIN: calls vary in width, so once autovacuum has recorded the pages' leftover space an
-- incremental insert scatters its short calls (identify, alias) over the whole table (at 10M
-- events, 3% of a day's rows touched 1,864 of 2,644 block ranges), every range then spans the
-- new load, and a BRIN scan read all 2.7 GB: the recent-load tests took 2.3 s each, 0.2 s
-- with the B-tree. Server-side calls (no anonymous id) get a small partial index for the
-- per-user roll-up.
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
