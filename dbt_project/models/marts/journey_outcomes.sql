{{ config(materialized='table') }}
-- What became of each journey step's entries, by the day of their trigger: waiting, exited on
-- each exit event ('exited: Order Completed'), planned, not eligible (cap, cooldown, audience or
-- another entry of the customer planned in the same step) or expired.
select
    campaign_id,
    (triggered_at at time zone 'UTC')::date as triggered_on,
    case
        when state = 'exited' then 'exited: ' || coalesce(exit_event, '?')
        when state = 'planned' and occurrence is null then 'not eligible'
        else state
    end as outcome,
    count(*) as entries
from {{ source('crm', 'journey_entries') }}
group by 1, 2, 3
