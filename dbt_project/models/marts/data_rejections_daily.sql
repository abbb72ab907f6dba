{{ config(materialized='view') }}
-- Quarantined lines per day and why, without the lines themselves (they may hold personal
-- data; they stay in raw.rejected_events for the people who fix feeds).
with

rejected as (

    select * from {{ source('raw', 'rejected_events') }}

),

final as (

    select
        (rejected_at at time zone 'UTC')::date as rejected_date,
        case
            when reason like 'invalid JSON%' then 'invalid JSON'
            when reason like 'invalid UTF-8%' then 'invalid UTF-8'
            else left(reason, 160)
        end as reason,
        count(*) as lines
    from rejected
    group by 1, 2

)

select * from final
