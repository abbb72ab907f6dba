-- The suppression list: customers who must not be contacted, on one channel or on all ('*'),
-- whatever their consent says (a complaint, a legal hold, staff accounts). Planning and
-- sending both check it.
create table if not exists crm.suppressions (
    customer_id   text        not null,
    channel       text        not null default '*'
        check (channel in ('*', 'push', 'email', 'telegram', 'slack', 'webhook')),
    reason        text        not null,
    added_at      timestamptz not null default now(),
    primary key (customer_id, channel)
);
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_marketer') then
        grant select on crm.suppressions to crm_marketer;
    end if;
end
$$;
