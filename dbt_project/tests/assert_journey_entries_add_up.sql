-- Every entry of a journey step is in exactly one of its outcome columns.
select campaign_id
from {{ ref('journey_performance') }}
where entered <> waiting + exited + planned + not_eligible + expired
