-- Each customer has exactly one lifecycle segment on any day (on an incremental run, among the
-- rows it wrote: see macros/test_scope.sql), and dim_customers agrees with the daily history on
-- the as-of date.
select
    customer_id,
    day,
    count(*) as segments
from {{ ref('customer_segments_daily') }}
where {{ recent_loads_filter() }}
group by customer_id, day
having count(*) <> 1

union all

select
    c.customer_id,
    s.day,
    2 as segments
from {{ ref('dim_customers') }} as c
inner join {{ ref('customer_segments_daily') }} as s on c.customer_id = s.customer_id
where
s.day = (select max(day) from {{ ref('customer_segments_daily') }})
and s.lifecycle_segment <> c.lifecycle_segment
