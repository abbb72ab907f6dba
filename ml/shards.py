"""Scoring in shards: each customer's shard is a stable hash of the customer id
(``ml.shard_of``), and a scoring job runs in steps that Airflow maps over the shards (or
``crm score`` runs in-process, or in ``--workers`` processes):

1. ``plan``: the champions every shard uses (their versions pinned, their artifacts checked
   and stored with the job, so the shards do not go to MLflow), the shard count, the shop's
   "now" and a staging table per ``ml.*`` table (schema ``ml_stage``).
2. ``items`` per shard: the additive item statistics of the shard's customers (co-visitation
   gram, popularity, repurchase, view prices), stored in ``ml.score_job_artifacts``; the
   shard's rows of the marts are kept in CRM_HOME/score-jobs for the score step, when it
   runs on the same worker (else it reads them again).
3. ``build_items``: the shop's item state from the shards' statistics, built once (EASE's
   inverse included) and stored for the shards.
4. ``score`` per shard: the shard's customers only (their rows of the marts), every task's
   champion, written to the staging tables (a retried shard replaces its own rows).
5. ``swap``: when every shard has scored, one transaction replaces every ``ml.*`` table from
   staging, with the value bands and segment sizes of the whole shop; until then readers keep
   the previous run. A failed shard leaves ``ml.*`` and Redis as they were.
6. ``publish`` per shard: the shard's Redis keys, from the scores its score step kept on this
   worker (else its staged rows) and the swap's value bands; ``finish``: the shared
   keys (segments, the cold-start list, the run's meta) and the staging (and kept rows)
   dropped.

Memory per step is bounded by the shard (plus the item state: EASE's dense items x items
matrix is 200 MB at its 5,000-item limit), not by the shop.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import pickle
import resource
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from psycopg import sql

from crm import db
from crm.errors import CrmError
from crm.settings import Settings, get_settings
from ml import tracking
from ml.data import Snapshot, load_snapshot, shop_end
from ml.publish import TABLES

log = logging.getLogger(__name__)
# a scoring job's artifacts are stored in parts of this size (migration 0028)
ARTIFACT_PART = 2**20
STAGED = (
    "customer_segments",
    "segment_catalog",
    "churn_scores",
    "send_times",
    "recommendations",
    "customer_value",
    "customer_value_horizons",
)
TASK_OF = {"customer_segments": "segments", "segment_catalog": "segments",
           "churn_scores": "churn", "send_times": "send_time",
           "recommendations": "recommendations", "customer_value": "value",
           "customer_value_horizons": "value"}  # fmt: skip
# what a customer's Redis document is built from
PUBLISHED = ("customer_segments", "churn_scores", "send_times", "recommendations",
             "customer_value")  # fmt: skip
STALE_HOURS = 24  # a job still scoring after this long is abandoned (its staging dropped)


class ShardsMissing(CrmError):
    """The swap found shards that have not scored: nothing was replaced."""


@dataclass
class ScoreJob:
    job_id: str
    shards: int
    scored_at: datetime
    as_of: pd.Timestamp
    versions: dict[str, str]  # task -> champion version, the same in every shard
    kinds: dict[str, str]  # task -> what the champion serves (the model or a baseline)
    horizons: list[int]  # value horizons the campaign files filter on
    recommendations: int  # the length of the cold-start list

    @property
    def models(self) -> dict[str, str]:
        return {t: f"{tracking.model_name(t)}/{v}" for t, v in self.versions.items()}


def _url(settings: Settings) -> str:
    return db.database_url(settings)


def shard_count(customers: int, settings: Settings) -> int:
    if settings.score_shards:
        return settings.score_shards
    return max(1, math.ceil(customers / settings.score_shard_customers))


def _stage(job_id: str, table: str) -> sql.Identifier:
    return sql.Identifier("ml_stage", f"{job_id}__{table}")


def _columns(table: str) -> list[str]:
    return [*TABLES[table], "model_version", "scored_at"]


def _indexes(conn: Any, table: str) -> list[tuple[sql.Composed | sql.SQL, sql.Composed | sql.SQL]]:
    """(drop, create) statements for each index of ``ml.<table>``, its primary key's as the
    constraint's; none when this role does not own the table (it may then only fill it)."""
    (owner,) = conn.execute("select pg_has_role(relowner, 'usage') from pg_class where oid ="
                            " %s::regclass", (f"ml.{table}",)).fetchone()  # fmt: skip
    if not owner:
        return []
    rows = conn.execute(
        "select i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname,"
        " pg_get_constraintdef(c.oid) from pg_index i left join pg_constraint c"
        " on c.conindid = i.indexrelid and c.conrelid = i.indrelid and c.contype in ('p', 'u')"
        " where i.indrelid = %s::regclass order by i.indisprimary desc",
        (f"ml.{table}",),
    ).fetchall()
    ident = sql.Identifier("ml", table)
    out: list[tuple[sql.Composed | sql.SQL, sql.Composed | sql.SQL]] = []
    for index, indexdef, constraint, definition in rows:
        if constraint:
            name = sql.Identifier(constraint)
            out.append((
                sql.SQL("alter table {} drop constraint {}").format(ident, name),
                sql.SQL("alter table {} add constraint {} {}").format(
                    ident, name, sql.SQL(definition)),
            ))  # fmt: skip
        else:
            out.append((sql.SQL("drop index {}").format(sql.SQL(index)), sql.SQL(indexdef)))
    return out


def load_job(job_id: str, url: str) -> ScoreJob:
    with db.connect(url) as conn:
        row = conn.execute(
            "select shards, scored_at, as_of, plan, state from ml.score_jobs where job_id = %s",
            (job_id,),
        ).fetchone()
    if row is None:
        raise CrmError(f"no scoring job {job_id!r} in ml.score_jobs")
    shards, scored_at, as_of, plan, state = row
    if state == "abandoned":
        raise CrmError(f"scoring job {job_id} was abandoned; run a new one")
    return ScoreJob(job_id, shards, scored_at, pd.Timestamp(as_of), plan["versions"],
                    plan["kinds"], plan["horizons"], plan["recommendations"])  # fmt: skip


def _drop_staging(conn: Any, job_id: str) -> None:
    for table in STAGED:
        conn.execute(sql.SQL("drop table if exists {}").format(_stage(job_id, table)))


def plan(
    settings: Settings | None = None, shards: int | None = None, snapshot: Snapshot | None = None
) -> ScoreJob:
    """A new scoring job: champions pinned, shards counted, staging tables created."""
    from ml.jobs import TASKS, NoChampionError, _campaign_horizons

    settings = settings or get_settings()
    url = _url(settings)
    tracking.setup(settings, "score")
    versions, kinds, champions = {}, {}, {}
    recommendations, catalog = 20, None
    for task in TASKS:
        found = tracking.load_champion(task, url)  # checks the artifacts' digest: trusted
        if found is None:
            raise NoChampionError(
                f"no champion for {tracking.model_name(task)}: run `crm train` (or trigger the "
                "train_models DAG) first"
            )
        model, versions[task] = found
        champions[task] = model
        kinds[task] = model.kind
        if task == "recommendations":
            recommendations = int(model.n)
        if task == "segments":
            catalog = model.catalog()
    with db.connect(url) as conn:
        row = conn.execute("select count(*) from marts.dim_customers").fetchone()
    customers = len(snapshot.customers) if snapshot is not None else int(row[0] if row else 0)
    n = 1 if snapshot is not None else (shards or shard_count(customers, settings))
    as_of = snapshot.end if snapshot is not None else shop_end(url)
    scored_at = db.clock(url)
    job_id = f"s{scored_at:%Y%m%d%H%M%S}{secrets.token_hex(3)}"
    spec = {"versions": versions, "kinds": kinds, "recommendations": recommendations,
            "horizons": sorted(_campaign_horizons()), "customers": customers}  # fmt: skip
    with db.connect(url) as conn, conn.transaction():
        stale = conn.execute(
            "update ml.score_jobs set state = 'abandoned', finished_at = now()"
            " where state in ('scoring', 'swapped') and started_at < now() - %s * interval '1h'"
            " returning job_id",
            (STALE_HOURS,),
        ).fetchall()
        for (old,) in stale:
            log.warning("scoring job %s never finished: abandoned, its staging dropped", old)
            _drop_staging(conn, old)
            shutil.rmtree(_job_dir(settings, old), ignore_errors=True)
            conn.execute("delete from ml.score_job_artifacts where job_id = %s", (old,))
        conn.execute(
            "insert into ml.score_jobs (job_id, shards, scored_at, as_of, plan)"
            " values (%s, %s, %s, %s, %s)",
            (job_id, n, scored_at, as_of.to_pydatetime(), json.dumps(spec)),
        )
        for table in STAGED:
            # the job's constants as defaults: the shards copy only the scores (a fifth fewer
            # bytes of CSV to write and for the server to parse)
            conn.execute(
                sql.SQL("create unlogged table {} (like {}, shard integer not null);"
                        " alter table {} alter model_version set default {},"
                        " alter scored_at set default {}").format(
                    _stage(job_id, table), sql.Identifier("ml", table), _stage(job_id, table),
                    sql.Literal(versions[TASK_OF[table]]), sql.Literal(scored_at),
                )
            )  # fmt: skip
        # the pinned champions, checked once here: the shards unpickle them from the job
        # (6.5 s a step through MLflow's store and artifacts)
        _put(conn, job_id, "champions", champions)
        _put(conn, job_id, "value", champions["value"])  # for the shards' centring sums
        assert catalog is not None
        _copy(conn, job_id, "segment_catalog", catalog.assign(customers=0), -1)
    return load_job(job_id, url)


def _copy(conn: Any, job_id: str, table: str, frame: pd.DataFrame, shard: int) -> None:
    """A shard's rows into the job's staging table (its version and time: the defaults)."""
    from ml.publish import copy_frame

    copy_frame(conn, _stage(job_id, table), frame[TABLES[table]].assign(shard=shard))


def _done(conn: Any, job: ScoreJob, step: str, shard: int, rows: dict[str, int],
          started: float) -> datetime:  # fmt: skip
    """The step recorded as done; returns when (its transaction's time: a retry's differs)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (at,) = conn.execute(
        "insert into ml.score_job_shards (job_id, step, shard, rows, seconds, peak_mb)"
        " values (%s, %s, %s, %s, %s, %s) on conflict (job_id, step, shard) do update set"
        " rows = excluded.rows, seconds = excluded.seconds, peak_mb = excluded.peak_mb,"
        " finished_at = now() returning finished_at",
        (job.job_id, step, shard, json.dumps(rows), time.perf_counter() - started, peak),
    ).fetchone()
    return at


def _put(conn: Any, job_id: str, name: str, value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(data)
    conn.execute("delete from ml.score_job_artifacts where job_id = %s and name = %s",
                 (job_id, name))  # fmt: skip
    with conn.cursor() as cur:
        cur.executemany(
            "insert into ml.score_job_artifacts (job_id, name, part, payload)"
            " values (%s, %s, %s, %s)",
            [(job_id, name, i, view[at : at + ARTIFACT_PART])
             for i, at in enumerate(range(0, max(len(data), 1), ARTIFACT_PART))],
        )  # fmt: skip


def _get(conn: Any, job_id: str, name: str) -> Any:
    rows = conn.execute(
        "select payload from ml.score_job_artifacts where job_id = %s and name = %s order by part",
        (job_id, name),
        binary=True,  # the bytes as they are, not as hex text (2.2 s against 0.9 for 200 MB)
    ).fetchall()
    if not rows:
        raise CrmError(f"scoring job {job_id}: no {name!r} yet (its earlier step has not run)")
    # written by this job's own earlier step, in our database
    return pickle.loads(b"".join(r[0] for r in rows))


_SHARED: dict[tuple[str, str], Any] = {}


def _shared(conn: Any, job_id: str, name: str) -> Any:
    """A job's artifact that every shard reads (the champions, the item state): read once
    per process, which scores one shard after another (~300 MB of item state each time at
    5,000 products); only the latest job's are held."""
    if any(job != job_id for job, _ in _SHARED):
        _SHARED.clear()
    if (job_id, name) not in _SHARED:
        _SHARED[job_id, name] = _get(conn, job_id, name)
    return _SHARED[job_id, name]


def _job_dir(settings: Settings, job_id: str) -> Path:
    return settings.home / "score-jobs" / job_id


def _kept(settings: Settings, job_id: str, shard: int) -> Path:
    """Where the items step keeps its shard's snapshot for the score step on the same worker."""
    return _job_dir(settings, job_id) / f"shard-{shard}.pickle"


def _kept_scores(settings: Settings, job_id: str, shard: int) -> Path:
    """Where the score step keeps its shard's scores for the publish step on the same worker."""
    return _job_dir(settings, job_id) / f"scores-{shard}.pickle"


def _shard_snapshot(job: ScoreJob, shard: int, settings: Settings,
                    snapshot: Snapshot | None) -> Snapshot:  # fmt: skip
    """The shard's rows of the marts: as the items step kept them on this worker (read once
    for both steps: 138 MB written in 0.4 s and read in 0.1 s for 28,000 customers, against
    2.9 s from the database), else from the database."""
    if snapshot is not None:
        return snapshot
    kept = _kept(settings, job.job_id, shard)
    if kept.exists():
        with kept.open("rb") as f:
            return pickle.load(f)  # written by this job's items step, in CRM_HOME
    return load_snapshot(_url(settings), shard=(shard, job.shards), as_of=job.as_of)


def _write(kept: Path, value: Any) -> None:
    kept.parent.mkdir(parents=True, exist_ok=True)
    part = kept.with_suffix(f".{secrets.token_hex(4)}.part")
    with part.open("wb") as f:
        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
    part.replace(kept)  # whole or not at all


def _keep(settings: Settings, job_id: str, shard: int, snap: Snapshot) -> None:
    kept = _kept(settings, job_id, shard)
    # what earlier jobs kept on this worker and no step of theirs will read (their score
    # or publish step ran on another worker, or they were abandoned): removed
    with db.connect(_url(settings)) as conn:
        live = {j for (j,) in conn.execute("select job_id from ml.score_jobs where state in"
                                           " ('scoring', 'swapped')")}  # fmt: skip
    for old in kept.parent.parent.glob("*") if kept.parent.parent.exists() else []:
        if old.name not in live:
            shutil.rmtree(old, ignore_errors=True)
    _write(kept, snap)


def items_step(job_id: str, shard: int, settings: Settings | None = None,
               snapshot: Snapshot | None = None) -> dict[str, int]:  # fmt: skip
    """The item statistics of shard ``shard``'s customers, and the value model's sums."""
    from ml.recommend.candidates import item_stats
    from ml.segments import view_prices

    started = time.perf_counter()
    settings = settings or get_settings()
    url = _url(settings)
    job = load_job(job_id, url)
    with db.connect(url) as conn:
        value = _get(conn, job_id, "value")
    if snapshot is None:  # every table: the score step reads the shard from here
        snap = load_snapshot(url, shard=(shard, job.shards), as_of=job.as_of)
        _keep(settings, job_id, shard, snap)
    else:
        snap = snapshot
    stats = item_stats(snap, job.as_of)
    prices = view_prices(snap)
    sums = value.sums(snap, tuple(job.horizons))  # None unless centred
    rows = {"products": len(stats.products), "customers": int(snap.sessions.customer_id.nunique())}
    with db.connect(url) as conn, conn.transaction():
        _put(conn, job_id, f"items/{shard}", (stats, prices, sums))
        _done(conn, job, "items", shard, rows, started)
    return rows


def build_items(job_id: str, settings: Settings | None = None) -> dict[str, int]:
    """The shop's item state from every shard's statistics, built once for the shards."""
    from ml.recommend.candidates import item_state
    from ml.segments import median_prices

    url = _url(settings or get_settings())
    job = load_job(job_id, url)
    with db.connect(url) as conn:
        done = {s for (s,) in conn.execute("select shard from ml.score_job_shards where job_id"
                                           " = %s and step = 'items'", (job_id,))}  # fmt: skip
        missing = sorted(set(range(job.shards)) - done)
        if missing:
            raise ShardsMissing(f"scoring job {job_id}: shards {missing} have no item statistics")
        parts = [_get(conn, job_id, f"items/{s}") for s in range(job.shards)]
    catalog = load_snapshot(url, tables=()).products
    state = item_state([p[0] for p in parts], catalog, job.as_of)
    medians = median_prices(pd.concat([p[1] for p in parts], ignore_index=True))
    # the value model's centring over the whole shop (None: its correction has none)
    sums = None if parts[0][2] is None else {d: sum(p[2][d] for p in parts) for d in parts[0][2]}
    items = state.products.to_numpy()
    popular = [str(items[i]) for i in np.argsort(-state.popularity)]  # as Recommender's
    with db.connect(url) as conn, conn.transaction():
        _put(conn, job_id, "items", (state, medians, sums))
        _put(conn, job_id, "popular", popular[: job.recommendations])
        conn.execute("delete from ml.score_job_artifacts where job_id = %s and name like"
                     " 'items/%%'", (job_id,))  # fmt: skip
    return {"products": len(state.products)}


def score_step(job_id: str, shard: int, settings: Settings | None = None,
               snapshot: Snapshot | None = None) -> dict[str, int]:  # fmt: skip
    """Score shard ``shard``'s customers with the job's champions into the staging tables."""
    started = time.perf_counter()
    settings = settings or get_settings()
    url = _url(settings)
    job = load_job(job_id, url)
    with db.connect(url) as conn:
        champions = _shared(conn, job_id, "champions")
        state, medians, sums = _shared(conn, job_id, "items")
    snap = _shard_snapshot(job, shard, settings, snapshot)
    frames = {
        "customer_segments": champions["segments"].assign(snap, medians),
        "churn_scores": champions["churn"].score(snap),
        "send_times": champions["send_time"].score(snap),
        "recommendations": champions["recommendations"].score(snap, items=state),
    }
    frames["customer_value"], frames["customer_value_horizons"] = champions["value"].score(
        snap, tuple(job.horizons), sums
    )
    del snap
    rows = {t: len(f) for t, f in frames.items()}
    with db.connect(url) as conn, conn.transaction():
        for table, frame in frames.items():
            conn.execute(sql.SQL("delete from {} where shard = %s").format(_stage(job_id, table)),
                         (shard,))  # fmt: skip
            _copy(conn, job_id, table, frame, shard)
        at = _done(conn, job, "score", shard, rows, started)
    _kept(settings, job_id, shard).unlink(missing_ok=True)
    # the scores as staged, for this worker's publish step (else it reads the staging); with
    # the time this run was recorded, so that a retry elsewhere makes them stale
    _write(_kept_scores(settings, job_id, shard),
           (at, {t: frames[t][TABLES[t]] for t in PUBLISHED}))  # fmt: skip
    return rows


BANDS_SQL = """
with ranked as (
    select customer_id, row_number() over (order by predicted_value_365d, customer_id)::float8
           / count(*) over () as r
    from {stage} where basis = 'orders')
update {stage} v set value_band = case when r > 0.95 then 'top' when r > 0.80 then 'high'
                                       when r > 0.50 then 'medium' else 'low' end
from ranked where v.customer_id = ranked.customer_id"""


def swap(job_id: str, settings: Settings | None = None) -> dict[str, int]:
    """Replace every ``ml.*`` table from the job's staging in one transaction, once every
    shard has scored; log the run in ml.score_runs."""
    url = _url(settings or get_settings())
    job = load_job(job_id, url)
    counts: dict[str, int] = {}
    with db.connect(url) as conn, conn.transaction():
        state = conn.execute("select state from ml.score_jobs where job_id = %s for update",
                             (job_id,)).fetchone()  # fmt: skip
        if state and state[0] != "scoring":  # swapped already: a retry after the commit
            return dict(conn.execute("select table_name, rows from ml.score_runs where"
                                     " scored_at = %s", (job.scored_at,)).fetchall())  # fmt: skip
        done = {s for (s,) in conn.execute("select shard from ml.score_job_shards where job_id"
                                           " = %s and step = 'score'", (job_id,))}  # fmt: skip
        missing = sorted(set(range(job.shards)) - done)
        if missing:
            raise ShardsMissing(
                f"scoring job {job_id}: shards {missing} have not scored; ml.* keeps the "
                "previous run"
            )
        started = time.perf_counter()
        conn.execute(sql.SQL(BANDS_SQL).format(stage=_stage(job_id, "customer_value")))
        sizes = sql.SQL(
            "update {cat} c set customers = coalesce((select count(*) from {segs} s"
            " where s.segment_id = c.segment_id), 0)"
        )
        conn.execute(sizes.format(cat=_stage(job_id, "segment_catalog"),
                                  segs=_stage(job_id, "customer_segments")))  # fmt: skip
        log.info("swap %s: value bands and segment sizes %.1f s", job_id,
                 time.perf_counter() - started)  # fmt: skip
        for table in STAGED:
            started = time.perf_counter()
            cols = sql.SQL(", ").join(map(sql.Identifier, _columns(table)))
            ident = sql.Identifier("ml", table)
            # the indexes built once the rows are in (sorted once), not grown row by row:
            # 22.3M recommendation rows 25 s + 15 s for the key, against 46-72 s inserted
            # in the key's order into the indexed table; readers wait on the truncate's lock
            # either way, and the transaction makes it all or nothing
            indexes = _indexes(conn, table)
            conn.execute(sql.SQL("truncate {}").format(ident))
            for drop, _create in indexes:
                conn.execute(drop)
            cur = conn.execute(
                sql.SQL("insert into {} ({}) select {} from {}").format(
                    ident, cols, cols, _stage(job_id, table)
                )
            )
            for _drop, create in indexes:
                conn.execute(create)
            counts[table] = cur.rowcount
            log.info("swap %s: ml.%s %d rows %.1f s", job_id, table, cur.rowcount,
                     time.perf_counter() - started)  # fmt: skip
            task = TASK_OF[table]
            conn.execute(
                "insert into ml.score_runs (task, table_name, model_name, model_version, rows,"
                " scored_at, model_kind) values (%s, %s, %s, %s, %s, %s, %s)",
                (task, table, tracking.model_name(task), job.versions[task], counts[table],
                 job.scored_at, job.kinds[task]),
            )  # fmt: skip
        conn.execute("update ml.score_jobs set state = 'swapped' where job_id = %s", (job_id,))
    return counts


def _staged(conn: Any, job_id: str, table: str, shard: int,
            columns: list[str] | None = None) -> pd.DataFrame:  # fmt: skip
    cols = sql.SQL(", ").join(map(sql.Identifier, columns or TABLES[table]))
    query = sql.SQL("copy (select {} from {} where shard = {}) to stdout (format csv, header)")
    buf = io.BytesIO()
    with conn.cursor().copy(query.format(cols, _stage(job_id, table), sql.Literal(shard))) as cp:
        for chunk in cp:
            buf.write(chunk)
    buf.seek(0)
    return pd.read_csv(buf, dtype={"customer_id": str, "product_id": str}, low_memory=False)


def publish_step(job_id: str, shard: int, settings: Settings | None = None) -> int:
    """Shard ``shard``'s customer keys in Redis, after the swap: from the scores its score step
    kept on this worker (and the swap's value bands), else from its staged rows."""
    from ml.publish import publish_customers

    started = time.perf_counter()
    settings = settings or get_settings()
    url = _url(settings)
    job = load_job(job_id, url)
    with db.connect(url) as conn:
        state = conn.execute("select state from ml.score_jobs where job_id = %s",
                             (job_id,)).fetchone()  # fmt: skip
        if not state or state[0] == "scoring":
            raise CrmError(f"scoring job {job_id} has not swapped: Redis is not published")
        (scored,) = conn.execute("select finished_at from ml.score_job_shards where job_id = %s"
                                 " and step = 'score' and shard = %s", (job_id, shard)
                                 ).fetchone() or (None,)  # fmt: skip
        kept = _kept_scores(settings, job_id, shard)
        at, frames = (None, {})
        if kept.exists():
            with kept.open("rb") as f:
                at, frames = pickle.load(f)  # written by this job's score step, in CRM_HOME
        if at is not None and at == scored:
            # the value bands are the swap's, over the whole shop: only they are read
            bands = _staged(conn, job_id, "customer_value", shard, ["customer_id", "value_band"])
            value = frames["customer_value"].drop(columns="value_band")
            frames["customer_value"] = value.merge(bands, on="customer_id", how="left")
        else:  # scored on another worker (or retried there): its staged rows
            frames = {t: _staged(conn, job_id, t, shard) for t in PUBLISHED}
    n = publish_customers(frames, job.scored_at.isoformat(), settings)
    with db.connect(url) as conn, conn.transaction():
        _done(conn, job, "publish", shard, {"redis_keys": n}, started)
    kept.unlink(missing_ok=True)
    return n


def finish(job_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """The shared Redis keys and the run's meta, once every shard is published; the staging
    and artifacts dropped. Returns what ``crm score`` reports."""
    from ml.publish import publish_shared

    settings = settings or get_settings()
    url = _url(settings)
    job = load_job(job_id, url)
    with db.connect(url) as conn:
        published: dict[int, int] = dict(conn.execute(
            "select shard, (rows->>'redis_keys')::int from ml.score_job_shards"
            " where job_id = %s and step = 'publish'", (job_id,)).fetchall())  # fmt: skip
        missing = sorted(set(range(job.shards)) - set(published))
        if missing:
            raise ShardsMissing(f"scoring job {job_id}: shards {missing} not published")
        popular = _get(conn, job_id, "popular")
        catalog = _staged(conn, job_id, "segment_catalog", -1)
        rows: dict[str, int] = dict(conn.execute("select table_name, rows from ml.score_runs where"
                                 " scored_at = %s", (job.scored_at,)).fetchall())  # fmt: skip
    meta = {"scored_at": job.scored_at.isoformat(), "models": job.models, "serves": job.kinds}
    publish_shared(catalog, popular, meta, settings)
    shutil.rmtree(_job_dir(settings, job_id), ignore_errors=True)
    with db.connect(url) as conn, conn.transaction():
        _drop_staging(conn, job_id)
        conn.execute("delete from ml.score_job_artifacts where job_id = %s", (job_id,))
        conn.execute("update ml.score_jobs set state = 'published', finished_at = now()"
                     " where job_id = %s", (job_id,))  # fmt: skip
    return {"rows": rows, "redis_keys": sum(published.values()), **meta, "job_id": job_id,
            "shards": job.shards}  # fmt: skip


def _pool(workers: int) -> Any:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))


def _each(step: Callable[..., Any], job_id: str, shards: Iterable[int], settings: Settings,
          workers: int, pool: Any = None, **kw: Any) -> list[Any]:  # fmt: skip
    """``step`` for each shard: in this process, or in ``pool`` (else a pool of its own) when
    ``workers`` > 1."""
    shards = list(shards)
    if workers <= 1 or len(shards) <= 1:
        return [step(job_id, s, settings, **kw) for s in shards]
    if pool is not None:
        return list(pool.map(step, [job_id] * len(shards), shards, [settings] * len(shards)))
    with _pool(min(workers, len(shards))) as ex:
        return list(ex.map(step, [job_id] * len(shards), shards, [settings] * len(shards)))


def run(
    settings: Settings | None = None,
    shards: int | None = None,
    workers: int = 1,
    snapshot: Snapshot | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every step of a scoring job in this process (``workers`` > 1: the shards' steps in that
    many processes); ``snapshot``: score that data as one shard instead of reading the marts."""
    settings = settings or get_settings()
    settings = settings.model_copy(update={"database_url": _url(settings)})
    say = progress or (lambda _msg: None)
    job = plan(settings, shards, snapshot)
    extra = {"snapshot": snapshot} if snapshot is not None else {}
    with contextlib.ExitStack() as stack:
        # one pool for every step: its processes start and import once, not once per step
        pool = None
        if workers > 1 and job.shards > 1:
            pool = stack.enter_context(_pool(min(workers, job.shards)))
        return _run(job, settings, workers, pool, extra, say)


def _run(job: ScoreJob, settings: Settings, workers: int, pool: Any, extra: dict[str, Any],
         say: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    ids = range(job.shards)
    say(f"item statistics of {job.shards} shard(s)")
    _each(items_step, job.job_id, ids, settings, workers, pool, **extra)
    say("the shop's item state")
    build_items(job.job_id, settings)
    say(f"scoring {job.shards} shard(s)")
    _each(score_step, job.job_id, ids, settings, workers, pool, **extra)
    say("swapping ml.* tables")
    redis = None
    if not settings.redis_url:
        # the embedded server held open here: the shards' processes connect to it rather than
        # each starting it (loading its whole file) and the last one saving it on exit;
        # started beside the swap, which waits on the database (3.9 s for a 490 MB file)
        import threading

        from crm.cache import redis_client

        redis = threading.Thread(target=redis_client, args=(settings,), daemon=True)
        redis.start()
    swap(job.job_id, settings)
    if redis is not None:
        redis.join()
    say("publishing Redis keys")
    _each(publish_step, job.job_id, ids, settings, workers, pool)
    return finish(job.job_id, settings)
