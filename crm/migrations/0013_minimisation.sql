-- Data minimisation at ingestion (crm/ingest/minimise.py): IP addresses truncated, personal
-- traits moved out of raw.events into pii.contact_traits (the payload keeps email_sha256 and
-- phone_sha256). The functions below are the same rules in SQL; they minimise the rows
-- stored before this migration, and a test holds them to the loader's result.
create table if not exists pii.contact_traits (
    message_id   text        primary key,   -- the call the traits came with (raw.events)
    user_id      text,
    anonymous_id text,
    event_at     timestamptz not null,
    traits       jsonb       not null,      -- e-mail, phone, names, address, birthday, username
    load_id      bigint      not null,
    loaded_at    timestamptz not null default now(),
    check (user_id is not null or anonymous_id is not null)
);
create index if not exists contact_traits_user_idx on pii.contact_traits (user_id);
create index if not exists contact_traits_anonymous_idx on pii.contact_traits (anonymous_id);
comment on column raw.events.payload is
    'The call as received, minimised: IPs truncated, personal traits in pii.contact_traits';

create or replace function raw.truncate_ip(v text) returns text
language plpgsql immutable as $$
begin
    if v ~ '^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])$' then
        return regexp_replace(v, '\.[0-9]+$', '.0');
    end if;
    if v like '%:%' and v !~ '[/%\s]' then
        return host(network(set_masklen(v::inet, 48)));
    end if;
    return null;
exception when others then
    return null;
end;
$$;

create or replace function raw.truncate_ips(j jsonb) returns jsonb
language plpgsql immutable as $$
declare
    k text;
    v jsonb;
    out jsonb;
begin
    if jsonb_typeof(j) = 'object' then
        out := '{}';
        for k, v in select * from jsonb_each(j) loop
            if k = 'ip' then
                out := out || jsonb_build_object(k, case when jsonb_typeof(v) = 'string'
                                                     then to_jsonb(raw.truncate_ip(v #>> '{}')) end);
            else
                out := out || jsonb_build_object(k, raw.truncate_ips(v));
            end if;
        end loop;
        return out;
    elsif jsonb_typeof(j) = 'array' then
        select coalesce(jsonb_agg(raw.truncate_ips(e) order by n), '[]') into out
        from jsonb_array_elements(j) with ordinality as a(e, n);
        return out;
    end if;
    return j;
end;
$$;

create or replace function raw.personal_keys() returns text[] language sql immutable as $$
    select array['email', 'phone', 'name', 'first_name', 'last_name', 'firstName', 'lastName',
                 'address', 'birthday', 'username']
$$;

-- the personal traits kept: non-empty values of the personal keys
create or replace function raw.kept_traits(t jsonb) returns jsonb language sql immutable as $$
    select coalesce(jsonb_object_agg(key, value), '{}')
    from jsonb_each(case when jsonb_typeof(t) = 'object' then t else '{}' end)
    where key = any(raw.personal_keys()) and value not in ('null'::jsonb, '""'::jsonb)
$$;

create or replace function raw.personal_traits(p jsonb) returns jsonb language sql immutable as $$
    select nullif(raw.kept_traits(p -> 'traits') || raw.kept_traits(p #> '{context,traits}'),
                  '{}'::jsonb)
$$;

-- traits without the personal keys, with <key>_sha256 for e-mail and phone
create or replace function raw.minimise_traits(t jsonb) returns jsonb language sql immutable as $$
    select (t - raw.personal_keys()) || coalesce((
        select jsonb_object_agg(key || '_sha256',
                                encode(sha256(convert_to(lower(trim(value #>> '{}')), 'UTF8')), 'hex'))
        from jsonb_each(raw.kept_traits(t)) where key in ('email', 'phone')), '{}')
$$;

create or replace function raw.minimise_payload(p jsonb) returns jsonb
language sql immutable as $$
    select raw.truncate_ips(
        case when jsonb_typeof(p #> '{context,traits}') = 'object'
             then jsonb_set(q, '{context,traits}', raw.minimise_traits(q #> '{context,traits}'))
             else q end)
    from (select case when jsonb_typeof(p -> 'traits') = 'object'
                      then jsonb_set(p, '{traits}', raw.minimise_traits(p -> 'traits'))
                      else p end as q) s
$$;

-- what was stored before
insert into pii.contact_traits (message_id, user_id, anonymous_id, event_at, traits, load_id)
select message_id, user_id, anonymous_id, event_at, raw.personal_traits(payload), load_id
from raw.events
where (payload ? 'traits' or payload -> 'context' ? 'traits')
  and raw.personal_traits(payload) is not null
on conflict (message_id) do nothing;

update raw.events set payload = raw.minimise_payload(payload)
where payload ? 'traits' or payload -> 'context' ? 'traits' or payload::text like '%"ip"%';

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_loader') then
        grant usage on schema pii to crm_loader;
        grant select, insert, delete on pii.contact_traits to crm_loader;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_transformer') then
        grant select on pii.contact_traits to crm_transformer;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_pii') then
        grant select on pii.contact_traits to crm_pii;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_privacy_officer') then
        grant select, delete on pii.contact_traits to crm_privacy_officer;
    end if;
end
$$;
