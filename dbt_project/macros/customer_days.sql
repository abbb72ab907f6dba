{#- Customer-level incremental models: which customers may a new load have moved identifiers
    between? Anonymous ids that new loads tied to a user (int_identities_stitched.linked_load_id
    is one of them); for each, every customer its activity may have belonged to before and
    belongs to now: its own 'anon:' customer, its current customer and every user it was ever
    seen with (a late call can tie it to an earlier user than before). One row per customer;
    `new_loads` is a list of new loads (new_load_ids() or unprocessed_load_ids()). -#}
{% macro moved_customers(new_loads) -%}
    select distinct candidates.customer_id
    from {{ ref('int_identities_stitched') }} as tied
    cross join lateral (
        select tied.customer_id
        union all
        select 'anon:' || tied.identifier
        union all
        select seen.user_id
        from {{ ref('int_identifier_days') }} as seen
        where seen.anonymous_id = tied.identifier and seen.user_id is not null
        union all
        select aliases.user_id
        from {{ ref('stg_events__aliases') }} as aliases
        where aliases.previous_id = tied.identifier
    ) as candidates (customer_id)
    where
        tied.identifier_type = 'anonymous_id'
        and tied.linked_load_id in ({{ new_loads }})
{%- endmacro %}

{#- The lifecycle inputs per customer and day (int_customer_days), from two CTEs already in
    scope: `activity` (customer_id, day, load_id: the days a customer was active) and
    `daily_orders` (customer_id, day, orders, load_id), and `bounds` (as_of_date, first_day).
    Emits CTEs ending in `customer_days`: one row per customer and day from the customer's
    first active day (or first_day) to the as-of date, with the newest load that counted up
    to that day. -#}
{% macro customer_days_ctes() -%}
customers as (

    select
        customer_id,
        min(day) as first_seen_date
    from activity
    group by customer_id

),

grid as (

    select
        customers.customer_id,
        customers.first_seen_date,
        calendar.day::date as day
    from customers
    cross join bounds
    cross join lateral generate_series(
        greatest(customers.first_seen_date, bounds.first_day), bounds.as_of_date, interval '1 day'
    ) as calendar (day)

),

before_grid as (

    -- activity and orders before the grid's first day still count
    select
        earlier.customer_id,
        max(earlier.day) filter (where earlier.is_activity) as last_active_before,
        coalesce(sum(earlier.orders), 0) as orders_before,
        max(earlier.load_id) as load_before
    from (
        select
            customer_id,
            day,
            true as is_activity,
            0 as orders,
            load_id
        from activity
        union all
        select
            customer_id,
            day,
            false as is_activity,
            orders,
            load_id
        from daily_orders
    ) as earlier
    cross join bounds
    where earlier.day < bounds.first_day
    group by earlier.customer_id

),

filled as (

    select
        grid.customer_id,
        grid.day,
        grid.first_seen_date,
        max(activity.day) over running as last_active_in_grid,
        sum(coalesce(daily_orders.orders, 0)) over running as orders_in_grid,
        max(greatest(activity.load_id, daily_orders.load_id)) over running as load_in_grid
    from grid
    left join activity
        on grid.customer_id = activity.customer_id and grid.day = activity.day
    left join daily_orders
        on grid.customer_id = daily_orders.customer_id and grid.day = daily_orders.day
    window running as (
        partition by grid.customer_id order by grid.day
        rows between unbounded preceding and current row
    )

),

customer_days as (

    select
        filled.customer_id,
        filled.day,
        filled.day - filled.first_seen_date as days_since_first_seen,
        filled.day - coalesce(filled.last_active_in_grid, before_grid.last_active_before)
            as days_since_active,
        (filled.orders_in_grid + coalesce(before_grid.orders_before, 0))::integer
            as orders_to_date,
        greatest(filled.load_in_grid, before_grid.load_before) as load_id
    from filled
    left join before_grid on filled.customer_id = before_grid.customer_id

)
{%- endmacro %}

{#- How an incremental run of customer_segments_daily proceeds, read before it changes
    anything (the model body and its pre-hook are both rendered first, so they agree):
    'full' recomputes every customer (first build, an as-of date set by var, or stored days
    past the as-of date); 'incremental' recomputes the customers new loads touched or moved,
    and adds the new days of everyone else from their last stored row. -#}
{% macro segment_days_plan() -%}
    {%- if not execute or not is_incremental() -%}
        {{ return({'mode': 'full'}) }}
    {%- endif -%}
    {%- set query -%}
        select {{ as_of_date() }} as as_of_date, max(day) as last_day from {{ this }}
    {%- endset -%}
    {%- set row = run_query(query).rows[0] -%}
    {%- if var('as_of_date') or row[0] is none or row[1] is none or row[1] > row[0] -%}
        {{ return({'mode': 'full'}) }}
    {%- endif -%}
    {{ return({'mode': 'incremental', 'last_day': row[1], 'new_loads': new_load_ids()}) }}
{%- endmacro %}

{#- Pre-hook of customer_segments_daily: drop the rows a run rebuilds from nothing (every row,
    or the days that left the history window and the customers identifiers moved between);
    the incremental strategy replaces the rest. -#}
{% macro segment_days_pre_hook() -%}
    {%- set plan = segment_days_plan() -%}
    {%- if not is_incremental() -%}
        select 1
    {%- elif plan.mode == 'full' -%}
        delete from {{ this }}
    {%- else -%}
        delete from {{ this }} as kept
        where
            kept.day <= {{ as_of_date() }} - {{ var('segment_history_days') }}
            or kept.customer_id in ({{ moved_customers(plan.new_loads) }})
    {%- endif -%}
{%- endmacro %}

{#- Pre-hook of customer-keyed incremental models: drop the rows of customers whose
    identifiers new loads moved (the model body recomputes them from every event). -#}
{% macro delete_moved_customers(new_loads) -%}
    {%- if is_incremental() -%}
        delete from {{ this }}
        where customer_id in ({{ moved_customers(new_loads) }})
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}

{#- fct_orders, incremental. Most customers who ordered just add orders after their stored
    ones: those are appended, numbered on from the customer's stored count. All orders of the
    others are rewritten (order numbers follow the order time): customers whose identifiers
    new loads moved, the stored customers of orders new loads sent again (a re-sent order can
    change hands), and customers with a new order placed before one already stored (a late
    call). Read before anything changes (the pre-hook deletes the rewritten customers' rows);
    the lists are literals. -#}
{% macro orders_plan() -%}
    {%- if not execute or not is_incremental() -%}
        {{ return({'incremental': false}) }}
    {%- endif -%}
    {%- set new_loads = new_load_ids() -%}
    {%- set query -%}
        with

        new_calls as (

            select distinct on (calls.order_id)
                calls.order_id,
                calls.event_at,
                coalesce(calls.user_id, tied.customer_id) as customer_id
            from {{ ref('stg_events__orders') }} as calls
            left join {{ ref('int_identities_stitched') }} as tied
                on tied.identifier = calls.anonymous_id
            where calls.load_id in ({{ new_loads }})
            order by calls.order_id, calls.event_at, calls.message_id

        ),

        resent as (

            select kept.customer_id
            from {{ this }} as kept
            where kept.order_id in (select order_id from new_calls)

        ),

        late as (

            select distinct new_calls.customer_id
            from new_calls
            where exists (
                select from {{ this }} as kept
                where kept.customer_id = new_calls.customer_id and kept.ordered_at >= new_calls.event_at
            )

        )

        select
            (select coalesce(string_agg(distinct quote_literal(customer_id), ', '), 'null') from resent),
            (select coalesce(string_agg(quote_literal(customer_id), ', '), 'null') from late)
    {%- endset -%}
    {%- set row = run_query(query).rows[0] -%}
    {{ return({'incremental': true, 'new_loads': new_loads, 'earlier_customers': row[0],
               'late_customers': row[1]}) }}
{%- endmacro %}

{#- The customers whose orders fct_orders rewrites whole (see orders_plan); never null. -#}
{% macro order_customers(plan) -%}
    {{ moved_customers(plan.new_loads) }}
    union
    select customer_id
    from unnest(array[{{ plan.earlier_customers }}, {{ plan.late_customers }}]::text[]) as listed (customer_id)
    where customer_id is not null
{%- endmacro %}

{#- Pre-hook of fct_orders: drop every order of the customers whose orders the run rewrites. -#}
{% macro delete_order_customers() -%}
    {%- set plan = orders_plan() -%}
    {%- if plan.incremental -%}
        delete from {{ this }} where customer_id in ({{ order_customers(plan) }})
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}
