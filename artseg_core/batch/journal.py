"""Append-only resume journal: one JSON line per finished image, fsync'ed before the next image counts as done.

The journal is the run's only record of what is finished. A line is written after the image's output files are
in place (they are written atomically), so after any interruption - Ctrl-C, ``kill -9``, a crash, a full disk -
every journal line describes complete outputs, and an image without a line is simply done again (its outputs
are replaced atomically, so nothing is torn or duplicated). A torn last line (the process died while writing
it) is dropped when the journal is opened. When an image appears more than once (it was retried) the last line
wins.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from artseg_core.io.lock import FolderBusyError, FolderNotWritableError, OutputFolderError, run_lock

__all__ = ["Journal", "read_journal", "run_lock", "FolderBusyError", "FolderNotWritableError", "OutputFolderError"]


def _parse_lines(data: bytes, path: Path) -> tuple[list[dict], int]:
    """Records in ``data`` and the byte length of its valid prefix (up to the last complete line)."""
    records = []
    good = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:  # torn last line: no newline was written
            break
        line = data[pos:nl]
        pos = nl + 1
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError:
                if pos >= len(data):  # a garbled last line (cut inside a multi-byte write): drop it
                    break
                raise ValueError(f"{path}: corrupt journal line at byte {good} (not JSON); the journal is "
                                 f"append-only and only its last line may be torn - was it edited?") from None
            if not isinstance(rec, dict) or "key" not in rec:
                raise ValueError(f"{path}: journal line at byte {good} has no 'key'")
            records.append(rec)
        good = pos
    return records, good


def read_journal(path: str | os.PathLike) -> dict[str, dict]:
    """Read a journal without changing it: ``{key: last record}`` (insertion order = first completion order).

    A missing file gives an empty dict; a torn last line is ignored.
    """
    p = Path(path)
    if not p.exists():
        return {}
    records, _ = _parse_lines(p.read_bytes(), p)
    out: dict[str, dict] = {}
    for r in records:
        out[r["key"]] = r
    return out


class Journal:
    """An open journal: records already there, and :meth:`append` for new ones.

    Opening repairs a torn last line by truncating the file to its last complete line, so that the next
    record starts on a line of its own.

    Parameters
    ----------
    path : path-like
        The journal file (created when missing; its folder must exist).

    Examples
    --------
    >>> with Journal(out / "journal.jsonl") as j:          # doctest: +SKIP
    ...     if "a.tif" not in j.done:
    ...         j.append({"key": "a.tif", "status": "ok", "row": {...}})
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        data = self.path.read_bytes() if self.path.exists() else b""
        records, good = _parse_lines(data, self.path)
        self.torn_bytes = len(data) - good
        self.done: dict[str, dict] = {}
        for r in records:
            self.done[r["key"]] = r
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o666)
        if self.torn_bytes:
            os.ftruncate(self._fd, good)
            os.fsync(self._fd)
        os.lseek(self._fd, 0, os.SEEK_END)

    def append(self, record: dict) -> None:
        """Write one record as a JSON line and fsync it; then it counts as done.

        Raises OSError (e.g. disk full) without recording anything partially valid: a partial line is truncated
        away, and if even that fails it lacks its newline and the next open drops it.
        """
        if "key" not in record:
            raise ValueError("journal records need a 'key'")
        line = (json.dumps(record, separators=(",", ":"), sort_keys=True, default=_jsonable) + "\n").encode()
        start = os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(line)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fsync(self._fd)
        except OSError:
            try:  # take back a partial line so that later records stay on lines of their own
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            raise
        self.done[record["key"]] = record

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[dict]:
        return iter(self.done.values())

    def __len__(self) -> int:
        return len(self.done)


def _jsonable(v):
    """numpy scalars and paths in rows -> plain JSON values."""
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
