-- The group roles' rights on what later migrations added, and on what is created from now on:
-- crm_ml scores in shards (the job tables, its staging schema, the value tables); crm_sender
-- and crm_marketer read every ml table (audiences filter on predicted value); the privacy
-- officer reads and deletes in every table that can hold a person, including the tables dbt
-- rebuilds on each run (default privileges of the role that runs the migrations and dbt).
create schema if not exists ml_stage;
create schema if not exists snapshots;  -- dbt's snapshots (consent history)
revoke all on schema ml_stage, snapshots from public;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_transformer') then
        grant usage, create on schema snapshots to crm_transformer;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_ml') then
        grant usage on schema ml to crm_ml;
        grant usage, create on schema ml_stage to crm_ml;
        grant select, insert, update, delete, truncate on all tables in schema ml to crm_ml;
        grant usage on all sequences in schema ml to crm_ml;
        alter default privileges in schema ml
            grant select, insert, update, delete, truncate on tables to crm_ml;
        alter default privileges in schema ml grant usage on sequences to crm_ml;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_sender') then
        grant select on all tables in schema ml to crm_sender;
        alter default privileges in schema ml grant select on tables to crm_sender;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_marketer') then
        grant select on all tables in schema ml to crm_marketer;
        alter default privileges in schema ml grant select on tables to crm_marketer;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_privacy_officer') then
        grant usage on schema raw, staging, intermediate, marts, snapshots, pii, ml, crm
            to crm_privacy_officer;
        grant select, delete on all tables
            in schema raw, staging, intermediate, marts, snapshots, pii, ml to crm_privacy_officer;
        grant select, update, delete on all tables in schema crm to crm_privacy_officer;
        alter default privileges in schema raw, staging, intermediate, marts, snapshots, pii, ml
            grant select, delete on tables to crm_privacy_officer;
        alter default privileges in schema crm
            grant select, update, delete on tables to crm_privacy_officer;
    end if;
end
$$;

-- every login may read which migrations are applied (so the CLI's check needs no DDL) and call
-- crm.now(), the pipeline's clock
grant usage on schema crm to public;
grant select on crm.schema_migrations to public;
