"""What the ``ingest_events`` DAG runs for one data interval; also usable by hand."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from crm import db
from crm.errors import IngestError
from crm.ingest.files import SUFFIXES
from crm.ingest.load import FileResult, ingest_paths
from crm.settings import Settings, get_settings


def day_folder(landing_dir: Path, day: date) -> Path:
    """Where files for ``day`` land: <landing>/events/dt=YYYY-MM-DD/ (Hive-style)."""
    return landing_dir / "events" / f"dt={day.isoformat()}"


@dataclass(frozen=True)
class DaySummary:
    day: str
    files: int
    lines: int
    loaded: int
    duplicates: int
    rejected: int
    skipped: int

    def as_dict(self) -> dict[str, int | str]:
        return dict(vars(self))


def _problems(results: list[FileResult], url: str) -> list[str]:
    problems = [
        f"{r.path.name}: {r.status}: {r.message}"
        for r in results
        if r.status in ("failed", "partial")
    ]
    skipped = [r.skipped_as for r in results if r.skipped_as is not None]
    if skipped:
        with db.connect(url) as conn:
            for load_id, name, message in conn.execute(
                "select load_id, file_name, message from raw.load_audit"
                " where load_id = any(%s) and status = 'partial'",
                (skipped,),
            ):
                problems.append(f"{name}: only partly loaded by load {load_id}: {message}")
    return problems


def ingest_day(
    day: date,
    *,
    settings: Settings | None = None,
    url: str | None = None,
    source: str = "airflow",
    allow_empty: bool = False,
) -> DaySummary:
    """Ingest every event file that landed for ``day``; raise when any did not load fully.

    Re-running for the same day is safe: files already loaded are skipped. A damaged file
    keeps failing the run until a complete copy replaces it, so ops see it.
    """
    settings = settings or get_settings()
    url = url or db.database_url(settings)
    folder = day_folder(settings.landing_dir, day)
    files = (
        sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(SUFFIXES))
        if folder.is_dir()
        else []
    )
    if not files and not allow_empty:
        raise IngestError(
            f"no event files for {day} in {folder}: the day's export has not arrived "
            "(re-run this task once it has, or trigger with allow_empty=true)"
        )
    results = ingest_paths(files, url=url, settings=settings, source=source) if files else []
    summary = DaySummary(
        day=day.isoformat(),
        files=len(results),
        lines=sum(r.lines for r in results),
        loaded=sum(r.loaded for r in results),
        duplicates=sum(r.duplicates for r in results),
        rejected=sum(r.rejected for r in results),
        skipped=sum(r.skipped for r in results),
    )
    problems = _problems(results, url)
    if problems:
        raise IngestError(f"{day}: " + "; ".join(problems) + f" (loaded so far: {summary})")
    return summary
