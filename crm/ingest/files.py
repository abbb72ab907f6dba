"""Reading event files: plain or gzip JSON Lines, line by line, as bytes."""

from __future__ import annotations

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


def _raw_chunks(path: Path, size: int) -> Iterator[bytes]:
    """Decompressed bytes as they come. Everything decodable before damage is yielded."""
    with path.open("rb") as f:
        if not is_gzip(path):
            while chunk := f.read(size):
                yield chunk
            return
        d = zlib.decompressobj(wbits=47)  # gzip header, any window size
        while comp := f.read(size):
            while comp:
                try:
                    out = d.decompress(comp)
                except zlib.error as exc:
                    raise DamagedFile(f"corrupt gzip data ({exc})") from None
                if out:
                    yield out
                comp = d.unused_data if d.eof else b""
                if comp:  # a second gzip member follows (concatenated files)
                    d = zlib.decompressobj(wbits=47)
        if not d.eof:
            if tail := d.flush():
                yield tail
            raise DamagedFile("gzip stream ends before its end marker (truncated file)")


def iter_blocks(path: Path, size: int = 1 << 21) -> Iterator[tuple[int, bytes]]:
    """(number of its first line, block): the file (decompressed) in blocks of whole lines,
    without the final end-of-line.

    Line n of the file is line n of the concatenated blocks; a block holds at least one line,
    however long. A UTF-8 byte-order mark at the start is dropped. A truncated or corrupt gzip
    stream raises DamagedFile after yielding every complete line before the damage.
    """
    carry = b""
    first = True
    lines_done = 0
    try:
        for chunk in _raw_chunks(path, size):
            if first:
                chunk = chunk.removeprefix(BOM)
                first = False
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            block, carry = data[:cut], data[cut + 1 :]
            yield lines_done + 1, block
            lines_done += block.count(b"\n") + 1
    except DamagedFile as exc:
        raise DamagedFile(
            f"{exc} after line {lines_done}: the lines before it were processed, the rest "
            "of the file is missing; re-send the complete file"
        ) from None
    if carry:
        yield lines_done + 1, carry


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its end-of-line) for every line, blank ones included."""
    for first, block in iter_blocks(path):
        for number, line in enumerate(block.split(b"\n"), start=first):
            yield number, line.rstrip(b"\r")


def expand(paths: list[Path]) -> list[Path]:
    """Files as given, directories searched recursively for event files, sorted, no repeats."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found.extend(
                sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES))
            )
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
