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
    tables are analyzed in full when rebuilt (--full-refresh). After an incremental run, only
    load_id is analyzed, from a small sample (a few hundredths of a second at 10M rows): the
    next models select the new loads' rows by it, and a planner that still believed them to
    be one row chose nested loops over tens of thousands of rows. -#}
{% macro analyze_table() -%}
    {%- set materialized = config.get('materialized') -%}
    {%- if materialized == 'table' or (materialized == 'incremental' and flags.FULL_REFRESH) -%}
        analyze {{ this }}
    {%- elif materialized == 'incremental' and execute
        and 'load_id' in (adapter.get_columns_in_relation(this) | map(attribute='name') | list) -%}
        set local default_statistics_target = 10;
        analyze {{ this }} (load_id)
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
