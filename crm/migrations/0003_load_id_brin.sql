-- Incremental dbt models pick up new loads by load_id: a BRIN index (load ids grow with
-- insertion order within each partition) finds them without scanning old partitions.
create index if not exists events_load_id_brin on raw.events using brin (load_id);
