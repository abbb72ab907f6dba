-- Data subjects' requests (access, erasure), queued from the privacy_requests DAG's trigger
-- form or by inserting a row; the DAG works them off. Once done, the subject's id is removed
-- from the request (only its SHA-256 stays, to prove what was done).
create table if not exists crm.privacy_requests (
    request_id    bigint generated always as identity primary key,
    kind          text        not null check (kind in ('export', 'erase')),
    subject       text,
    subject_hash  text        not null,
    requested_by  text        not null,
    requested_at  timestamptz not null default now(),
    status        text        not null default 'pending'
        check (status in ('pending', 'done', 'failed')),
    done_at       timestamptz,
    result        text,
    check (status <> 'done' or kind = 'export' or subject is null)
);
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'crm_privacy_officer') then
        grant select, insert, update on crm.privacy_requests to crm_privacy_officer;
    end if;
end
$$;
