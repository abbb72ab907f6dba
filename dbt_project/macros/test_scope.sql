{#- Tests on event-sized models check recent loads only on incremental runs.

    A generic test configured with `where: "__recent_loads__"` reads, on an incremental run,
    only the rows of loads started within var('lookback_hours') of the newest load: the loads
    an incremental run processes. Older rows were tested when they arrived and incremental
    models do not rewrite them. A full refresh (`--full-refresh`), or the var
    `test_all_rows: true`, tests every row (a backlog older than the look-back is tested by
    the next full refresh). dbt's documented way to give `where` a run-time value is to
    override get_where_subquery, as here. -#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if where -%}
        {%- if '__recent_loads__' in where -%}
            {%- set where = where | replace('__recent_loads__', recent_loads_filter()) -%}
        {%- endif -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) as dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}

{#- True on a full refresh, or with the var test_all_rows (Airflow passes it as a string). -#}
{% macro test_every_row() -%}
    {{ return(flags.FULL_REFRESH or (var('test_all_rows', false) | string | lower) == 'true') }}
{%- endmacro %}

{#- The first recent load is looked up when the test compiles and written in as a constant:
    compared with a subquery, the planner could not use the index on load_id and scanned
    every row. -#}
{% macro recent_loads_filter() -%}
    {%- if test_every_row() -%}
        true
    {%- elif not execute or adapter.get_relation(
        database=target.database, schema='raw', identifier='load_audit') is none -%}
        load_id >= 0
    {%- else -%}
        {%- set query -%}
            select coalesce(min(audit.load_id), 0)
            from {{ source('raw', 'load_audit') }} as audit
            where audit.started_at > (
                select max(newest.started_at) - interval '{{ var("lookback_hours") }} hours'
                from {{ source('raw', 'load_audit') }} as newest
                where newest.status in ('loaded', 'partial')
            )
        {%- endset -%}
        load_id >= {{ run_query(query).columns[0].values()[0] }}
    {%- endif -%}
{%- endmacro %}
