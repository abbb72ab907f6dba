-- dbt's data_freshness view reads when scoring last ran.
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_transformer') then
        grant usage on schema ml to crm_transformer;
        grant select on ml.score_runs to crm_transformer;
    end if;
end
$$;
