-- A scoring job's artifacts (item statistics, item state: float arrays of 100-300 MB) are
-- stored without TOAST compression: pglz spent 4x the time of the write on data that does
-- not compress (150 MB written in 4.6 s compressed, 1.1 s not).
alter table ml.score_job_artifacts alter column payload set storage external;
