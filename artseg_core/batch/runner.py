"""``artseg batch``: run the engine over a whole plate - resumable, in parallel (local processes or Dask).

Layout of the output folder ``OUT``::

    batch.json          what the run was made from (model + checksum, options, channel, plate) and one entry per run
    journal.jsonl       append-only resume journal, one fsync'ed JSON line per finished image (with the input
                        file's path, size and modification time)
    results.csv         one row per image (plate, well, field, ... + engine row), rebuilt from the journal
    wells.csv           one row per well (fields, failures, flagged fields, artifact fraction, QC flags)
    skipped.csv         files found in the plate and not processed, with the reason
    batch.log           log of every run
    outputs/...         what ``artseg predict`` writes per image, in the input's folder structure
    report.html         static plate report (see :mod:`.report`)

Per image the engine's :func:`artseg_core.predict.files.process_file` does all the work (read, predict, write
the chosen outputs atomically); the executors (:mod:`.executors`) compute, this module decides what is left to do
and records what came back.

Reruns into one folder
----------------------
* Same plate, model and options: the run resumes - images with a journal line are done; new images in the
  plate are processed first, then (by default) the images whose last attempt failed.
* Other input files (another plate folder, files changed since they were processed), another model, other
  analysis options (threshold, gate, plane, minimum size, pixel size), channel or naming pattern: refused, with
  what differs; ``overwrite=True`` (``--overwrite``) starts over in the folder, or use a new one.
* More outputs (``--prob``, ``--roi``, ``--cleaned`` ...): only the new files are computed for the images done
  before; outputs are never removed by a rerun.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from artseg_core.batch.executors import (
    ExecContext,
    ExecutorError,
    ExecutorSetupError,
    Job,
    executor_for,
    output_name,
    threads_per_worker,
)
from artseg_core.batch.journal import Journal, OutputFolderError, read_journal, run_lock
from artseg_core.batch.layout import JOURNAL, LOG, OUTPUTS, REPORT, REPORT_FILES, RESULTS, SETTINGS, WELLS
from artseg_core.batch.manifest import ImageTask, Manifest, build_manifest
from artseg_core.batch.tables import finalize
from artseg_core.predict.files import PredictOptions

__all__ = ["run_batch", "BatchSummary", "BatchError", "BatchInterrupted", "plan_batch", "threads_per_worker",
           "SKIPPED", "OUTPUT_OPTIONS", "ANALYSIS_OPTIONS", "EXIT_CODES"]

logger = logging.getLogger("artseg.batch")

SKIPPED = "skipped.csv"  #: files of the plate that were not processed, and why
#: options that only choose which files are written per image: they can be added to a finished run
OUTPUT_OPTIONS = ("mask", "prob", "roi", "cleaned", "overlay", "objects")
#: options that change the numbers: a run into a folder made with others is refused
ANALYSIS_OPTIONS = tuple(f.name for f in fields(PredictOptions) if f.name not in OUTPUT_OPTIONS)
#: ``artseg batch``'s exit codes
EXIT_CODES = {0: "every image processed and fine", 1: "some images failed (results.csv says why)",
              2: "usage error: bad input, model, options, or a folder holding another run (nothing was run)",
              3: "stopped by --max-failures", 4: "stopped: worker processes kept dying",
              130: "interrupted by Ctrl-C (SIGINT)", 143: "stopped by SIGTERM"}


class BatchError(RuntimeError):
    """The run cannot start or cannot go on (message says why and what to do)."""


class BatchInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT, SIGTERM) after recording what finished; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)


@dataclass
class BatchSummary:
    """What a plate run did.

    ``n_ok``/``n_failed``/``n_flagged`` count the whole plate as recorded in the journal (earlier runs
    included); ``n_processed`` counts this run only.
    """

    out_dir: Path
    n_images: int = 0
    n_done_before: int = 0
    n_todo: int = 0
    n_processed: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_flagged: int = 0
    n_failed_this_run: int = 0
    n_new_failures: int = 0
    n_skipped: int = 0
    stopped_early: bool = False
    interrupted: bool = False
    signal: int | None = None
    aborted: str = ""
    dry_run: bool = False
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    steady_images_per_s: float = 0.0
    backend: str = ""
    results_csv: Path | None = None
    wells_csv: Path | None = None
    skipped_csv: Path | None = None
    report: Path | None = None
    log_file: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every image of the plate has a journal line."""
        return self.n_ok + self.n_failed == self.n_images

    @property
    def exit_code(self) -> int:
        """See :data:`EXIT_CODES`: 0 fine, 1 some failed, 3 --max-failures, 4 workers kept dying, 128 + signal."""
        if self.interrupted:
            return 128 + (self.signal or signal.SIGINT)
        if self.aborted:
            return 4
        if self.stopped_early:
            return 3
        return 1 if self.n_failed else 0

    def line(self) -> str:
        """One-line human summary."""
        if self.dry_run:
            return (f"dry run: {self.n_todo} of {self.n_images} images would be processed "
                    f"({self.n_done_before} already done) -> {self.out_dir}")
        s = (f"{self.n_images} images: {self.n_ok} ok, {self.n_failed} failed, {self.n_flagged} flagged; "
             f"this run {self.n_processed} in {self.elapsed_s:.1f} s ({self.images_per_s:.2f} images/s, "
             f"{self.backend})")
        if self.n_skipped:
            s += f"; {self.n_skipped} file(s) skipped (skipped.csv)"
        if self.stopped_early:
            s += "; STOPPED EARLY (--max-failures)"
        if self.aborted:
            s += f"; STOPPED: {self.aborted}"
        if self.interrupted:
            s += "; INTERRUPTED" + (" (SIGTERM)" if self.signal == signal.SIGTERM else "")
        if not self.complete and not (self.stopped_early or self.interrupted or self.aborted):
            s += "; incomplete"
        return s + f" -> {self.out_dir}"


# ----------------------------------------------------------------------------------------------- planning


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _stat(path: str) -> dict:
    """What identifies an input file's content cheaply: size and modification time."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def plan_batch(plate, out_dir, *, channel: str | None = None, name_regex: str | None = None,
               retry_failed: bool = True, include_derived: bool = False, allow_duplicates: bool = False
               ) -> tuple[Manifest, dict[str, dict], list[ImageTask]]:
    """The plate's images, the journal records already in ``out_dir`` and the images still to do.

    The images still to do come in plate order, those never attempted first, then (``retry_failed``) those whose
    last attempt failed - so a rerun gets past earlier failures to the rest of the plate before retrying them.
    """
    out = Path(out_dir)
    man = build_manifest(plate, channel=channel, name_regex=name_regex, exclude=out,
                         include_derived=include_derived, allow_duplicates=allow_duplicates)
    done = read_journal(out / JOURNAL)
    new = [t for t in man.tasks if t.key not in done]
    again = [t for t in man.tasks if retry_failed and t.key in done and done[t.key].get("status") != "ok"]
    return man, done, new + again


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _changed_inputs(man: Manifest, done: dict[str, dict]) -> list[str]:
    """Images done before (status ok) whose input file is now another file or has changed. (A failed image is done
    again anyway: fixing a broken file and rerunning is the intended way.)"""
    diffs = []
    for t in man.tasks:
        rec = done.get(t.key)
        if rec is None or rec.get("status") != "ok":
            continue
        was = (rec.get("row") or {}).get("path")
        if was and os.path.realpath(was) != t.path:
            diffs.append(f"{t.key}: was {was}, now {t.path}")
            continue
        old = rec.get("input") or {}
        now = _stat(t.path)
        if old and now and (old.get("size") != now.get("size") or old.get("mtime_ns") != now.get("mtime_ns")):
            diffs.append(f"{t.key}: the file changed since it was processed (size {old.get('size')} -> "
                         f"{now.get('size')} bytes, modified {_dt.datetime.fromtimestamp(now['mtime_ns'] / 1e9)})")
    return diffs


def _compare_with_previous(out: Path, settings: dict, man: Manifest, done: dict[str, dict]) -> tuple[dict, set]:
    """Check this run against the one already in ``out``.

    Returns the settings to record (with the previous runs) and the output options this run adds to it.

    Raises
    ------
    BatchError
        Another model, other analysis options, channel or naming pattern, or other input files: resuming would
        mix two analyses in one table. The message names what differs and how to start over.
    """
    path = out / SETTINGS
    if not path.exists():
        return {**settings, "runs": []}, set()
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise BatchError(f"{path}: unreadable run settings ({e}); use --overwrite to start over in {out}") from None
    if not done:
        return {**settings, "runs": old.get("runs", [])}, set()
    diffs = []
    if old.get("model_sha256") != settings["model_sha256"]:
        diffs.append(f"another model (was {old.get('model')}, sha256 {str(old.get('model_sha256'))[:12]}; now "
                     f"{settings['model']}, sha256 {settings['model_sha256'][:12]})")
    o_old, o_new = old.get("options") or {}, settings["options"]
    opt = [f"{_flag(k)} (was {o_old.get(k)!r}, now {o_new.get(k)!r})" for k in ANALYSIS_OPTIONS
           if o_old.get(k) != o_new.get(k)]
    if opt:
        diffs.append("different options: " + ", ".join(opt))
    for k, flag in (("channel", "--channel"), ("name_regex", "--name-regex")):
        if old.get(k) != settings.get(k):
            diffs.append(f"another {flag} (was {old.get(k)!r}, now {settings.get(k)!r})")
    changed = _changed_inputs(man, done)
    if changed:
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        diffs.append(f"other input files: {len(changed)} of the images done before differ - "
                     f"{'; '.join(changed[:3])}{more}")
    if diffs:
        raise BatchError(f"{out} holds the results of another analysis ({len(done)} images): " + "; ".join(diffs)
                         + f". Resuming would mix two analyses in one table - use --overwrite to start over in "
                           f"{out}, or a new --out folder")
    merged = dict(o_new)
    added = set()
    for k in OUTPUT_OPTIONS:
        if o_new.get(k) and o_new.get(k) != o_old.get(k):
            added.add(k)
        elif not o_new.get(k) and o_old.get(k):
            merged[k] = o_old[k]  # outputs already written stay part of the run
    return {**settings, "options": merged, "runs": old.get("runs", [])}, added


def _wipe_run(out: Path) -> list[str]:
    """``--overwrite``: remove what a plate run wrote into ``out`` (only ArtSeg's own files and folders)."""
    gone = []
    for name in (JOURNAL, RESULTS, WELLS, SKIPPED, SETTINGS, REPORT, LOG):
        p = out / name
        if p.is_file():
            p.unlink()
            gone.append(name)
    for name in (OUTPUTS, REPORT_FILES):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
            gone.append(name + "/")
    return gone


def _jobs(man: Manifest, done: dict[str, dict], todo: list[ImageTask], opts: PredictOptions,
          added: set[str]) -> list[Job]:
    """What to compute: the images still to do, then the new outputs of images done before."""
    jobs = [Job(t, opts, failed_before=t.key in done) for t in todo]
    if added:
        todo_keys = {t.key for t in todo}
        only_new = replace(opts, **{k: (getattr(opts, k) if k in added else (None if k == "cleaned" else False))
                                    for k in OUTPUT_OPTIONS})
        jobs += [Job(t, only_new) for t in man.tasks
                 if t.key not in todo_keys and done.get(t.key, {}).get("status") == "ok"]
    return jobs


def _full_row(task: ImageTask, row: dict, options: PredictOptions) -> dict:
    """Engine row + location columns + the mask's path relative to OUT."""
    r = dict(row)
    r.pop("image", None)
    r.pop("output", None)
    out = task.meta()
    out.update(r)
    out["path"] = task.path
    if options.mask and r.get("status") == "ok":
        sub = f"{OUTPUTS}/{task.out_subdir}" if task.out_subdir else OUTPUTS
        out["mask"] = f"{sub}/{output_name(task)}_mask.tif"
    else:
        out["mask"] = ""
    return out


def _remove_stale_temps(folder: Path) -> int:
    """Delete temporary files that an interrupted atomic write left behind (``.NAME.XXXX.tmp``)."""
    n = 0
    if not folder.is_dir():
        return 0
    for p in folder.rglob(".*.tmp"):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


# ----------------------------------------------------------------------------------------------- the run folder


_LOGGERS = ("artseg.batch", "artseg.predict", "artseg.warnings", "py.warnings")


def _setup_log(path: Path) -> logging.Handler:
    h = logging.FileHandler(path, encoding="utf-8")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    h.setLevel(logging.INFO)
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        lg.addHandler(h)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    return h


def _drop_log(h: logging.Handler) -> None:
    for name in _LOGGERS:
        logging.getLogger(name).removeHandler(h)
    h.close()


def _warning_to_log(message, category, filename, lineno, file=None, line=None) -> None:
    logging.getLogger("artseg.warnings").warning("%s: %s (%s:%s)", category.__name__, message,
                                                 Path(filename).name, lineno)


class _RunFolder:
    """For the length of a run: the folder's lock, the log file, warnings in the log, SIGTERM handled as Ctrl-C."""

    def __init__(self, out: Path, log: Path):
        self.out, self.log = out, log
        self.lock = run_lock(out)
        self.handler = None
        self._old_term = None
        self._old_show = None

    def __enter__(self) -> "_RunFolder":
        import warnings

        try:
            self.lock.acquire()
        except OutputFolderError as e:
            raise BatchError(str(e)) from None
        try:
            self.handler = _setup_log(self.log)
        except OSError as e:
            self.lock.release()
            raise BatchError(f"{self.log}: cannot write the log ({e.strerror or e})") from None
        self._old_show, warnings.showwarning = warnings.showwarning, _warning_to_log
        if threading.current_thread() is threading.main_thread():
            self._old_term = signal.signal(signal.SIGTERM, self._on_term)
        return self

    @staticmethod
    def _on_term(signum, frame):
        raise BatchInterrupted(signum)

    def __exit__(self, *exc) -> None:
        import warnings

        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
        warnings.showwarning = self._old_show
        _drop_log(self.handler)
        self.lock.release()


# ----------------------------------------------------------------------------------------------- the run


def run_batch(plate, model_path, out_dir, *, workers: int = 1, scheduler: str | None = None,
              dask_local: bool = False, options: PredictOptions | None = None, channel: str | None = None,
              name_regex: str | None = None, max_failures: int | None = None, dry_run: bool = False,
              progress: bool = True, log: str | os.PathLike | None = None, retry_failed: bool = True,
              report: bool = True, device: str = "auto", prefetch: int = 4, overwrite: bool = False,
              include_derived: bool = False, allow_duplicates: bool = False,
              echo: Callable[[str], None] | None = None) -> BatchSummary:
    """Run the ArtSeg engine over every image of a plate; resumable and parallel.

    Parameters
    ----------
    plate : str or path-like
        Folder (recursive), glob pattern, or CSV manifest (plain ``path`` column or CellProfiler LoadData).
    model_path : path-like
        An ``.artseg`` model file.
    out_dir : path-like
        Output folder; a rerun into the same folder resumes (same inputs, model and analysis options required;
        output options may be added).
    workers : int
        Worker processes (local), or worker processes of the local Dask cluster with ``dask_local``. 1 runs in
        this process.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); its workers do the work.
    dask_local : bool
        Start a local Dask cluster on 127.0.0.1 with ``workers`` single-threaded worker processes.
    options : PredictOptions
        What to write per image (as ``artseg predict``).
    channel : str, optional
        Brightfield channel to process when the plate has several (``--channel``).
    name_regex : str, optional
        Regular expression with named groups for plate/well/field when the names follow no known convention.
    max_failures : int, optional
        Stop once this many images have failed for the first time in this run (exit code 3); images that had
        failed before and fail again do not count. None never stops.
    dry_run : bool
        Only list what would run (nothing is written).
    progress : bool
        Show a progress bar (rate, ETA) on stderr.
    log : path-like, optional
        Log file (default ``OUT/batch.log``); every run appends.
    retry_failed : bool
        On a rerun also redo images whose last attempt failed (default; failures may have been a full disk).
    report : bool
        Write ``OUT/report.html`` at the end.
    device : str
        Torch device for the workers ("auto", "cpu", "cuda").
    prefetch : int
        Files read ahead into the page cache.
    overwrite : bool
        Start over in ``out_dir``: remove the earlier run's journal, tables, outputs and report first.
    include_derived : bool
        Also process files in mask folders and ArtSeg output folders inside the plate.
    allow_duplicates : bool
        Process two files for the same plate position (else refused).
    echo : callable, optional
        Receives the dry-run listing lines (default: print to stdout).

    Returns
    -------
    BatchSummary
        Counts, timings, paths and ``exit_code``.

    Raises
    ------
    ManifestError, ModelFileError, BatchError
        Bad plate input, bad model file, a folder holding another analysis, an output folder that cannot be
        written, an unreachable scheduler.
    BatchInterrupted
        (a KeyboardInterrupt) after the tables of what finished have been written; ``signum`` is SIGINT or SIGTERM.
    """
    t_start = time.perf_counter()
    out, model_path, opts = Path(out_dir), Path(model_path), options or PredictOptions()
    _check_arguments(out, model_path, workers, max_failures)
    if overwrite and (out / SETTINGS).is_file() and not dry_run:
        try:
            with run_lock(out):
                gone = _wipe_run(out)
        except (OutputFolderError, OSError) as e:
            raise BatchError(f"--overwrite: {e}") from None
        logger.info("--overwrite: removed %s", ", ".join(gone))
    man, done, todo = plan_batch(plate, out, channel=channel, name_regex=name_regex, retry_failed=retry_failed,
                                 include_derived=include_derived, allow_duplicates=allow_duplicates)
    summary = BatchSummary(out_dir=out, n_images=len(man), n_todo=len(todo), notes=list(man.notes),
                           n_done_before=sum(1 for t in man.tasks if t.key in done), n_skipped=len(man.skipped))
    if dry_run:
        return _dry_run(man, todo, out, summary, echo or print)
    with _RunFolder(out, Path(log) if log is not None else out / LOG):
        summary.log_file = Path(log) if log is not None else out / LOG
        settings, added = _start(out, plate, model_path, man, done, opts, name_regex, summary)
        opts = PredictOptions(**settings["options"])
        jobs = _jobs(man, done, todo, opts, added)
        summary.n_todo = len(jobs)
        ctx = _context(out, model_path, device, workers, prefetch, scheduler, dask_local)
        summary.backend, executor = executor_for(ctx)
        run_info = _record_start(out, settings, summary, len(jobs), workers, added)
        _execute(executor(ctx, jobs), out, opts, max_failures, progress, summary)
        _finish(out, man, settings, run_info, summary, report, t_start)
        if summary.interrupted:
            raise BatchInterrupted(summary.signal or signal.SIGINT)
        return summary


def _check_arguments(out: Path, model_path: Path, workers: int, max_failures: int | None) -> None:
    if workers < 1:
        raise BatchError(f"--workers must be >= 1, got {workers}")
    if max_failures is not None and max_failures < 1:
        raise BatchError(f"--max-failures must be >= 1, got {max_failures}")
    if out.exists() and not out.is_dir():
        raise BatchError(f"{out}: exists and is not a folder")
    if not model_path.is_file():
        from artseg_core.io.modelfile import ModelFileError

        raise ModelFileError(model_path, "no such model file")


def _dry_run(man: Manifest, todo: list[ImageTask], out: Path, summary: BatchSummary, say) -> BatchSummary:
    say(f"plate {man.source} ({man.kind}, root {man.root}): {len(man)} images"
        + (f", channel {man.channel}" if man.channel else "")
        + f"; {summary.n_done_before} already done in {out}; {len(todo)} to process")
    for note in man.notes:
        say(f"note: {note}")
    for t in todo:
        n = t.name
        say(f"{n.plate}\t{n.well or '-'}\tf{n.field if n.field is not None else '-'}\t"
            f"{n.channel or '-'}\t{t.path}")
    for f, why in man.skipped:
        say(f"skipped\t{f}\t{why}")
    summary.dry_run = True
    return summary


def _start(out: Path, plate, model_path: Path, man: Manifest, done: dict, opts: PredictOptions,
           name_regex: str | None, summary: BatchSummary) -> tuple[dict, set]:
    """Validate the model, compare with the run already in ``out``, write ``skipped.csv``."""
    from artseg_core.io.modelfile import load_model_file
    from artseg_core.io.results import write_csv

    from artseg_core.predict.model import NO_SECOND_OPINION, has_second_opinion

    manifest, arrays = load_model_file(model_path)  # validates the file before any worker starts
    if opts.second_opinion and not has_second_opinion(arrays):
        raise BatchError(f"{model_path}: {NO_SECOND_OPINION}")
    settings = {
        "artseg_version": _version(), "model": str(model_path.resolve()), "model_sha256": _sha256(model_path),
        "model_thresholds": manifest.get("thresholds", {}),
        "quality_thresholds": manifest.get("quality_thresholds", {}),
        "model_profile": (manifest.get("profile") or {}).get("name", ""),
        "options": opts.to_dict(), "channel": man.channel, "name_regex": name_regex,
        "plate": str(plate), "plate_root": man.root, "plate_kind": man.kind, "n_images": len(man),
        "n_skipped": len(man.skipped)}
    settings, added = _compare_with_previous(out, settings, man, done)
    try:
        summary.skipped_csv = write_csv(out / SKIPPED, [{"path": f, "reason": why} for f, why in man.skipped],
                                        ["path", "reason"])
    except OSError as e:
        raise BatchError(f"{out}: cannot write to the output folder ({e.strerror or e})") from None
    for f, why in man.skipped[:200]:  # the log has the reasons; the console has the count (summary.notes)
        logger.info("skipped: %s: %s", f, why)
    if len(man.skipped) > 200:
        logger.info("skipped: %d more (all listed in %s)", len(man.skipped) - 200, out / SKIPPED)
    return settings, added


def _context(out: Path, model_path: Path, device: str, workers: int, prefetch: int, scheduler, dask_local
             ) -> ExecContext:
    from artseg_core.nets.cpus import available_cpus  # not fastpath: the parent of worker processes needs no torch

    return ExecContext(out=out, model_path=str(model_path.resolve()), device=device, workers=workers,
                       prefetch=prefetch, scheduler=scheduler, dask_local=dask_local, cpus=available_cpus())


def _record_start(out: Path, settings: dict, summary: BatchSummary, n_jobs: int, workers: int,
                  added: set) -> dict:
    run_info = {"started": _now(), "host": socket.gethostname(), "python": platform.python_version(),
                "backend": summary.backend, "workers": workers, "todo": n_jobs,
                "done_before": summary.n_done_before, "pid": os.getpid()}
    settings["runs"].append(run_info)
    _write_settings(out, settings)
    stale = _remove_stale_temps(out / OUTPUTS)
    logger.info("run start: plate %s (%d images, %d done, %d to do%s), model %s (sha256 %s), backend %s%s",
                settings["plate"], summary.n_images, summary.n_done_before, n_jobs,
                f"; new outputs {', '.join(sorted(added))}" if added else "", settings["model"],
                settings["model_sha256"][:12], summary.backend,
                f", removed {stale} stale temporary files" if stale else "")
    for note in summary.notes:
        logger.info("note: %s", note)
    return run_info


def _execute(gen, out: Path, opts: PredictOptions, max_failures: int | None, progress: bool,
             summary: BatchSummary) -> None:
    """Record every finished image in the journal (fsync'ed) as it comes; stop on --max-failures, an interrupt, or
    an executor that cannot go on."""
    t_run = time.perf_counter()
    t_first = t_last = None
    bar = _progress(summary.n_todo, progress)
    failed = new_failures = 0
    try:
        with Journal(out / JOURNAL) as journal:
            if journal.torn_bytes:
                logger.warning("journal: dropped a torn last line (%d bytes) from an interrupted run",
                               journal.torn_bytes)
            try:
                for job, row in gen:
                    t_last = time.perf_counter()
                    t_first = t_first or t_last
                    full = _full_row(job.task, row, opts)
                    journal.append({"key": job.task.key, "index": job.task.index,
                                    "status": full.get("status", "error"), "row": full, "t": _now(),
                                    "input": _stat(job.task.path)})
                    summary.n_processed += 1
                    bar.update(1)
                    if full.get("status") == "ok":
                        continue
                    failed += 1
                    new_failures += not job.failed_before
                    logger.error("failed: %s: %s", job.task.key, full.get("error", ""))
                    bar.set_postfix(failed=failed, refresh=False)
                    if max_failures is not None and new_failures >= max_failures:
                        summary.stopped_early = True
                        logger.error("stopping: %d new failures reached --max-failures %d", new_failures,
                                     max_failures)
                        break
            finally:
                gen.close()
    except KeyboardInterrupt as e:
        summary.interrupted = True
        summary.signal = getattr(e, "signum", signal.SIGINT)
        logger.warning("interrupted (%s) after %d images; rerun the same command to continue",
                       signal.Signals(summary.signal).name, summary.n_processed)
    except ExecutorSetupError as e:
        raise BatchError(str(e)) from None
    except ExecutorError as e:
        summary.aborted = str(e)
        logger.error("stopped: %s", e)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t_run
    summary.n_failed_this_run, summary.n_new_failures = failed, new_failures
    summary.images_per_s = summary.n_processed / elapsed if elapsed > 0 else 0.0
    if summary.n_processed > 1 and t_last > t_first:  # after the workers' start-up and first image
        summary.steady_images_per_s = (summary.n_processed - 1) / (t_last - t_first)


def _finish(out: Path, man: Manifest, settings: dict, run_info: dict, summary: BatchSummary, report: bool,
            t_start: float) -> None:
    """Tables from the journal, the run's entry in batch.json, the report; a further SIGTERM waits for them."""
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the tables are what the user needs now
    try:
        summary.elapsed_s = time.perf_counter() - t_start
        rows, summary.results_csv, summary.wells_csv = finalize(out, man)
        summary.n_ok = sum(1 for r in rows if r.get("status") == "ok")
        summary.n_failed = len(rows) - summary.n_ok
        summary.n_flagged = sum(1 for r in rows if r.get("status") == "ok" and r.get("flagged") in (True, "True"))
        run_info.update(finished=_now(), processed=summary.n_processed, failed=summary.n_failed_this_run,
                        images_per_s=round(summary.images_per_s, 4), stopped_early=summary.stopped_early,
                        interrupted=summary.interrupted, signal=summary.signal, aborted=summary.aborted,
                        exit_code=summary.exit_code)
        _write_settings(out, settings)
        if report and not summary.interrupted:
            from artseg_core.batch.report import write_report

            try:
                summary.report = write_report(out)
            except Exception as e:  # the tables are the product; a report failure must not hide them
                logger.exception("report failed")
                summary.notes.append(f"report failed: {type(e).__name__}: {e}")
        logger.info("run end: %s (exit code %d)", summary.line(), summary.exit_code)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _write_settings(out: Path, settings: dict) -> None:
    from artseg_core.io.files import write_text

    write_text(out / SETTINGS, json.dumps(settings, indent=2, default=str) + "\n")


def _version() -> str:
    from artseg_core._version import __version__

    return __version__


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="artseg batch", file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)
