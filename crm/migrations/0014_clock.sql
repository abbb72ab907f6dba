-- The pipeline's clock: what "now" means to the dashboards and to the marts that compare with
-- it. The wall clock, unless the database setting crm.now holds an instant: a simulated shop
-- (make demo) or a restored backup sets its own "now" with `crm db clock --at ...`, so "the
-- last hour" is the last hour of its data. `crm db clock --reset` returns to the wall clock.
create or replace function crm.now() returns timestamptz
language sql stable parallel safe
as $$
    select coalesce(nullif(current_setting('crm.now', true), '')::timestamptz, now())
$$;
comment on function crm.now() is
    'now(), unless the database setting crm.now (crm db clock) holds another instant';
grant execute on function crm.now() to public;
