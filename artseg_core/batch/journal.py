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

__all__ = ["Journal", "read_journal", "run_lock", "FolderBusyError"]


class FolderBusyError(RuntimeError):
    """Another run holds the output folder's lock."""


class run_lock:
    """Exclusive lock on an output folder for the length of a run (``OUT/.artseg.lock``, ``flock``).

    Two runs appending to one journal would interleave their lines; the second run fails at once instead. The
    operating system drops the lock when the holder dies (also on ``kill -9``), so a stale lock cannot block a
    rerun. Where ``fcntl`` is missing (Windows) the lock is a no-op.
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / ".artseg.lock"
        self._fh = None

    def __enter__(self) -> "run_lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "run_lock":
        """Take the lock or raise :class:`FolderBusyError` at once."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.seek(0)
            who = self._fh.read().strip()
            self._fh.close()
            self._fh = None
            raise FolderBusyError(f"{self.path.parent} is in use by another run ({who or 'unknown process'}); "
                                  f"wait for it to finish or use another output folder") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()} on {os.uname().nodename if hasattr(os, 'uname') else '?'}\n")
        self._fh.flush()
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the flock
            self._fh = None


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
