{#- customer_segments_daily is incremental by customer: a run recomputes the whole history of
    the customers the new loads touched and carries every other customer's last row forward to
    the new days. Which loads are new is kept exactly in a small side table of the model
    (<model>__loads), written by the post-hook with the loads the run read from
    stg_events__calls (dbt's runs are serial, so that table cannot change during the run). -#}

{% macro segment_loads_relation() -%}
    {{ this.schema }}.{{ this.identifier }}__loads
{%- endmacro %}

{#- Committed loads the model has not processed yet, as a literal list for IN ('null' when
    none). Without the side table (first run, or an older install) every load counts as new:
    every customer is recomputed. -#}
{% macro segment_new_load_ids() -%}
    {%- if not execute -%}{{ return('null') }}{%- endif -%}
    {%- set parts = segment_loads_relation().split('.') -%}
    {%- set done = adapter.get_relation(database=target.database, schema=parts[0], identifier=parts[1]) -%}
    {%- set query -%}
        select coalesce(string_agg(audit.load_id::text, ', ' order by audit.load_id), 'null')
        from {{ source('raw', 'load_audit') }} as audit
        where
            audit.status in ('loaded', 'partial')
            and audit.loaded > 0
            {% if done is not none -%}
            and not exists (select from {{ done }} where {{ done }}.load_id = audit.load_id)
            {%- endif %}
    {%- endset -%}
    {{ return(run_query(query).columns[0].values()[0]) }}
{%- endmacro %}

{#- Customers whose segment history the new loads may change: the customers their ids resolve
    to now, every device's own anonymous customer (gone once the device is linked), and the
    user a shared device belonged to before the load (first touch can move it). -#}
{% macro segment_touched_customers() -%}
    {%- set new_ids = segment_new_load_ids() -%}
    with

    new_calls as (

        select
            calls.anonymous_id,
            calls.user_id
        from {{ ref('stg_events__calls') }} as calls
        where calls.load_id in ({{ new_ids }})

    ),

    new_aliases as (

        select
            aliases.previous_id,
            aliases.user_id
        from {{ ref('stg_events__aliases') }} as aliases
        where aliases.load_id in ({{ new_ids }})

    ),

    devices as (

        select anonymous_id as identifier from new_calls where anonymous_id is not null
        union
        select previous_id from new_aliases where previous_id is not null

    ),

    identifiers as (

        select identifier from devices
        union
        select user_id from new_calls where user_id is not null
        union
        select user_id from new_aliases where user_id is not null

    ),

    shared as (

        -- devices seen with more than one user, or aliased: the load may have moved them
        select identifier_days.anonymous_id as identifier
        from {{ ref('int_identifier_days') }} as identifier_days
        where
            identifier_days.anonymous_id in (select devices.identifier from devices)
            and identifier_days.user_id is not null
        group by identifier_days.anonymous_id
        having count(distinct identifier_days.user_id) > 1
        union
        select aliases.previous_id
        from {{ ref('stg_events__aliases') }} as aliases
        where aliases.previous_id in (select devices.identifier from devices)

    ),

    previous_owners as (

        select first_link.user_id as customer_id
        from shared
        cross join lateral (
            select links.user_id
            from (
                select
                    calls.user_id,
                    calls.event_at,
                    calls.message_id
                from {{ ref('stg_events__calls') }} as calls
                where
                    calls.anonymous_id = shared.identifier
                    and calls.user_id is not null
                    and not coalesce(calls.load_id in ({{ new_ids }}), false)
                union all
                select
                    aliases.user_id,
                    aliases.event_at,
                    aliases.message_id
                from {{ ref('stg_events__aliases') }} as aliases
                where
                    aliases.previous_id = shared.identifier
                    and aliases.previous_id <> aliases.user_id
                    and not coalesce(aliases.load_id in ({{ new_ids }}), false)
            ) as links
            order by links.event_at, links.message_id
            limit 1
        ) as first_link

    )

    select identities.customer_id
    from identifiers
    inner join {{ ref('int_identities_stitched') }} as identities
        on identifiers.identifier = identities.identifier
    union
    select 'anon:' || identifier from devices
    union
    select customer_id from previous_owners
{%- endmacro %}

{#- pre-hook: the side table exists (emptied by a full refresh), and an incremental run
    deletes the touched customers' rows and the days that left the history window. -#}
{% macro segment_history_pre_hook() -%}
    create table if not exists {{ segment_loads_relation() }} (load_id bigint primary key);
    {% if is_incremental() and not var('as_of_date') -%}
        delete from {{ this }}
        where
            customer_id in ({{ segment_touched_customers() }})
            or day <= {{ as_of_date() }} - {{ var('segment_history_days') }};
    {%- else -%}
        truncate {{ segment_loads_relation() }};
        {% if is_incremental() %}delete from {{ this }};{% endif %}
    {%- endif %}
{%- endmacro %}

{#- post-hook: the loads this run read are processed. -#}
{% macro segment_history_post_hook() -%}
    insert into {{ segment_loads_relation() }} (load_id)
    select distinct calls.load_id
    from {{ ref('stg_events__calls') }} as calls
    where calls.load_id in ({{ segment_new_load_ids() }})
    on conflict do nothing
{%- endmacro %}
