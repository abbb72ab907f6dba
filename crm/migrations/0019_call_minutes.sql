-- Calls per minute, counted once as each load commits (crm.ingest.load), so the Live
-- dashboard reads a few hundred rows an hour instead of recounting every call of the hour
-- (7.2M rows at 2,000 calls a second, every 10 s). Counts only: no id, no payload.
-- the rows of one load, read back as it commits
create index if not exists rejected_events_load_idx on raw.rejected_events (load_id);

-- A field of a quarantined line, when the line is a JSON object: null otherwise, never an
-- error for a view or a load to trip on. A line quarantined for a \u0000 escape (PostgreSQL
-- cannot hold it as text, and its JSON functions refuse the whole line) is read with each
-- \u0000 shown as U+FFFD.
create or replace function raw.line_field(line text, field text, width int default 200)
returns text language plpgsql immutable parallel safe as $$
begin
    if line is not json object then
        return null;
    end if;
    begin
        return left(line::json ->> field, width);
    exception when untranslatable_character then
        return left(replace(line, '\u0000', '\ufffd')::json ->> field, width);
    end;
exception when others then
    return null;
end
$$;

create table if not exists raw.call_minutes (
    minute   timestamptz not null,             -- the minute the load committed in
    source   text        not null,             -- the collector's source, or 'files'
    type     text        not null default '',
    outcome  text        not null,             -- 'accepted' or 'rejected'
    reason   text        not null default '',  -- why rejected (first 300 characters)
    calls    bigint      not null,
    primary key (minute, source, type, outcome, reason)
);
comment on table raw.call_minutes is
    'Calls loaded or rejected per minute, source, type and reason (kept 7 days): Live dashboard';

-- Counted from now on; the last hour of calls loaded before, once.
insert into raw.call_minutes (minute, source, type, outcome, reason, calls)
select minute, source, type, outcome, reason, count(*)
from (
    select
        date_trunc('minute', e.loaded_at) as minute,
        case when a.source like 'collector:%' then substr(a.source, 11) else 'files' end as source,
        e.type,
        'accepted' as outcome,
        '' as reason
    from raw.events e
    join raw.load_audit a using (load_id)
    where e.loaded_at >= now() - interval '1 hour'
    union all
    select
        date_trunc('minute', r.rejected_at),
        case when a.source like 'collector:%' then substr(a.source, 11) else 'files' end,
        coalesce(raw.line_field(r.line_text, 'type', 40), ''),
        'rejected',
        left(r.reason, 300)
    from raw.rejected_events r
    join raw.load_audit a using (load_id)
    where r.rejected_at >= now() - interval '1 hour'
) as calls
group by 1, 2, 3, 4, 5
on conflict do nothing;

create or replace view crm.live_call_minutes as
select minute, source, nullif(type, '') as type, outcome, nullif(reason, '') as reason, calls
from raw.call_minutes
where minute >= date_trunc('minute', now()) - interval '1 hour';
comment on view crm.live_call_minutes is
    'Calls loaded or rejected per minute of the last hour, by source, type and reason (Live dashboard)';

-- The newest calls: the last 10 minutes, not the hour (the Live table shows the newest 100).
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
where e.loaded_at >= now() - interval '10 minutes'
union all
select
    r.rejected_at,
    r.rejected_at,
    case when a.source like 'collector:%' then substr(a.source, 11) else 'files' end,
    raw.line_field(r.line_text, 'type', 40),
    raw.line_field(r.line_text, 'event'),
    null,
    null,
    raw.line_field(r.line_text, 'messageId'),
    'rejected',
    r.reason
from raw.rejected_events r
join raw.load_audit a using (load_id)
where r.rejected_at >= now() - interval '10 minutes';
comment on view crm.live_calls is
    'Calls loaded or rejected in the last 10 minutes (Live dashboard): no payload';

-- Received-to-loaded delays over the last minute (every collected call of it), not five.
drop view if exists crm.live_freshness;
create view crm.live_freshness as
with recent as (
    select extract(epoch from e.loaded_at - (e.payload ->> 'receivedAt')::timestamptz) as delay
    from raw.events e
    join raw.load_audit a using (load_id)
    where e.loaded_at >= now() - interval '1 minute' and a.source like 'collector:%'
), last_load as (
    select max(finished_at) as at
    from raw.load_audit
    where status in ('loaded', 'partial')
)
select
    l.at                                                          as last_load_at,
    round(extract(epoch from now() - l.at)::numeric, 1)           as seconds_since_last_load,
    (select count(*) from recent)                                 as collected_last_minute,
    round((select percentile_cont(0.5) within group (order by delay) from recent)::numeric, 2)
                                                                  as received_to_loaded_p50_s,
    round((select percentile_cont(0.95) within group (order by delay) from recent)::numeric, 2)
                                                                  as received_to_loaded_p95_s
from last_load l;
comment on view crm.live_freshness is
    'How fresh raw.events is: the newest load, and received-to-loaded delays of the last minute';

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_loader') then
        grant select, insert, update, delete on raw.call_minutes to crm_loader;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_transformer') then
        grant select on raw.call_minutes to crm_transformer;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_marketer') then
        grant select on crm.live_call_minutes, crm.live_calls, crm.live_freshness
            to crm_marketer;
    end if;
end
$$;
