{#- For incremental event models: keeps only rows of loads the model has not processed yet.
    Loads are found within var('lookback_hours') of the latest processed one (a load's rows
    carry its start time, so a long load may commit after a later one). -#}
{% macro new_loads_only(relation_alias='source') -%}
    {% if is_incremental() -%}
        and {{ relation_alias }}.loaded_at > (select max(done.loaded_at) from {{ this }} as done)
        - interval '{{ var("lookback_hours") }} hours'
        and {{ relation_alias }}.load_id not in (select distinct done.load_id from {{ this }} as done)
    {%- endif %}
{%- endmacro %}
