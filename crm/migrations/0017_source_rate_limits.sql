-- Each source's rate limit in calls per second (null: CRM_COLLECT_RATE_LIMIT; 0: none),
-- enforced by the collectors together through Redis
alter table raw.sources add column if not exists rate_limit integer check (rate_limit >= 0);
