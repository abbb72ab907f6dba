{{ config(materialized='view') }}
-- When each layer last changed: the last load, this build of the marts, the last scoring run,
-- the last delivery update. A view: all but the marts' build time are read when queried.
select
    'raw events (last load)' as layer,
    max(finished_at) as updated_at
from {{ source('raw', 'load_audit') }}
where status in ('loaded', 'partial')

union all

select
    'customer marts (dbt build)' as layer,
    '{{ run_started_at.isoformat() }}'::timestamptz as updated_at

union all

select
    'ML scores (score_customers)' as layer,
    max(scored_at) as updated_at
from {{ source('ml', 'score_runs') }}

union all

select
    'campaign deliveries' as layer,
    max(updated_at) as updated_at
from {{ source('crm', 'deliveries') }}
