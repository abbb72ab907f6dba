-- Scoring in shards: a stable hash of the customer id picks each customer's shard; a scoring
-- job's shards write staging tables (schema ml_stage) and one step swaps them into ml.* when
-- every shard has finished.
create or replace function ml.shard_of(customer_id text, shards integer) returns integer
    language sql immutable strict parallel safe
    as $$ select ((hashtextextended(customer_id, 0) & 9223372036854775807) % shards)::integer $$;

create schema if not exists ml_stage;

create table if not exists ml.score_jobs (
    job_id      text primary key,
    shards      integer not null check (shards > 0),
    scored_at   timestamptz not null,
    as_of       timestamptz not null,
    plan        jsonb not null,           -- champion versions every shard uses, horizons
    state       text not null default 'scoring'
                check (state in ('scoring', 'swapped', 'published', 'abandoned')),
    started_at  timestamptz not null default now(),
    finished_at timestamptz
);

-- one row per shard and step done (a retried shard replaces its row)
create table if not exists ml.score_job_shards (
    job_id      text not null references ml.score_jobs on delete cascade,
    step        text not null check (step in ('items', 'score', 'publish')),
    shard       integer not null,
    rows        jsonb not null default '{}',
    seconds     double precision,
    peak_mb     double precision,
    finished_at timestamptz not null default now(),
    primary key (job_id, step, shard)
);

-- what shards share: each shard's item statistics, then the shop's item state built once
create table if not exists ml.score_job_artifacts (
    job_id  text not null references ml.score_jobs on delete cascade,
    name    text not null,
    payload bytea not null,
    primary key (job_id, name)
);
