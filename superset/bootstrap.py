"""Bring a fresh (or existing) Superset to shop-crm's state: metadata database migrated, the
admin user, roles, and the dashboards-as-code bundle in ``superset/bundle/`` imported with the
database connection pointing at the read-only role.

Runs in Superset's own environment (``superset/.venv``)::

    SUPERSET_CONFIG_PATH=superset/superset_config.py SUPERSET_SECRET_KEY=... \\
    SUPERSET_ADMIN_PASSWORD=... superset/.venv/bin/python superset/bootstrap.py \\
        --database-url "$(crm db reader-url)"

Idempotent: re-running updates the dashboards in place (same UUIDs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "bundle"
DATABASE_FILE = "databases/shop_crm.yaml"


def superset(*args: str) -> str:
    exe = Path(sys.executable).with_name("superset")
    done = subprocess.run([str(exe), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"superset {' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def bundle_contents(database_url: str) -> tuple[dict[str, str], dict[str, str]]:
    """The bundle's files (path -> YAML text) with the connection set from ``database_url``
    (password masked, as in an export), and the password to give the importer."""
    import yaml

    parsed = urlparse(database_url)
    password = unquote(parsed.password or "")
    host = parsed.netloc.rpartition("@")[2]
    user = unquote(parsed.username or "")
    masked = parsed._replace(
        scheme="postgresql+psycopg2", netloc=f"{user}:XXXXXXXXXX@{host}" if password else
        f"{user}@{host}"
    ).geturl()  # fmt: skip
    contents = {}
    for path in sorted(BUNDLE.rglob("*.yaml")):
        key = path.relative_to(BUNDLE).as_posix()
        text = path.read_text()
        if key == DATABASE_FILE:
            data = yaml.safe_load(text)
            data["sqlalchemy_uri"] = masked
            text = yaml.safe_dump(data, sort_keys=False)
        contents[key] = text
    return contents, ({DATABASE_FILE: password} if password else {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", required=True, help="read-only role's PostgreSQL URL")
    ap.add_argument("--admin-user", default=os.environ.get("SUPERSET_ADMIN_USER", "admin"))
    args = ap.parse_args()
    password = os.environ.get("SUPERSET_ADMIN_PASSWORD")
    if not password:
        raise SystemExit("set SUPERSET_ADMIN_PASSWORD (no default passwords)")
    superset("db", "upgrade")
    out = superset("fab", "create-admin", "--username", args.admin_user, "--firstname", "Shop",
                   "--lastname", "Admin", "--email", f"{args.admin_user}@example.com",
                   "--password", password)  # fmt: skip
    if "already exists" in out:
        superset("fab", "reset-password", "--username", args.admin_user, "--password", password)
    superset("init")

    from superset.app import create_app

    app = create_app()
    with app.app_context():
        from flask import g
        from superset.commands.dashboard.importers.v1 import ImportDashboardsCommand

        from superset import security_manager

        g.user = security_manager.find_user(username=args.admin_user)
        contents, passwords = bundle_contents(args.database_url)
        ImportDashboardsCommand(contents, passwords=passwords, overwrite=True).run()
        dashboards = sum(1 for k in contents if k.startswith("dashboards/"))
        charts = sum(1 for k in contents if k.startswith("charts/"))
    print(f"superset ready: {dashboards} dashboards, {charts} charts imported")


if __name__ == "__main__":
    main()
