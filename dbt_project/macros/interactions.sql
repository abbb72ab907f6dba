{#- customer_product_interactions: browsing counts per resolved customer and product, from the
    `product_events` and `identities` CTEs in scope, over the events `where` keeps. -#}
{% macro browsing_counts(where='true') -%}
    select
        coalesce(product_events.user_id, identities.customer_id) as customer_id,
        product_events.product_id,
        count(*) filter (where product_events.event_name <> 'Product Added') as views,
        count(*) filter (where product_events.event_name = 'Product Added') as cart_adds,
        max(product_events.event_at) as last_browsed_at,
        max(product_events.load_id) as load_id
    from product_events
    left join identities on identities.identifier = product_events.anonymous_id
    where {{ where }}
    group by 1, 2
{%- endmacro %}
