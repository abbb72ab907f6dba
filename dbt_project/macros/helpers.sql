{#- The few helpers we would otherwise pull from dbt_utils (the hub is unreachable here). -#}

{% macro surrogate_key(fields) -%}
    md5({% for f in fields %}coalesce(cast({{ f }} as text), '~null~'){% if not loop.last %} || '|' || {% endif %}{% endfor %})
{%- endmacro %}

{#- The day segments and windows are computed for: var('as_of_date'), else the last day with
    events. Read from stg_events__calls through its event_date index when it exists (a
    literal date for the planner), not by scanning every partition of raw.events. -#}
{% macro as_of_date() -%}
    {%- if var('as_of_date') -%}
        cast('{{ var("as_of_date") }}' as date)
    {%- elif execute -%}
        {%- set calls = adapter.get_relation(
            database=target.database, schema='staging', identifier='stg_events__calls') -%}
        {%- if calls is none -%}
            (select max(event_date) from {{ source('raw', 'events') }})
        {%- else -%}
            {%- set day = run_query('select max(event_date) from ' ~ calls).columns[0].values()[0] -%}
            {%- if day is none -%}cast(null as date){%- else -%}cast('{{ day }}' as date){%- endif -%}
        {%- endif -%}
    {%- else -%}
        (select max(event_date) from {{ source('raw', 'events') }})
    {%- endif -%}
{%- endmacro %}

{#- Post-hook of every model: fresh planner statistics for a table just built (dbt does not
    analyze, and autovacuum comes too late for the next model of the same run). Incremental
    tables are analyzed when rebuilt (--full-refresh); after an incremental run their
    statistics do not know the new loads yet, so the planner takes "rows of the new loads"
    for a handful: incremental models are written for that (new rows drive index lookups;
    no join between two sets of new rows). Analyzing load_id after every run, measured at
    10M events, made the planner scan whole tables instead and the run slower (47 s vs 38 s). -#}
{% macro analyze_table() -%}
    {%- set materialized = config.get('materialized') -%}
    {%- if materialized == 'table' or (materialized == 'incremental' and flags.FULL_REFRESH) -%}
        analyze {{ this }}
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}

{#- Post-hook of the few incremental models whose next run plans from their newest rows
    (customer_segments_daily starts each customer from its row of the newest stored day):
    analyze after every run, so that day is in the statistics. Without it a second run on the
    same day (no new load, or the collector's loads minutes later) took that day for one row
    and anti-joined every customer against every customer in a nested loop: 272 s instead of
    0.5 s at 10M events. The analyze samples the table: 0.25 s there. -#}
{% macro analyze_after_increment() -%}
    {%- if is_incremental() -%}
        analyze {{ this }}
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}

{#- A column of jsonb payload as text, or null when absent. -#}
{% macro prop(path, col='payload') -%}
    {{ col }} #>> '{{ "{" ~ path | join(",") ~ "}" }}'
{%- endmacro %}

{#- Safe numeric cast for values from JSON: null when not a number. -#}
{% macro to_numeric(expr) -%}
    case when ({{ expr }}) ~ '^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$' then ({{ expr }})::numeric end
{%- endmacro %}

{#- Post-hook: a partial index (dbt's `indexes` config has no WHERE), created once per table
    (a full refresh builds a new table, which gets its own). -#}
{% macro partial_index(columns, where) -%}
    do $$
    begin
        if not exists (
            select 1 from pg_index as i
            where i.indrelid = '{{ this }}'::regclass and i.indpred is not null
        ) then
            create index on {{ this }} ({{ columns | join(', ') }}) where {{ where }};
        end if;
    end
    $$
{%- endmacro %}

{#- In an aggregate: the newest non-null `value` by its time `at` (ties: the greatest value). -#}
{% macro latest_non_null(value, at) -%}
    (array_agg({{ value }} order by {{ at }} desc, {{ value }} desc) filter (where {{ value }} is not null))[1]
{%- endmacro %}

{#- Post-hook: a unique index on `columns`, created once per table, for relations whose
    materialization has no `indexes` config (snapshots). -#}
{% macro unique_index(columns) -%}
    do $$
    begin
        if not exists (
            select 1 from pg_index as i
            where i.indrelid = '{{ this }}'::regclass and i.indisunique and i.indpred is null
        ) then
            create unique index on {{ this }} ({{ columns | join(', ') }});
        end if;
    end
    $$
{%- endmacro %}
