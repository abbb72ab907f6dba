"""The CRM's models: AI segments, churn risk, recommendations and best send time.

Each task is a small class with ``fit`` / ``score`` / ``evaluate`` over a :class:`ml.data.Snapshot`
(what the dbt marts hold, cut at a point in time); :mod:`ml.jobs` trains them as MLflow runs,
promotes a version to ``champion`` only when it beats the current one on the same held-out data,
and publishes the champion's scores to PostgreSQL (``ml.*``) and Redis.
"""
