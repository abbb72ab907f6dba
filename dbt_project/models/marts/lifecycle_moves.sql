{{ config(materialized='table') }}
-- How many customers moved from one lifecycle segment to another on each of the last 7 days
-- (segments of the day before against the day's), for the Segments dashboard: about a
-- hundred rows instead of a join of two days of every customer at each view. Rebuilt on
-- every run from those 8 days of customer_segments_daily, read through its day index.
with

segments as (

    select * from {{ ref('customer_segments_daily') }}

),

bounds as (

    select max(day) as last_day from segments

),

final as (

    select
        today.day,
        yesterday.lifecycle_segment as from_segment,
        today.lifecycle_segment as to_segment,
        count(*) as customers
    from bounds
    inner join segments as today
        on today.day > bounds.last_day - 7
    inner join segments as yesterday
        on
            today.customer_id = yesterday.customer_id
            and today.day - 1 = yesterday.day
    where yesterday.day >= bounds.last_day - 7
    group by today.day, yesterday.lifecycle_segment, today.lifecycle_segment

)

select * from final
