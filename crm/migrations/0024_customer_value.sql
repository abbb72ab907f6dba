-- Predicted customer value (ml.value): per customer, expected orders and spend over the next
-- 90 and 365 days, the probability of being still active and the expected next order; every
-- horizon scored (the two above and any a campaign file asks for) in the long table.
create table if not exists ml.customer_value (
    customer_id            text primary key,
    basis                  text not null check (basis in ('orders', 'first order rate')),
    orders_to_date         integer not null check (orders_to_date >= 0),
    predicted_orders_90d   double precision not null check (predicted_orders_90d >= 0),
    predicted_value_90d    double precision not null check (predicted_value_90d >= 0),
    predicted_orders_365d  double precision not null check (predicted_orders_365d >= 0),
    predicted_value_365d   double precision not null check (predicted_value_365d >= 0),
    p_alive                double precision check (p_alive between 0 and 1),
    spend_per_order        double precision,
    expected_next_order_at date,
    value_band             text not null
                           check (value_band in ('top', 'high', 'medium', 'low', 'none')),
    model_version          text not null,
    scored_at              timestamptz not null
);

create table if not exists ml.customer_value_horizons (
    customer_id      text    not null,
    horizon_days     integer not null check (horizon_days > 0),
    predicted_orders double precision not null check (predicted_orders >= 0),
    predicted_value  double precision not null check (predicted_value >= 0),
    model_version    text    not null,
    scored_at        timestamptz not null,
    primary key (customer_id, horizon_days)
);
-- campaigns check that the horizon they filter on was scored
create index if not exists customer_value_horizons_days on ml.customer_value_horizons (horizon_days);

-- dbt's marts.customer_value view reads them; the dashboards' role reads ml.* already
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_transformer') then
        grant select on ml.customer_value, ml.churn_scores to crm_transformer;
    end if;
    if exists (select 1 from pg_roles where rolname = 'crm_marketer') then
        grant select on ml.customer_value, ml.customer_value_horizons to crm_marketer;
    end if;
end
$$;
