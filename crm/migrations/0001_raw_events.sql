-- Raw event store: one row per messageId, partitioned by the event's UTC date.
create schema if not exists raw;
create schema if not exists crm;

create table if not exists raw.load_audit (
    load_id       bigint generated always as identity primary key,
    file_path     text        not null,
    file_name     text        not null,
    checksum      text        not null,           -- sha256 of the file's bytes
    size_bytes    bigint      not null,
    lines         bigint      not null default 0, -- non-blank lines read
    loaded        bigint      not null default 0,
    duplicates    bigint      not null default 0,
    rejected      bigint      not null default 0,
    status        text        not null default 'running'
        check (status in ('running', 'loaded', 'partial', 'failed')),
    message       text,
    source        text        not null default 'cli', -- cli, airflow:<dag_run>, ...
    started_at    timestamptz not null default now(),
    finished_at   timestamptz,
    constraint load_audit_lines_add_up check (
        status = 'running' or lines = loaded + duplicates + rejected
    )
);
create index if not exists load_audit_checksum_idx on raw.load_audit (checksum, status);

-- Every messageId ever accepted, whatever its date: the global dedup key.
-- (load_id is not a foreign key: a per-row FK check would cost more than the COPY itself.)
create table if not exists raw.message_ids (
    message_id text   primary key,
    event_date date   not null,
    load_id    bigint not null
);

create table if not exists raw.events (
    message_id   text        not null,
    type         text        not null
        check (type in ('track', 'page', 'screen', 'identify', 'alias')),
    event        text,                     -- track: event name; page/screen: name
    user_id      text,
    anonymous_id text,
    previous_id  text,
    event_at     timestamptz not null,     -- the call's timestamp, normalised to UTC
    event_date   date        not null,     -- (event_at at time zone 'UTC')::date
    sent_at      timestamptz,
    payload      jsonb       not null,     -- the call exactly as received (properties, traits,
                                           -- context and any other field are read from here)
    load_id      bigint      not null,
    line_number  integer     not null,
    loaded_at    timestamptz not null default now(),
    check (user_id is not null or anonymous_id is not null)
) partition by range (event_date);
-- No b-tree indexes here: uniqueness lives in raw.message_ids, readers (dbt) scan by
-- partition, and every index would be paid for on each COPY. BRIN indexes cost almost nothing
-- and let incremental models and audits find recent loads.
create index if not exists events_load_brin on raw.events using brin (load_id);
create index if not exists events_loaded_at_brin on raw.events using brin (loaded_at);

create table if not exists raw.rejected_events (
    rejected_id  bigint generated always as identity primary key,
    load_id      bigint      not null references raw.load_audit (load_id),
    file_path    text        not null,
    checksum     text        not null,
    line_number  bigint      not null,
    reason       text        not null,
    line_text    text        not null,   -- the line as text (invalid UTF-8 and NUL shown escaped)
    line_bytes   bytea       not null,   -- the exact original bytes
    rejected_at  timestamptz not null default now(),
    unique (checksum, line_number)
);

-- The Segment fields as columns, for people exploring raw data by hand.
create or replace view raw.event_calls as
select
    message_id, type, event, user_id, anonymous_id, previous_id, event_at, event_date, sent_at,
    coalesce(payload -> 'properties', '{}') as properties,
    coalesce(payload -> 'traits', '{}')     as traits,
    coalesce(payload -> 'context', '{}')    as context,
    load_id, line_number, loaded_at
from raw.events;

-- Creates the daily partition for each date given; safe to call concurrently.
create or replace function raw.ensure_event_partitions(days date[])
returns void language plpgsql as $$
declare
    d date;
    part text;
begin
    perform pg_advisory_xact_lock(hashtext('raw.events partitions'));
    foreach d in array days loop
        part := 'events_' || to_char(d, 'YYYYMMDD');
        if to_regclass('raw.' || part) is null then
            execute format(
                'create table raw.%I partition of raw.events for values from (%L) to (%L)',
                part, d, d + 1
            );
        end if;
    end loop;
end;
$$;
