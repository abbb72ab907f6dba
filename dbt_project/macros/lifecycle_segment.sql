{#- The shop's lifecycle segments, first matching rule wins (so there is exactly one):
      lost          no activity for more than var('lost_after_days')
      inactive      no activity for more than var('inactive_after_days') (lapsing)
      repeat_buyer  active, two or more orders so far
      buyer         active, one order so far
      new           first seen at most var('new_customer_days') ago, no order yet
      active        everyone else who was active recently -#}
{% macro lifecycle_segment(days_since_first_seen, days_since_active, orders_to_date) -%}
    case
        when {{ days_since_active }} > {{ var('lost_after_days') }} then 'lost'
        when {{ days_since_active }} > {{ var('inactive_after_days') }} then 'inactive'
        when {{ orders_to_date }} >= 2 then 'repeat_buyer'
        when {{ orders_to_date }} = 1 then 'buyer'
        when {{ days_since_first_seen }} <= {{ var('new_customer_days') }} then 'new'
        else 'active'
    end
{%- endmacro %}
