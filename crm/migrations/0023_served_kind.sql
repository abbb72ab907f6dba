-- What a scoring run served for each task: the model, or its baseline ("baseline: recency")
-- when the model did not beat the baseline on the held-out split.
alter table ml.score_runs add column if not exists model_kind text not null default 'model';

-- the send-time baseline sends everyone at the global best hour
alter table ml.send_times drop constraint if exists send_times_basis_check;
alter table ml.send_times add constraint send_times_basis_check
    check (basis in ('customer', 'segment', 'global'));
