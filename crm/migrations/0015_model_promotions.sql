-- What the training job promoted: for each model version it moved the alias `champion` to,
-- the digest of the version's artifacts, with the run, code revision and data fingerprint it
-- logged. Scoring loads a champion only when its artifacts match what is recorded here, so a
-- version registered, or an alias moved, by anyone else on the MLflow server is refused.
create table if not exists ml.model_promotions (
    model_name       text        not null,
    version          text        not null,
    run_id           text        not null,
    artifact_digest  text        not null,  -- sha256 over (path, sha256 of content), sorted
    code_version     text,
    data_fingerprint text,
    promoted_at      timestamptz not null default now(),
    primary key (model_name, version)
);
comment on table ml.model_promotions is
    'Model versions the training job promoted to champion, with their artifact digests';
