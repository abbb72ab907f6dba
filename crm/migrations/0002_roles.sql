-- Least-privilege roles (NOLOGIN groups: grant them to real login roles).
--   crm_loader       writes raw.*          (ingestion)
--   crm_transformer  reads raw, owns the dbt schemas
--   crm_marketer     reads marts only      (Superset, campaign tools)
--   crm_pii          reads pii             (privacy officer, e-mail sender)
-- Roles are cluster-wide; a database user without CREATEROLE skips this with a notice, and
-- the schemas stay closed to everyone but their owner.
do $$
declare
    r text;
begin
    foreach r in array array['crm_loader', 'crm_transformer', 'crm_marketer', 'crm_pii'] loop
        if not exists (select 1 from pg_roles where rolname = r) then
            begin
                execute format('create role %I nologin', r);
            exception when insufficient_privilege then
                raise notice 'cannot create role % (no CREATEROLE); grant access by hand', r;
            end;
        end if;
    end loop;
end
$$;

create schema if not exists staging;
create schema if not exists intermediate;
create schema if not exists marts;
create schema if not exists pii;
revoke all on schema raw, staging, intermediate, marts, pii from public;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_loader') then
        grant usage on schema raw to crm_loader;
        grant select, insert, update on all tables in schema raw to crm_loader;
        grant usage on all sequences in schema raw to crm_loader;
        grant usage, create on schema raw to crm_loader;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_transformer') then
        grant usage on schema raw to crm_transformer;
        grant select on all tables in schema raw to crm_transformer;
        grant usage, create on schema staging, intermediate, marts, pii to crm_transformer;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_marketer') then
        grant usage on schema marts to crm_marketer;
        grant select on all tables in schema marts to crm_marketer;
        -- tables dbt (re)creates later, as the role running this migration
        alter default privileges in schema marts grant select on tables to crm_marketer;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_pii') then
        grant usage on schema pii to crm_pii;
        grant select on all tables in schema pii to crm_pii;
        alter default privileges in schema pii grant select on tables to crm_pii;
    end if;
end
$$;
