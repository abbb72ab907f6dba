{#- Incremental event models: which loads has this model not processed yet?

    The answer comes from raw.load_audit (one row per file, small), not from scanning events:
    every committed load ('loaded' or 'partial') whose id is not in {{ this }}. Loads started
    more than var('lookback_hours') before the latest processed one are not looked at again
    (a load that contributed no rows to this model would otherwise be re-listed forever); the
    window lets a long load that committed after a later one still be found. `processed`
    names another relation holding the processed load ids (an additive model's side table). -#}
{% macro new_load_ids(processed=none) -%}
    {%- if not execute -%}{{ return('null') }}{%- endif -%}
    {%- set done_loads = processed or this -%}
    {%- set query -%}
        select coalesce(string_agg(audit.load_id::text, ', ' order by audit.load_id), 'null')
        from {{ source('raw', 'load_audit') }} as audit
        where
            audit.status in ('loaded', 'partial')
            and audit.started_at > coalesce(
                (
                    -- the newest load with rows here: loads probed newest first, each a
                    -- lookup in the model's load_id index (any table works, indexed or not)
                    select latest.started_at
                    from {{ source('raw', 'load_audit') }} as latest
                    where exists (select from {{ done_loads }} as done where done.load_id = latest.load_id)
                    order by latest.load_id desc
                    limit 1
                ),
                '-infinity'
            ) - interval '{{ var("lookback_hours") }} hours'
            and not exists (select from {{ done_loads }} as done where done.load_id = audit.load_id)
    {%- endset -%}
    {{ return(run_query(query).columns[0].values()[0]) }}
{%- endmacro %}

{#- In the WHERE clause of an incremental model: keep only rows of loads not processed yet. -#}
{% macro new_loads_only(column='load_id') -%}
    {% if is_incremental() -%}
        and {{ column }} in ({{ new_load_ids() }})
    {%- endif %}
{%- endmacro %}

{#- Devices whose sessions an incremental run of int_events_sessionized recomputed, with the
    start of the first session the new events belong to: every row it rewrote has an event and
    a session start at or after that instant. "New" is relative to {{ this }} (the model
    calling it), so a pre-hook and the model body see the same devices. -#}
{% macro resessionized_devices() -%}
    select
        device_key,
        min(session_start) as from_at
    from {{ ref('int_events_sessionized') }}
    where true {{ new_loads_only('load_id') }}
    group by device_key
{%- endmacro %}

{#- Pre-hook of session-level incremental models: drop the sessions of re-sessionized devices
    from where they were recomputed (the model body inserts them again). -#}
{% macro delete_resessionized(device_column, start_column) -%}
    {%- if is_incremental() -%}
        delete from {{ this }} as kept
        using ({{ resessionized_devices() }}) as touched
        where
            kept.{{ device_column }} = touched.device_key
            and kept.{{ start_column }} >= touched.from_at
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}

{#- Day-keyed roll-ups of an append-only table: on an incremental run, the UTC days the new
    loads have rows on, and every row of those days (through an index on the timestamp), so a
    roll-up recomputes whole days and equals a full refresh; otherwise every row. -#}
{% macro rows_of_touched_days(relation, at_column='event_at') -%}
    {%- if is_incremental() -%}
    select scoped.*
    from (
        select distinct ({{ at_column }} at time zone 'UTC')::date as touched_day
        from {{ relation }}
        where true {{ new_loads_only('load_id') }}
    ) as touched
    inner join {{ relation }} as scoped
        on
            scoped.{{ at_column }} >= touched.touched_day::timestamp at time zone 'UTC'
            and scoped.{{ at_column }} < (touched.touched_day + 1)::timestamp at time zone 'UTC'
    {%- else -%}
    select * from {{ relation }}
    {%- endif -%}
{%- endmacro %}

{#- Incremental strategy "window_replace", for models that recompute, per key, every row from
    some instant on (int_events_sessionized: a device's events from the start of its first
    re-opened session). Each key's rows from its earliest recomputed instant are deleted, then
    the new rows inserted. The delete reaches the few rows rewritten through the (key, instant)
    index; delete+insert on a unique key would instead probe the table once per new row.
    Configure with window_key and window_start. -#}
{% macro get_incremental_window_replace_sql(arg_dict) -%}
    {%- set key = config.require('window_key') -%}
    {%- set start = config.require('window_start') -%}
    {%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    delete from {{ arg_dict['target_relation'] }} as kept
    using (
        select
            {{ key }},
            min({{ start }}) as from_at
        from {{ arg_dict['temp_relation'] }}
        group by {{ key }}
    ) as recomputed
    where
        kept.{{ key }} = recomputed.{{ key }}
        and kept.{{ start }} >= recomputed.from_at;

    insert into {{ arg_dict['target_relation'] }} ({{ columns }})
    select {{ columns }}
    from {{ arg_dict['temp_relation'] }}
{%- endmacro %}

{#- Incremental strategy "replace_days", for day roll-ups that recompute whole days
    (rows_of_touched_days): delete every row of the days the new rows are on, then insert.
    Cheaper than delete+insert on a hashed unique key, whose index is written and probed at
    random. Configure with day_column. -#}
{% macro get_incremental_replace_days_sql(arg_dict) -%}
    {%- set day = config.require('day_column') -%}
    {%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    delete from {{ arg_dict['target_relation'] }}
    where {{ day }} in (select distinct {{ day }} from {{ arg_dict['temp_relation'] }});

    insert into {{ arg_dict['target_relation'] }} ({{ columns }})
    select {{ columns }}
    from {{ arg_dict['temp_relation'] }}
{%- endmacro %}

{#- Additive incremental models (customer_product_interactions adds new events' counts to the
    stored ones) must process each load exactly once, which "loads without a row here" cannot
    promise: a load whose every row was later rewritten by a newer one would be counted again.
    They keep the loads they processed in a side table, <model>__loads, filled by
    record_processed_loads() after each run. -#}
{% macro processed_loads_relation() -%}
    {{ return(api.Relation.create(
        database=this.database, schema=this.schema, identifier=this.identifier ~ '__loads')) }}
{%- endmacro %}

{#- Loads not processed yet that already have rows in one of `sources` (relations with a
    load_id column): a load committed after those were built waits for the next run. Two
    steps, so that the second reads the sources with a literal list of loads (their load_id
    indexes then reach only the recent rows). -#}
{% macro unprocessed_load_ids(sources) -%}
    {%- if not execute or not is_incremental() -%}{{ return('null') }}{%- endif -%}
    {%- set side = processed_loads_relation() -%}
    {%- if adapter.get_relation(database=side.database, schema=side.schema, identifier=side.identifier) is none -%}
        {{ exceptions.raise_compiler_error(side ~ " is missing: run a full refresh of " ~ this) }}
    {%- endif -%}
    {%- set candidates = new_load_ids(side) -%}
    {%- if candidates == 'null' -%}{{ return('null') }}{%- endif -%}
    {%- set query -%}
        select coalesce(string_agg(present.load_id::text, ', ' order by present.load_id), 'null')
        from (
            {%- for source_relation in sources %}
            select distinct load_id from {{ source_relation }} where load_id in ({{ candidates }})
            {%- if not loop.last %} union{% endif %}
            {%- endfor %}
        ) as present
    {%- endset -%}
    {{ return(run_query(query).columns[0].values()[0]) }}
{%- endmacro %}

{#- Post-hook of additive models: record the loads this run processed (after a full refresh,
    every load with rows in `sources`). -#}
{% macro record_processed_loads(sources) -%}
    {%- set side = processed_loads_relation() -%}
    create table if not exists {{ side }} (load_id bigint primary key);
    {%- if is_incremental() %}
    insert into {{ side }} (load_id)
    select processed.load_id
    from unnest(array[{{ unprocessed_load_ids(sources) }}]::bigint[]) as processed (load_id)
    where processed.load_id is not null
    on conflict do nothing
    {%- else %}
    truncate {{ side }};
    insert into {{ side }} (load_id)
    {%- for source_relation in sources %}
    select distinct load_id from {{ source_relation }} where load_id is not null
    {%- if not loop.last %} union{% endif %}
    {%- endfor %}
    {%- endif %}
{%- endmacro %}
