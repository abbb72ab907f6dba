-- Results of the ML jobs (ml.jobs.score): replaced whole by each scoring run, in one
-- transaction, so readers see the previous run or the new one, never half of one.
create schema if not exists ml;
revoke all on schema ml from public;

create table if not exists ml.customer_segments (
    customer_id   text primary key,
    segment_id    integer not null,
    segment_name  text    not null,
    distance      double precision,
    model_version text    not null,
    scored_at     timestamptz not null
);

create table if not exists ml.segment_catalog (
    segment_id    integer primary key,
    segment_name  text    not null,
    description   text    not null,
    customers     integer not null,
    model_version text    not null,
    scored_at     timestamptz not null
);

create table if not exists ml.churn_scores (
    customer_id       text primary key,
    churn_probability double precision not null check (churn_probability between 0 and 1),
    risk_band         text not null check (risk_band in ('low', 'medium', 'high')),
    model_version     text not null,
    scored_at         timestamptz not null
);

create table if not exists ml.recommendations (
    customer_id   text    not null,
    rank          integer not null check (rank >= 1),
    product_id    text    not null,
    score         double precision not null,
    model_version text    not null,
    scored_at     timestamptz not null,
    primary key (customer_id, rank)
);

create table if not exists ml.send_times (
    customer_id             text primary key,
    best_hour               integer not null check (best_hour between 0 and 23),
    confidence              double precision not null,
    events                  double precision not null,
    basis                   text not null check (basis in ('customer', 'segment')),
    best_channel            text,
    channel_engagement_rate double precision,
    model_version           text not null,
    scored_at               timestamptz not null
);

-- One row per published table per scoring run: what is live and where it came from.
create table if not exists ml.score_runs (
    run_id        bigint generated always as identity primary key,
    task          text not null,
    table_name    text not null,
    model_name    text not null,
    model_version text not null,
    rows          bigint not null,
    scored_at     timestamptz not null
);

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_marketer') then
        grant usage on schema ml to crm_marketer;
        grant select on all tables in schema ml to crm_marketer;
    end if;
end
$$;
