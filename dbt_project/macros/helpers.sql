{#- The few helpers we would otherwise pull from dbt_utils (the hub is unreachable here). -#}

{% macro surrogate_key(fields) -%}
    md5({% for f in fields %}coalesce(cast({{ f }} as text), '~null~'){% if not loop.last %} || '|' || {% endif %}{% endfor %})
{%- endmacro %}

{% macro as_of_date() -%}
    {%- if var('as_of_date') -%}
        cast('{{ var("as_of_date") }}' as date)
    {%- else -%}
        (select max(event_date) from {{ source('raw', 'events') }})
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
