-- Campaign occurrences and non-push channels.
-- A campaign runs once, on each tick of its cron, or on each hour its trigger fires: each run
-- is an occurrence with its own audience snapshot. crm.campaign_runs keeps the definition that
-- was used (so an ad-hoc launch from the Airflow trigger form is reproducible and the sender
-- needs no campaign files), and deliveries carry the rendered message, its variant and the
-- customer's segment, so "what was sent to whom" never depends on files that changed since.
create table if not exists crm.campaign_runs (
    campaign_id   text        not null,
    occurrence    timestamptz not null,
    source        text        not null check (source in ('file', 'trigger form', 'cli')),
    definition    jsonb       not null,
    ends_on       date        not null,
    members       integer,
    held_out      integer,
    planned_at    timestamptz not null default now(),
    primary key (campaign_id, occurrence)
);

alter table crm.campaign_audiences
    add column if not exists occurrence timestamptz not null default '-infinity';
alter table crm.campaign_audiences drop constraint if exists campaign_audiences_pkey;
alter table crm.campaign_audiences add primary key (campaign_id, occurrence, customer_id);

alter table crm.deliveries
    add column if not exists occurrence timestamptz not null default '-infinity',
    add column if not exists variant    text,
    add column if not exists segment    text;
create index if not exists deliveries_campaign_customer_idx
    on crm.deliveries (campaign_id, customer_id);

-- Where a customer can be reached on an apprise channel (telegram chat id, slack or webhook
-- URL part): registering an address is the customer's opt-in for that channel. E-mail
-- addresses come from pii.customer_pii and consent from the e-mail consent events.
create table if not exists crm.channel_addresses (
    customer_id   text        not null,
    channel       text        not null check (channel in ('telegram', 'slack', 'webhook')),
    address       text        not null,
    opted_in_at   timestamptz not null default now(),
    primary key (customer_id, channel)
);
