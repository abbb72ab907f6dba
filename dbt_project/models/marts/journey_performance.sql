{{ config(materialized='table') }}
-- Each journey step (a journey's first step has the journey's id, a later one '<id>-<step>'):
-- who entered, what ended the wait, who is waiting, what was planned and sent, and what it
-- earned against the holdout (campaign_performance: conversion counted from the trigger).
with

entries as (

    select * from {{ source('crm', 'journey_entries') }}

),

counts as (

    select
        campaign_id,
        count(*) as entered,
        count(*) filter (where state = 'waiting') as waiting,
        count(*) filter (where state = 'exited') as exited,
        count(*) filter (where state = 'planned' and occurrence is not null) as planned,
        count(*) filter (where state = 'planned' and occurrence is null) as not_eligible,
        count(*) filter (where state = 'expired') as expired,
        min(triggered_at) as first_trigger_at,
        max(triggered_at) as last_trigger_at
    from entries
    group by campaign_id

),

results as (

    select * from {{ ref('campaign_performance') }}
    where breakdown = 'campaign'

)

select
    counts.campaign_id,
    counts.entered,
    counts.waiting,
    counts.exited,
    counts.planned,
    counts.not_eligible,
    counts.expired,
    counts.first_trigger_at,
    counts.last_trigger_at,
    coalesce(results.treated, 0) as treated,
    coalesce(results.held_out, 0) as held_out,
    coalesce(results.sent, 0) as sent,
    coalesce(results.opened, 0) as opened,
    coalesce(results.converted, 0) as converted,
    coalesce(results.converted_held_out, 0) as converted_held_out,
    results.conversion_rate,
    results.conversion_rate_held_out,
    results.uplift,
    results.uplift_ci_low,
    results.uplift_ci_high,
    coalesce(results.revenue, 0) as revenue,
    results.incremental_revenue
from counts
left join results on results.campaign_id = counts.campaign_id
