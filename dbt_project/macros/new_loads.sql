{#- For incremental event models, in the WHERE clause over raw.events: keeps only rows of
    loads the model has not processed yet. Loads are looked for within var('lookback_hours')
    of the latest processed one (a load's rows carry its start time, so a long load may commit
    after a later one). -#}
{% macro new_loads_only() -%}
    {% if is_incremental() -%}
        and loaded_at > (select max(done.loaded_at) from {{ this }} as done)
        - interval '{{ var("lookback_hours") }} hours'
        and load_id not in (select distinct done.load_id from {{ this }} as done)
    {%- endif %}
{%- endmacro %}
