-- FCM said these tokens are gone (UNREGISTERED) or invalid: never sent to again.
create table if not exists crm.invalid_tokens (
    token       text primary key,
    reason      text,
    recorded_at timestamptz not null default now()
);
