-- A scoring job's artifacts in parts of 1 MB: PostgreSQL's time to store one value grows
-- faster than its size (the 191 MB item state of a 5,000-product shop: 11.2 s as one value,
-- 6.8 s in 4 MB parts, 1.2-1.9 s in 1 MB parts).
alter table ml.score_job_artifacts add column if not exists part integer not null default 0;
alter table ml.score_job_artifacts drop constraint if exists score_job_artifacts_pkey;
alter table ml.score_job_artifacts add primary key (job_id, name, part);
