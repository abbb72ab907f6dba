-- One row per resolved customer. No personal data here: e-mail and names live in the pii
-- schema (pii.customer_pii), which marketers' roles cannot read.
with

identities as (

    select * from {{ ref('int_identities_stitched') }}

),

identifier_profiles as (

    -- calls rolled up per anonymous id and user id
    select * from {{ ref('int_identifier_profiles') }}

),

consents as (

    select * from {{ ref('stg_events__consents') }}

),

orders as (

    select * from {{ ref('fct_orders') }}

),

segments as (

    select * from {{ ref('customer_segments_daily') }}
    where day = {{ as_of_date() }}

),

resolved_profiles as (

    select
        coalesce(identifier_profiles.user_id, identities.customer_id) as customer_id,
        identifier_profiles.*
    from identifier_profiles
    left join identities on identities.identifier = identifier_profiles.anonymous_id

),

device_counts as (

    select
        resolved_profiles.customer_id,
        count(distinct device.device_id) as devices_count
    from resolved_profiles
    cross join lateral unnest(resolved_profiles.device_ids) as device (device_id)
    group by resolved_profiles.customer_id

),

platform_lists as (

    select
        resolved_profiles.customer_id,
        array_agg(distinct platform.platform order by platform.platform) as platforms
    from resolved_profiles
    cross join lateral unnest(resolved_profiles.platforms) as platform (platform)
    group by resolved_profiles.customer_id

),

seen as (

    select
        resolved_profiles.customer_id,
        min(resolved_profiles.first_event_at) as first_seen_at,
        max(resolved_profiles.last_event_at) as last_seen_at,
        {{ latest_non_null('resolved_profiles.time_zone', 'resolved_profiles.time_zone_at') }}
            as time_zone,
        {{ latest_non_null('resolved_profiles.locale', 'resolved_profiles.locale_at') }} as locale
    from resolved_profiles
    group by resolved_profiles.customer_id

),

latest_consents as (

    select distinct on (customer_id, channel)
        coalesce(consents.user_id, identities.customer_id) as customer_id,
        consents.channel,
        consents.granted,
        consents.event_at
    from consents
    left join identities on identities.identifier = consents.anonymous_id
    order by customer_id asc, channel asc, consents.event_at desc, consents.message_id desc

),

consent_flags as (

    select
        customer_id,
        coalesce(bool_or(granted) filter (where channel = 'push'), false) as push_consent,
        coalesce(bool_or(granted) filter (where channel = 'email'), false) as email_consent,
        max(event_at) as consent_updated_at
    from latest_consents
    group by customer_id

),

order_summary as (

    select
        customer_id,
        count(*) as orders_count,
        sum(revenue) as revenue,
        min(ordered_at) as first_order_at,
        max(ordered_at) as last_order_at
    from orders
    group by customer_id

),

final as (

    select
        ---------- ids
        seen.customer_id,
        seen.customer_id not like 'anon:%' as is_known,

        ---------- profile
        coalesce(device_counts.devices_count, 0) as devices_count,
        coalesce(platform_lists.platforms, '{}') as platforms,
        seen.time_zone,
        seen.locale,
        coalesce(consent_flags.push_consent, false) as push_consent,
        coalesce(consent_flags.email_consent, false) as email_consent,
        consent_flags.consent_updated_at,

        ---------- lifecycle
        coalesce(segments.lifecycle_segment, 'lost') as lifecycle_segment,
        coalesce(order_summary.orders_count, 0) >= 1 as is_buyer,
        coalesce(order_summary.orders_count, 0) >= 2 as is_repeat_buyer,
        coalesce(order_summary.orders_count, 0) as orders_count,
        coalesce(order_summary.revenue, 0) as revenue,

        ---------- timestamps
        seen.first_seen_at,
        seen.last_seen_at,
        order_summary.first_order_at,
        order_summary.last_order_at

    from seen
    left join device_counts on seen.customer_id = device_counts.customer_id
    left join platform_lists on seen.customer_id = platform_lists.customer_id
    left join consent_flags on seen.customer_id = consent_flags.customer_id
    left join order_summary on seen.customer_id = order_summary.customer_id
    left join segments on seen.customer_id = segments.customer_id

)

select * from final
