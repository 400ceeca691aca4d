"""Evaluation records: one plain-JSON object per (sample, method), the unit a run produces.

Records are what sharded processes exchange, what ``--records`` writes and ``--merge`` reads back, and what the
summaries are computed from; keeping them plain data (no tensors, no objects) is what makes all three the same.
A record holds the task, the sample's index and id, the method, the seconds the attribution took, its details,
per perturbation both ABPCs and the curves on a common grid of :data:`GRID_POINTS` fractions, and for QA samples
the plausibility.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from ..errors import ExplainError

__all__ = ["GRID_POINTS", "ordered", "plain", "read_records", "replacing", "write_records"]

#: Points of the common grid the curves are interpolated on, so samples of different lengths average.
GRID_POINTS = 21
#: The fields without which a line of a records file is not a record.
_REQUIRED = frozenset({"task", "index", "sample", "method", "abpc", "seconds"})


def ordered(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Records in summary order (task, index, sample, method), so that the arrival order of shards never matters."""
    return sorted(records, key=lambda r: (r["task"], r["index"], r["sample"], r["method"]))


def plain(details: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of a method's details (tensors become lists, other objects their repr)."""
    out: dict[str, Any] = {}
    for key, value in details.items():
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        elif not isinstance(value, (int, float, str, bool, type(None), list, dict)):
            value = repr(value)
        out[str(key)] = value
    return out


def write_records(records: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                  *, info: Mapping[str, Any] | None = None) -> None:
    """Records as JSON Lines, in summary order, after a header line ``{"run": info}`` (the command and versions
    that made them): the raw data of a run, to re-summarise or merge with other runs later."""
    with replacing(path) as temporary, temporary.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps({"run": dict(info or {})}) + "\n")
        for record in ordered(records):
            handle.write(json.dumps(record, allow_nan=True) + "\n")


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A new temporary file next to ``path`` (same folder, so same file system; same suffix, so writers that go by
    it still can) for the block to write in full; only when the block succeeds does it replace ``path``, with
    ``os.replace``, which is atomic: a crash or an error leaves neither half a file nor a lost previous one.
    The folder is created if needed; the file gets the previous file's permissions, else the umask's; a symbolic
    link is followed (the file it points to is replaced, as writing through it would)."""
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp{target.suffix}")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 & ~umask, as open() does
    try:
        if target.exists():
            os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
        yield temporary
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # the data is on disk before the name points at it
        finally:
            os.close(descriptor)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_records(path: str | os.PathLike) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``(run info, records)`` of a file written by :func:`write_records`; a clear error names a missing file
    or a line that is not a record."""
    source = Path(path)
    if not source.is_file():
        raise ExplainError(f"no such records file: {source}")
    info: dict[str, Any] | None = None
    records = []
    with source.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ExplainError(f"{source}, line {number}: not valid JSON ({e.msg})") from None
            if number == 1 and isinstance(record, dict) and set(record) == {"run"}:
                info = record["run"]
                continue
            if not isinstance(record, dict) or not _REQUIRED <= set(record):
                raise ExplainError(f"{source}, line {number}: not an evaluation record (write them with --records)")
            records.append(record)
    if not records:
        raise ExplainError(f"{source} holds no evaluation records")
    return info, records
