"""Campaigns and delivery: what to send, to whom, when, and the log that never double-sends."""
