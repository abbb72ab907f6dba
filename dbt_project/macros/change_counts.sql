{#- Change counts: a roll-up of a large table kept exact at the cost of what changed.

    Post-hook of the counted table (e.g. customer_segments_daily; `columns` the counts are kept
    per, with their SQL `types`; rows with a null in them are not counted): statement-level
    triggers
    add every row inserted (+1) and deleted (-1) to <table>__changes, summed per `columns`,
    whoever changes the table: incremental runs, their pre-hooks, an erasure. A full refresh
    builds a new table, which gets the triggers, and leaves a marker row (the first column
    '-infinity') telling the roll-up to recount everything. Counted per day and customer, the
    same triggers list the customer-days whose rows changed (int_customer_activity_days); counted
    per every column, they list the rows that really changed (active_customers).

    The roll-up (e.g. lifecycle_segments_daily) adds the summed changes to its counts, then
    empties <table>__changes in the same transaction (consume_change_counts). -#}

{% macro change_counts_relation(counted) -%}
    {{ return(api.Relation.create(
        database=counted.database, schema=counted.schema, identifier=counted.identifier ~ '__changes')) }}
{%- endmacro %}

{% macro count_changes(columns, types) -%}
    {#- no database name: a copy of the database (CREATE DATABASE ... TEMPLATE) keeps working -#}
    {%- set changes = change_counts_relation(this).include(database=False) -%}
    {%- set function = this.schema ~ '.' ~ this.identifier ~ '__count_changes' -%}
    {%- set cols = columns | join(', ') -%}
    {%- set not_null = columns | join(' is not null and ') ~ ' is not null' -%}
    create table if not exists {{ changes }} (
        {%- for c in columns %}
        {{ c }} {{ types[loop.index0] }} not null,
        {%- endfor %}
        delta bigint not null,
        primary key ({{ cols }})
    );
    {#- security definer: the bookkeeping is the owner's, whoever deletes (an erasure by the
        privacy officer needs no rights on the changes table) -#}
    create or replace function {{ function }}() returns trigger language plpgsql
        security definer set search_path = pg_catalog, pg_temp as $f$
    begin
        if tg_op in ('DELETE', 'UPDATE') then
            insert into {{ changes }} ({{ cols }}, delta)
            select {{ cols }}, -count(*) from gone where {{ not_null }} group by {{ cols }}
            on conflict ({{ cols }}) do update set delta = {{ changes.identifier }}.delta + excluded.delta;
        end if;
        if tg_op in ('INSERT', 'UPDATE') then
            insert into {{ changes }} ({{ cols }}, delta)
            select {{ cols }}, count(*) from added where {{ not_null }} group by {{ cols }}
            on conflict ({{ cols }}) do update set delta = {{ changes.identifier }}.delta + excluded.delta;
        end if;
        return null;
    end
    $f$;
    create or replace trigger count_inserts after insert on {{ this }}
        referencing new table as added for each statement execute function {{ function }}();
    create or replace trigger count_deletes after delete on {{ this }}
        referencing old table as gone for each statement execute function {{ function }}();
    create or replace trigger count_updates after update on {{ this }}
        referencing old table as gone new table as added
        for each statement execute function {{ function }}();
    {%- if not is_incremental() %}
    truncate {{ changes }};
    insert into {{ changes }} ({{ cols }}, delta)
    values ('-infinity'
        {%- for t in types[1:] %}, {{ "'*'" if t == 'text' else "'-infinity'" if t == 'date' else '0' }}{% endfor %}, 0)
    {%- endif %}
{%- endmacro %}

{#- True when the roll-up of `counted` must recount: it was never built, it is rebuilt, the
    counted table was rebuilt since, or nothing has counted its changes yet. -#}
{% macro must_recount(counted, first_column='day') -%}
    {%- if not execute or not is_incremental() -%}{{ return(true) }}{%- endif -%}
    {%- set changes = change_counts_relation(counted) -%}
    {%- if adapter.get_relation(database=changes.database, schema=changes.schema, identifier=changes.identifier) is none -%}
        {{ return(true) }}
    {%- endif -%}
    {%- set query -%}
        select exists (select from {{ changes }} where {{ first_column }} = '-infinity')
    {%- endset -%}
    {{ return(run_query(query).columns[0].values()[0]) }}
{%- endmacro %}

{#- Pre-hook of the roll-up: changes made while it runs (an erasure) wait for it to commit,
    so none is emptied unread. -#}
{% macro lock_change_counts(counted) -%}
    {%- set changes = change_counts_relation(counted) -%}
    do $$
    begin
        if to_regclass('{{ changes }}') is not null then
            lock table {{ changes }} in exclusive mode;
        end if;
    end
    $$
{%- endmacro %}

{#- Post-hook of the roll-up: empty the change counts it added (same transaction as the
    roll-up's own write). -#}
{% macro consume_change_counts(counted) -%}
    {%- set changes = change_counts_relation(counted) -%}
    do $$
    begin
        if to_regclass('{{ changes }}') is not null then
            truncate {{ changes }};
        end if;
    end
    $$
{%- endmacro %}

{#- int_customer_activity_days: the customer-days to recompute on an incremental run, as SQL
    (customer_id, day: every pair listed by the triggers of fct_sessions and fct_orders), or ''
    when everything is recounted (a full build, or either table was rebuilt). -#}
{% macro changed_activity_days() -%}
    {%- set sessions = ref('fct_sessions') -%}
    {%- set orders = ref('fct_orders') -%}
    {%- if must_recount(sessions, 'session_date') or must_recount(orders, 'order_date') -%}
        {{ return('') }}
    {%- endif -%}
    {%- set query -%}
        select customer_id, session_date as day from {{ change_counts_relation(sessions) }}
        union
        select customer_id, order_date as day from {{ change_counts_relation(orders) }}
    {%- endset -%}
    {{ return(query) }}
{%- endmacro %}

{#- Pre-hook of int_customer_activity_days: drop the rows the run recomputes. -#}
{% macro delete_changed_activity_days() -%}
    {%- if not is_incremental() -%}
        select 1
    {%- else -%}
        {%- set changed = changed_activity_days() -%}
        delete from {{ this }}
        {%- if changed %} where (customer_id, day) in ({{ changed }}){% endif %}
    {%- endif -%}
{%- endmacro %}

{#- Post-hook of int_customer_activity_days: its rows counted per every column but load_id. -#}
{% macro count_activity_changes() -%}
    {{ return(count_changes(
        ['day', 'customer_id', 'sessions', 'product_views', 'cart_adds', 'orders', 'first_orders', 'revenue'],
        ['date', 'text', 'numeric', 'numeric', 'numeric', 'numeric', 'numeric', 'numeric'])) }}
{%- endmacro %}
