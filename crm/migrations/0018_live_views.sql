-- What the Live dashboard shows, read straight from raw (no dbt run between a call and the
-- screen): the calls of the last hour, accepted or rejected, and how fresh raw.events is.
-- Marketers read these views, never raw itself: they carry ids, types, event names and
-- reasons, no payload (no traits, no properties, no IP).
create or replace view crm.live_calls as
select
    coalesce(
        case when a.source like 'collector:%'
             then (e.payload ->> 'receivedAt')::timestamptz end,
        e.loaded_at)                                       as received_at,
    e.loaded_at,
    case when a.source like 'collector:%' then substr(a.source, 11) else 'files' end
                                                           as source,
    e.type,
    e.event,
    e.user_id,
    e.anonymous_id,
    e.message_id,
    'accepted'::text                                       as outcome,
    null::text                                             as reason
from raw.events e
join raw.load_audit a using (load_id)
where e.loaded_at >= now() - interval '1 hour'
union all
select
    r.rejected_at,
    r.rejected_at,
    case when a.source like 'collector:%' then substr(a.source, 11) else 'files' end,
    case when r.line_text is json object then left(r.line_text::jsonb ->> 'type', 40) end,
    case when r.line_text is json object then left(r.line_text::jsonb ->> 'event', 200) end,
    null,
    null,
    case when r.line_text is json object then left(r.line_text::jsonb ->> 'messageId', 200) end,
    'rejected',
    r.reason
from raw.rejected_events r
join raw.load_audit a using (load_id)
where r.rejected_at >= now() - interval '1 hour';
comment on view crm.live_calls is
    'Calls loaded or rejected in the last hour (Live dashboard): no payload';

create or replace view crm.live_freshness as
with recent as (
    select extract(epoch from e.loaded_at - (e.payload ->> 'receivedAt')::timestamptz) as delay
    from raw.events e
    join raw.load_audit a using (load_id)
    where e.loaded_at >= now() - interval '5 minutes' and a.source like 'collector:%'
), last_load as (
    select max(finished_at) as at
    from raw.load_audit
    where status in ('loaded', 'partial')
)
select
    l.at                                                          as last_load_at,
    round(extract(epoch from now() - l.at)::numeric, 1)           as seconds_since_last_load,
    (select count(*) from recent)                                 as collected_last_5_min,
    round((select percentile_cont(0.5) within group (order by delay) from recent)::numeric, 2)
                                                                  as received_to_loaded_p50_s,
    round((select percentile_cont(0.95) within group (order by delay) from recent)::numeric, 2)
                                                                  as received_to_loaded_p95_s
from last_load l;
comment on view crm.live_freshness is
    'How fresh raw.events is: the newest load, and received-to-loaded delays of collected calls';

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_marketer') then
        grant usage on schema crm to crm_marketer;
        grant select on crm.live_calls, crm.live_freshness to crm_marketer;
    end if;
end
$$;
