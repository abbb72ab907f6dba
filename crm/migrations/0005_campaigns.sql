-- Campaign audiences and the delivery log (notify/). The delivery log's unique key is what
-- makes re-runs, retries and a killed worker safe: one row per campaign, customer, channel and
-- send slot, claimed before it is sent.
create table if not exists crm.campaign_audiences (
    campaign_id   text        not null,
    customer_id   text        not null,
    held_out      boolean     not null,
    snapshot_at   timestamptz not null,
    primary key (campaign_id, customer_id)
);

create table if not exists crm.deliveries (
    delivery_id   bigint generated always as identity primary key,
    campaign_id   text        not null,
    customer_id   text        not null,
    channel       text        not null,
    slot          timestamptz not null,
    state         text        not null default 'planned'
        check (state in ('planned', 'sending', 'sent', 'failed', 'suppressed', 'held_out')),
    reason        text,
    attempts      integer     not null default 0,
    title         text,
    body          text,
    link          text,
    planned_at    timestamptz not null default now(),
    claimed_at    timestamptz,
    sent_at       timestamptz,
    updated_at    timestamptz not null default now(),
    constraint deliveries_once unique (campaign_id, customer_id, channel, slot)
);
create index if not exists deliveries_due_idx on crm.deliveries (slot) where state = 'planned';
create index if not exists deliveries_customer_idx on crm.deliveries (customer_id, sent_at);
