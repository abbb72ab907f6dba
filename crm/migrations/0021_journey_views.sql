-- What the Delivery monitor shows of the journeys, read live (no dbt run between an event and
-- the screen): each journey step's state now, and what its entries did minute by minute in the
-- last hour. "Now" is the pipeline's clock (crm.now(): the wall clock in production, the
-- simulated shop's in the demo), entries count by their event's own time, decisions by when
-- they were taken. No customer ids, no event properties.
create index if not exists journey_entries_triggered_idx on crm.journey_entries (triggered_at);
create index if not exists journey_entries_decided_idx on crm.journey_entries (decided_at);

create or replace view crm.journey_status as
select
    j.campaign_id,
    case when j.paused_at is null then 'running' else 'paused' end          as status,
    j.started_at,
    j.paused_at,
    j.paused_by,
    count(e.state) filter (where e.state = 'waiting')                       as waiting,
    count(e.state) filter (where e.state = 'waiting' and e.due_at <= crm.now())
                                                                             as due_now,
    count(e.state) filter (where e.triggered_at >= crm.now() - interval '1 hour')
                                                                             as entered_last_hour,
    count(e.state) filter (where e.state = 'planned' and e.occurrence is not null
                           and e.decided_at >= crm.now() - interval '1 hour')    as planned_last_hour,
    count(e.state) filter (where e.state = 'exited'
                           and e.decided_at >= crm.now() - interval '1 hour')    as exited_last_hour,
    max(e.triggered_at)                                                      as last_trigger_at,
    -- loads committed over a minute ago that the journey has not read: more than none, and
    -- the journeys process is not running or is behind
    (select count(*) from raw.load_audit a
     where a.status in ('loaded', 'partial') and a.finished_at >= j.started_at
       and a.finished_at < now() - interval '1 minute'
       and not exists (select 1 from crm.journey_loads r
                       where r.campaign_id = j.campaign_id and r.load_id = a.load_id))
                                                                             as loads_not_read
from crm.journeys j
left join crm.journey_entries e using (campaign_id)
group by j.campaign_id, j.paused_at, j.started_at, j.paused_by;
comment on view crm.journey_status is
    'Each journey step now (Delivery monitor): running or paused, waiting, due, the last hour';

create or replace view crm.journey_minutes as
select campaign_id, date_trunc('minute', triggered_at) as minute, 'entered'::text as what,
       count(*) as entries
from crm.journey_entries
where triggered_at >= crm.now() - interval '1 hour' and triggered_at <= crm.now()
group by 1, 2
union all
select campaign_id, date_trunc('minute', decided_at),
       case when state = 'exited' then 'exited: ' || exit_event
            when state = 'planned' and occurrence is null then 'not eligible'
            else state end,
       count(*)
from crm.journey_entries
where decided_at >= crm.now() - interval '1 hour' and decided_at <= crm.now()
group by 1, 2, 3;
comment on view crm.journey_minutes is
    'Journey entries per minute of the last hour: entered, then planned, exited or expired';

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_transformer') then
        grant select on crm.journey_entries to crm_transformer;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_marketer') then
        grant select on crm.journey_status, crm.journey_minutes to crm_marketer;
    end if;
end
$$;
