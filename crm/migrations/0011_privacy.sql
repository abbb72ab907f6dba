-- Right to erasure: a tombstone per erased identifier (its SHA-256, never the identifier), so
-- re-ingesting old files, a catch-up or a backfill can never bring the person back; a load
-- counts the lines it dropped for that reason. Roles for the remaining duties.
create table if not exists crm.erased_identifiers (
    identifier_hash text        primary key,  -- encode(sha256(identifier), 'hex')
    erased_at       timestamptz not null default now()
);

alter table raw.load_audit add column if not exists erased bigint not null default 0;
alter table raw.load_audit drop constraint if exists load_audit_lines_add_up;
alter table raw.load_audit add constraint load_audit_lines_add_up check (
    status = 'running' or lines = loaded + duplicates + rejected + erased
);

-- crm_ml reads the marts and writes ml; crm_sender plans and sends (reads marts, ml, the
-- e-mail addresses in pii; writes crm); crm_privacy_officer exports and erases everywhere.
do $$
declare
    r text;
begin
    foreach r in array array['crm_ml', 'crm_sender', 'crm_privacy_officer'] loop
        if not exists (select 1 from pg_roles where rolname = r) then
            begin
                execute format('create role %I nologin', r);
            exception when insufficient_privilege then
                raise notice 'cannot create role % (no CREATEROLE); grant access by hand', r;
            end;
        end if;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'crm_ml') then
        grant usage on schema marts, ml to crm_ml;
        grant select on all tables in schema marts to crm_ml;
        grant select, insert, update, delete, truncate on all tables in schema ml to crm_ml;
        alter default privileges in schema marts grant select on tables to crm_ml;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_sender') then
        grant usage on schema marts, ml, pii, crm to crm_sender;
        grant select on all tables in schema marts, ml to crm_sender;
        grant select on all tables in schema pii to crm_sender;
        grant select, insert, update, delete on crm.deliveries, crm.campaign_audiences,
            crm.campaign_runs, crm.invalid_tokens, crm.suppressions, crm.channel_addresses
            to crm_sender;
        alter default privileges in schema marts grant select on tables to crm_sender;
        alter default privileges in schema pii grant select on tables to crm_sender;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_privacy_officer') then
        grant usage on schema raw, staging, intermediate, marts, pii, ml, crm
            to crm_privacy_officer;
        grant select, delete on all tables in schema raw, staging, intermediate, marts, pii, ml
            to crm_privacy_officer;
        grant select, update, delete on all tables in schema crm to crm_privacy_officer;
        grant insert on crm.erased_identifiers to crm_privacy_officer;
    end if;
end
$$;
