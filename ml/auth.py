"""Who may do what on an MLflow tracking server run with basic auth (``mlflow server
--app-name basic-auth``, default permission NO_PERMISSIONS), as docker compose runs it.

- the training job's user may log runs in the experiment, register versions of ``crm_<task>``
  and move their ``champion`` alias (EDIT);
- the scoring job's user may only read them (READ);
- people get READ on both when named as readers (their accounts are made by the admin in
  MLflow's own user management), or whatever the admin grants them there.

``provision`` is idempotent: it creates the experiment and the registered models if missing
(so permissions exist before the first training), creates or updates the two job users'
passwords, and grants the permissions again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from crm.errors import CrmError

TASKS = ("segments", "churn", "send_time", "recommendations", "value")


class MlflowAuthError(CrmError):
    """The MLflow server refused the admin's credentials or a provisioning call."""


@contextmanager
def _as(user: str, password: str) -> Iterator[None]:
    """MLflow's clients read the credentials from the environment: these, for the block."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def provision(
    tracking_uri: str,
    admin: tuple[str, str],
    *,
    experiment: str,
    train: tuple[str, str],
    score: tuple[str, str],
    readers: Sequence[str] = (),
) -> dict[str, str]:
    """Set up the experiment, the models and the job users; return {user: role}."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.server.auth.client import AuthServiceClient

    with _as(*admin):
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        auth = AuthServiceClient(tracking_uri)
        try:
            found = client.get_experiment_by_name(experiment)
        except MlflowException as exc:
            raise MlflowAuthError(
                f"the MLflow server at {tracking_uri} refused the admin: {exc}"
            ) from None
        exp_id = found.experiment_id if found else client.create_experiment(experiment)
        models = [f"crm_{task}" for task in TASKS]
        for name in models:
            try:
                client.get_registered_model(name)
            except MlflowException:
                client.create_registered_model(name)
        for user, password in (train, score):
            try:
                auth.get_user(user)
            except RestException:
                auth.create_user(user, password)
            else:
                auth.update_user_password(user, password)
        roles = {train[0]: "EDIT", score[0]: "READ", **dict.fromkeys(readers, "READ")}
        resources = [("experiment", exp_id)] + [("registered_model", m) for m in models]
        for user, permission in roles.items():
            for kind, resource in resources:
                if auth.get_user_permission(user, kind, resource).permission != permission:
                    # a permission granted before is replaced, not granted twice
                    with contextlib.suppress(RestException):
                        auth.revoke_user_permission(user, kind, resource)
                    auth.grant_user_permission(user, kind, resource, permission)
    return roles
