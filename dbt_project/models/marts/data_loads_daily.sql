{{ config(materialized='view') }}
-- Events loaded and rejected per day and file status: the Data health dashboard's first
-- chart. A view over the load audit (small), so it is current between builds.
with

loads as (

    select * from {{ source('raw', 'load_audit') }}

),

final as (

    select
        (started_at at time zone 'UTC')::date as load_date,
        count(*) as files,
        count(*) filter (where status = 'loaded') as files_loaded,
        count(*) filter (where status = 'partial') as files_partial,
        count(*) filter (where status = 'failed') as files_failed,
        sum(lines) as lines,
        sum(loaded) as events_loaded,
        sum(duplicates) as duplicates,
        sum(rejected) as events_rejected,
        max(finished_at) as last_finished_at
    from loads
    group by 1

)

select * from final
