-- dbt reads the delivery log (campaign_performance); marketers read the delivery log and the
-- campaign runs for the Delivery monitor. Neither holds addresses: e-mails stay in pii.
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_transformer') then
        grant usage on schema crm to crm_transformer;
        grant select on crm.deliveries, crm.campaign_runs to crm_transformer;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_marketer') then
        grant usage on schema crm to crm_marketer;
        grant select on crm.deliveries, crm.campaign_runs to crm_marketer;
    end if;
end
$$;
