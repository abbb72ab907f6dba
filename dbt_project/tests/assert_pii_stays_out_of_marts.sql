-- No column in the analytics schemas carries personal data: e-mail addresses or names appear
-- only in the pii schema.
select
    table_schema,
    table_name,
    column_name
from information_schema.columns
where
    table_schema in ('staging', 'intermediate', 'marts')
    and table_name not in ('stg_events__identifies')
    and column_name in ('email', 'first_name', 'last_name', 'phone', 'address')
