"""Superset settings for shop-crm, all secrets from the environment (SUPERSET_CONFIG_PATH
points here).

- SUPERSET_SECRET_KEY (required): signs sessions and encrypts stored database passwords.
- SUPERSET_METADATA_URL: Superset's own database (default: SQLite in CRM_HOME/superset).
- SUPERSET_REDIS_URL: cache and rate limits in Redis (default: in-process, fine for one user).
- SUPERSET_PUBLIC_URL: the address users open, for links and the CSRF referrer check.
"""

from __future__ import annotations

import os
from pathlib import Path

SECRET_KEY = os.environ["SUPERSET_SECRET_KEY"]
_home = Path(os.environ.get("CRM_HOME", Path(__file__).resolve().parent.parent / ".crm"))
(_home / "superset").mkdir(parents=True, exist_ok=True)
SQLALCHEMY_DATABASE_URI = os.environ.get(
    "SUPERSET_METADATA_URL", f"sqlite:///{_home / 'superset' / 'superset.db'}"
)
DATA_DIR = str(_home / "superset")

_redis = os.environ.get("SUPERSET_REDIS_URL")
if _redis:
    CACHE_CONFIG = {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": _redis,
                    "CACHE_KEY_PREFIX": "superset_", "CACHE_DEFAULT_TIMEOUT": 300}  # fmt: skip
    DATA_CACHE_CONFIG = {**CACHE_CONFIG, "CACHE_KEY_PREFIX": "superset_data_"}
    RATELIMIT_STORAGE_URI = _redis

# Marketers read dashboards; nobody uploads files or runs DML from SQL Lab.
FEATURE_FLAGS = {
    "DASHBOARD_NATIVE_FILTERS": True,
    "ENABLE_TEMPLATE_PROCESSING": False,
    "ALERT_REPORTS": False,
}
PREVENT_UNSAFE_DB_CONNECTIONS = True
SQLLAB_CTAS_NO_LIMIT = False
ROW_LIMIT = 50_000
# The Delivery monitor refreshes itself; allow its one-minute interval.
SUPERSET_DASHBOARD_PERIODICAL_REFRESH_LIMIT = 0
SUPERSET_WEBSERVER_TIMEOUT = 120

# Sessions: secure cookies when served over HTTPS (production), plain on localhost.
_public = os.environ.get("SUPERSET_PUBLIC_URL", "http://127.0.0.1:8088")
SESSION_COOKIE_SECURE = _public.startswith("https://")
SESSION_COOKIE_SAMESITE = "Lax"
TALISMAN_ENABLED = _public.startswith("https://")
WTF_CSRF_ENABLED = True

# Authentication: Superset's own users by default (JWT for its API at /api/v1/security/login).
# For a real identity provider, OAuth 2.0 / OpenID Connect, see docs in README:
#   from flask_appbuilder.security.manager import AUTH_OAUTH
#   AUTH_TYPE = AUTH_OAUTH
#   OAUTH_PROVIDERS = [{"name": "keycloak", "token_key": "access_token", "remote_app": {
#       "client_id": os.environ["OAUTH_CLIENT_ID"],
#       "client_secret": os.environ["OAUTH_CLIENT_SECRET"],
#       "server_metadata_url": os.environ["OAUTH_METADATA_URL"],
#       "client_kwargs": {"scope": "openid email profile"}}}]
#   AUTH_USER_REGISTRATION = True
#   AUTH_USER_REGISTRATION_ROLE = "Gamma"
