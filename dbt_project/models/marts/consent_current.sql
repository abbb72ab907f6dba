-- The current consent per customer and channel (one row each): what the snapshot tracks.
select
    customer_id || ':' || channel as consent_key,
    customer_id,
    channel,
    granted,
    consent_source,
    changed_at
from {{ ref('consent_history') }}
where is_current
