-- The HTTP collector (crm collect): its sources, each with one write key stored as its
-- SHA-256 (the key itself is shown once, when the source is added).
create table if not exists raw.sources (
    name        text        primary key check (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    key_sha256  text        not null unique,
    key_hint    text        not null,             -- the key's first characters
    origins     text[]      not null default '{}', -- browser origins allowed; empty: any
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz
);
comment on table raw.sources is
    'Sources of the HTTP collector: write keys (SHA-256) and the browser origins they serve';

-- group calls (a user joins an account or company) are part of the contract
alter table raw.events drop constraint if exists events_type_check;
alter table raw.events add constraint events_type_check
    check (type in ('track', 'page', 'screen', 'identify', 'alias', 'group'));

-- advertising ids (IDFA / AAID) are no longer stored: the SQL rules drop them as the loader
-- does (by default), and so do they for what was stored before
create or replace function raw.minimise_payload(p jsonb) returns jsonb
language sql immutable as $$
    select raw.truncate_ips(
        case when jsonb_typeof(q #> '{context,traits}') = 'object'
             then jsonb_set(q, '{context,traits}', raw.minimise_traits(q #> '{context,traits}'))
             else q end)
    from (select case when jsonb_typeof(r -> 'traits') = 'object'
                      then jsonb_set(r, '{traits}', raw.minimise_traits(r -> 'traits'))
                      else r end as q
          from (select case when jsonb_typeof(p #> '{context,device}') = 'object'
                            then p #- '{context,device,advertisingId}'
                            else p end as r) t) s
$$;

update raw.events
set payload = payload #- '{context,device,advertisingId}'
where payload #> '{context,device}' ? 'advertisingId';

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_loader') then
        grant select, insert, update on raw.sources to crm_loader;
    end if;
end
$$;

-- What the collected_events DAG last announced to Airflow (the newest collector load it
-- counted), so each collected load schedules the dbt build once
create table if not exists raw.collector_announced (
    id           boolean     primary key default true check (id),
    last_load_id bigint      not null,
    announced_at timestamptz not null default now()
);
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_loader') then
        grant select, insert, update on raw.collector_announced to crm_loader;
    end if;
end
$$;
