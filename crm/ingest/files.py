"""Reading event files: plain or gzip JSON Lines, line by line, as bytes."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Iterator
from pathlib import Path

from crm.errors import IngestError

BOM = b"\xef\xbb\xbf"
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")


class DamagedFile(Exception):
    """The file ends before its compressed stream does; lines read so far are valid."""


def checksum(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"\x1f\x8b"


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, line without its end-of-line) for every line, blank ones included.

    A UTF-8 byte-order mark at the start of the file is dropped. A truncated or corrupt gzip
    stream raises DamagedFile after the last complete line.
    """
    opener = gzip.open if is_gzip(path) else open
    number = 0
    try:
        with opener(path, "rb") as f:  # type: ignore[operator]
            for number, line in enumerate(f, start=1):  # noqa: B007
                if number == 1 and line.startswith(BOM):
                    line = line[len(BOM) :]
                yield number, line.rstrip(b"\r\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DamagedFile(
            f"gzip stream damaged after line {number} ({exc}); the lines before it were "
            "processed, the rest of the file is missing: re-send the complete file"
        ) from None


def expand(paths: list[Path]) -> list[Path]:
    """Files as given, directories searched recursively for event files, sorted, no repeats."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES)))
        elif p.is_file():
            found.append(p)
        else:
            raise IngestError(f"{p}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for f in found:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(f)
    return unique
