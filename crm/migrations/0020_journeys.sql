-- Event-triggered journeys (notify/journeys.py): who entered on which event, when the message
-- is due, and what ended the wait. Kept in PostgreSQL so a restart of the journeys process
-- loses and repeats nothing: an entry is keyed by the event that started it, a load is taken
-- once per journey, and an entry is marked planned in the transaction that plans its delivery.
create table if not exists crm.journey_entries (
    campaign_id        text        not null,
    trigger_message_id text        not null,       -- the event the customer entered on
    user_id            text,
    anonymous_id       text,
    triggered_at       timestamptz not null,       -- the event's own time
    due_at             timestamptz not null,       -- triggered_at + the wait
    properties         jsonb       not null default '{}',
    load_id            bigint      not null,
    state              text        not null default 'waiting'
        check (state in ('waiting', 'exited', 'planned', 'expired')),
    exit_event         text,
    exit_message_id    text,
    exited_at          timestamptz,                -- the exit event's own time
    customer_id        text,                       -- who it was planned for
    occurrence         timestamptz,                -- the delivery's occurrence
    reason             text,
    entered_at         timestamptz not null default now(),
    decided_at         timestamptz,
    primary key (campaign_id, trigger_message_id),
    check (user_id is not null or anonymous_id is not null)
);
-- the evaluator's work list: waiting entries by due time
create index if not exists journey_entries_waiting_idx
    on crm.journey_entries (campaign_id, due_at) where state = 'waiting';
-- exit events find the waiting entries of the same person
create index if not exists journey_entries_user_idx
    on crm.journey_entries (campaign_id, user_id) where state = 'waiting';
create index if not exists journey_entries_anonymous_idx
    on crm.journey_entries (campaign_id, anonymous_id) where state = 'waiting';

-- Exit events seen for each journey, so an entry that arrives late (a phone that was offline)
-- is judged against exits that arrived before it.
create table if not exists crm.journey_exits (
    campaign_id  text        not null,
    message_id   text        not null,
    event        text        not null,
    user_id      text,
    anonymous_id text,
    event_at     timestamptz not null,
    primary key (campaign_id, message_id)
);
create index if not exists journey_exits_user_idx on crm.journey_exits (campaign_id, user_id);
create index if not exists journey_exits_anonymous_idx
    on crm.journey_exits (campaign_id, anonymous_id);

-- Each journey as the evaluator knows it: it reads loads that committed after it started (a
-- new journey does not remind anyone of last month's carts), and a paused journey (from
-- Airflow or `crm journeys pause`) enters nobody and plans nothing until it is resumed.
create table if not exists crm.journeys (
    campaign_id text        primary key,
    started_at  timestamptz not null default now(),
    paused_at   timestamptz,
    paused_by   text
);

-- The loads each journey has read (a load that committed behind a newer one is still read).
create table if not exists crm.journey_loads (
    campaign_id text        not null,
    load_id     bigint      not null,
    read_at     timestamptz not null default now(),
    primary key (campaign_id, load_id)
);
