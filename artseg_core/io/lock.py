"""An exclusive lock on an output folder for the length of a run (``artseg predict`` and ``artseg batch``)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["run_lock", "OutputFolderError", "FolderBusyError", "FolderNotWritableError", "LOCK_NAME"]

LOCK_NAME = ".artseg.lock"


class OutputFolderError(RuntimeError):
    """The output folder cannot be used (message names the folder, the problem and what to do)."""


class FolderBusyError(OutputFolderError):
    """Another run holds the output folder's lock."""


class FolderNotWritableError(OutputFolderError):
    """The output folder cannot be created or written (read-only, no permission, full disk)."""


class run_lock:
    """Exclusive lock on an output folder for the length of a run (``FOLDER/.artseg.lock``, ``flock``).

    Two runs writing into one folder would replace each other's files and tables; the second run fails at once
    instead. The operating system drops the lock when the holder dies (also on ``kill -9``), so a stale lock
    cannot block a rerun. Where ``fcntl`` is missing (Windows) only the folder's writability is checked.

    Parameters
    ----------
    folder : path-like
        The output folder (created when missing).

    Raises
    ------
    FolderBusyError
        From :meth:`acquire`, when another process holds the lock.
    FolderNotWritableError
        From :meth:`acquire`, when the folder cannot be created or the lock file cannot be written.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fh = None

    def __enter__(self) -> "run_lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "run_lock":
        """Take the lock or raise at once (:class:`FolderBusyError`, :class:`FolderNotWritableError`)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")
        except OSError as e:
            raise FolderNotWritableError(
                f"{self.folder}: cannot write to the output folder ({e.strerror or e}); choose a folder you can "
                f"write to") from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            self._fh = fh
            return self
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            who = fh.read().strip()
            fh.close()
            raise FolderBusyError(f"{self.folder} is in use by another run ({who or 'unknown process'}); "
                                  f"wait for it to finish or use another output folder") from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {os.uname().nodename if hasattr(os, 'uname') else '?'}\n")
            fh.flush()
        except OSError as e:  # a full disk: the lock itself holds, only the note of who holds it is missing
            if e.errno not in (28,):  # ENOSPC
                fh.close()
                raise FolderNotWritableError(f"{self.folder}: cannot write to the output folder "
                                             f"({e.strerror or e})") from None
        self._fh = fh
        return self

    def release(self) -> None:
        """Drop the lock (closing the file releases the ``flock``)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
