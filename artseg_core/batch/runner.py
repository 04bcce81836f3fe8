"""``artseg batch``: run the engine over a whole plate - resumable, in parallel (local processes or Dask).

Layout of the output folder ``OUT``::

    batch.json          run settings (model + checksum, options, channel) and one entry per run
    journal.jsonl       append-only resume journal, one fsync'ed JSON line per finished image
    results.csv         one row per image (plate, well, field, ... + engine row), rebuilt from the journal
    wells.csv           one row per well (fields, failures, flagged fields, artifact fraction, QC flags)
    batch.log           log of every run
    outputs/...         what ``artseg predict`` writes per image, in the input's folder structure
    report.html         static plate report (see :mod:`.report`)

Per image the engine's :func:`artseg_core.predict_files.process_file` does all the work (read, predict, write
the chosen outputs atomically); this module only decides what is left to do, hands images to workers and
records what came back. Resume rule: an image counts as done when its journal line is on disk; a rerun with the
same settings processes the images without a line (and, by default, retries the ones that failed).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from artseg_core.predict.files import PredictOptions, error_row, process_file
from artseg_core.batch.journal import FolderBusyError, Journal, read_journal, run_lock
from artseg_core.batch.manifest import ImageTask, Manifest, build_manifest
from artseg_core.batch.platenames import image_stem
from artseg_core.batch.layout import JOURNAL, LOG, OUTPUTS, SETTINGS
from artseg_core.batch.tables import finalize

__all__ = ["run_batch", "BatchSummary", "BatchError", "plan_batch"]

logger = logging.getLogger("artseg.batch")

#: settings that must not change between runs into one output folder (else rows would mix two analyses)
_FIXED = ("model_sha256", "options", "channel", "name_regex")


class BatchError(RuntimeError):
    """The run cannot start or cannot go on (message says why and what to do)."""


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
    stopped_early: bool = False
    interrupted: bool = False
    dry_run: bool = False
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    steady_images_per_s: float = 0.0
    backend: str = ""
    results_csv: Path | None = None
    wells_csv: Path | None = None
    report: Path | None = None
    log_file: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every image of the plate has a journal line."""
        return self.n_ok + self.n_failed == self.n_images

    @property
    def exit_code(self) -> int:
        """0 all images done and fine; 1 some images failed; 3 stopped by --max-failures; 130 interrupted."""
        if self.interrupted:
            return 130
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
        if self.stopped_early:
            s += "; STOPPED EARLY (--max-failures)"
        if self.interrupted:
            s += "; INTERRUPTED"
        if not self.complete and not (self.stopped_early or self.interrupted):
            s += "; incomplete"
        return s + f" -> {self.out_dir}"


# ----------------------------------------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _task_out_dir(out: Path, task: ImageTask) -> Path:
    return out / OUTPUTS / task.out_subdir if task.out_subdir else out / OUTPUTS


def _output_name(task: ImageTask) -> str:
    return image_stem(PurePosixPath(task.key).name)


def _full_row(task: ImageTask, row: dict, options: PredictOptions) -> dict:
    """Engine row + location columns + the mask's path relative to OUT."""
    r = dict(row)
    r.pop("image", None)
    out = task.meta()
    out.update(r)
    out["path"] = task.path
    if options.mask and r.get("status") == "ok":
        sub = f"{OUTPUTS}/{task.out_subdir}" if task.out_subdir else OUTPUTS
        out["mask"] = f"{sub}/{_output_name(task)}_mask.tif"
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


class _Prefetcher:
    """Reads the next files of the plate into the OS page cache while the current one is processed.

    Decoding stays in the worker (the engine reads the file itself); what overlaps with compute is the disk or
    network-filesystem read, which is what dominates for large plate images on shared storage.
    """

    def __init__(self, paths: list[str], depth: int):
        self.paths = paths
        self.depth = max(0, depth)
        self._sem = threading.Semaphore(self.depth)
        self._stop = threading.Event()
        self._thread = None
        if self.depth and paths:
            self._thread = threading.Thread(target=self._run, name="artseg-prefetch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        for p in self.paths:
            self._sem.acquire()
            if self._stop.is_set():
                return
            try:
                with open(p, "rb", buffering=0) as fh:
                    if hasattr(os, "posix_fadvise"):
                        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
                    while fh.read(1 << 22):
                        pass
            except OSError:
                pass  # the worker will report the problem with this file

    def consumed(self) -> None:
        """One file was handed to a worker: the reader may go one further."""
        if self.depth:
            self._sem.release()

    def close(self) -> None:
        self._stop.set()
        if self.depth:
            self._sem.release()


# ----------------------------------------------------------------------------------------------- workers

_WORKER: dict = {}
_WORKER_LOCK = threading.Lock()
#: images in flight in the in-process worker (one computing while the other reads or writes)
_INPROCESS_OVERLAP = 2


def _cached_model(model_path: str, sha: str, device: str):
    """The worker's model, loaded once per process (by whichever task or initializer asks first)."""
    key = (model_path, sha, device)
    with _WORKER_LOCK:
        m = _WORKER.get(key)
        if m is None:
            from artseg_core.predict.model import load_model

            m = load_model(model_path, device=device)
            _WORKER[key] = m
        return m


def _set_threads(n: int | None) -> int:
    from artseg_core.nets.accel import set_threads

    return set_threads(n)


def threads_per_worker(workers: int, cpus: int) -> int:
    """Torch threads for each of ``workers`` workers: ``ARTSEG_THREADS`` when set, else ``cpus // workers``.

    On a machine shared with other jobs fewer threads than cores are often faster: torch's OpenMP threads wait
    for each other, and an oversubscribed core stalls them all (``ARTSEG_THREADS=1``).
    """
    env = os.environ.get("ARTSEG_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, cpus // max(1, workers))


def _pool_init(model_path: str, sha: str, device: str, threads: int) -> None:
    """Process-pool worker start: ignore Ctrl-C (the parent handles it), set torch threads, load the model."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_threads(threads)
    _WORKER["current"] = (model_path, sha, device)
    _cached_model(model_path, sha, device)


def _pool_run(path: str, out_dir: str, name: str, options: PredictOptions) -> dict:
    model = _cached_model(*_WORKER["current"])
    return process_file(model, path, out_dir, options, name=name)


def _dask_run(model_path: str, sha: str, device: str, path: str, out_dir: str, name: str,
              options: dict) -> dict:
    """The Dask task: the model comes from the worker process's cache (loaded on the first task)."""
    model = _cached_model(model_path, sha, device)
    return process_file(model, path, out_dir, PredictOptions(**options), name=name)


def _dask_worker_threads(threads_on_host: int) -> int:
    """Set torch threads in a Dask worker process: its host's CPUs shared by all worker threads on the host
    (or the worker's own ``ARTSEG_THREADS``)."""
    from artseg_core.nets.accel import available_cpus

    return _set_threads(threads_per_worker(threads_on_host, available_cpus()))


# ----------------------------------------------------------------------------------------------- backends

@dataclass
class _Ctx:
    out: Path
    model_path: str
    sha: str
    device: str
    options: PredictOptions
    workers: int
    prefetch: int
    scheduler: str | None = None
    dask_local: bool = False
    cpus: int = 1


def _job(ctx: _Ctx, t: ImageTask) -> tuple[str, str, str]:
    return t.path, str(_task_out_dir(ctx.out, t)), _output_name(t)


def _run_inprocess(ctx: _Ctx, todo: list[ImageTask]) -> Iterator[tuple[ImageTask, dict]]:
    """One worker in this process: the model is loaded once; files are prefetched by a reader thread, and two
    images are in flight on two threads, so that one image's file reading and output writing (fsync) overlap
    with the other's compute. Each image still gets the worker's torch threads (torch releases the GIL)."""
    import torch
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    before = torch.get_num_threads()
    _set_threads(threads_per_worker(1, ctx.cpus))
    model = _cached_model(ctx.model_path, ctx.sha, ctx.device)
    pf = _Prefetcher([t.path for t in todo], ctx.prefetch)
    ex = ThreadPoolExecutor(max_workers=_INPROCESS_OVERLAP, thread_name_prefix="artseg-image")
    pending: dict = {}
    it = iter(todo)
    try:
        def refill():
            while len(pending) < _INPROCESS_OVERLAP:
                t = next(it, None)
                if t is None:
                    return
                pf.consumed()
                path, out_dir, name = _job(ctx, t)
                pending[ex.submit(process_file, model, path, out_dir, ctx.options, name=name)] = t

        refill()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in sorted(done, key=lambda f: pending[f].index):
                t = pending.pop(f)
                yield t, f.result()
            refill()
    finally:
        pf.close()
        ex.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(before)


def _worker_context():
    """Start method for worker processes: a fork server that has imported torch and the engine once (workers are
    forked from it in milliseconds instead of each importing torch for ~1.5 s), else ``spawn``.

    Never plain ``fork``: this process may already run torch's OpenMP threads, which do not survive a fork. The
    fork server imports torch but runs no torch operation, so its children start clean.
    """
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "artseg_core.predict.model", "artseg_core.predict.files"])
        return ctx
    return mp.get_context("spawn")


def _run_pool(ctx: _Ctx, todo: list[ImageTask]) -> Iterator[tuple[ImageTask, dict]]:
    """``workers`` worker processes, each loading the model once; at most two images queued per worker."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = threads_per_worker(ctx.workers, ctx.cpus)
    ex = ProcessPoolExecutor(max_workers=ctx.workers, mp_context=_worker_context(), initializer=_pool_init,
                             initargs=(ctx.model_path, ctx.sha, ctx.device, threads))
    pf = _Prefetcher([t.path for t in todo], ctx.prefetch + 2 * ctx.workers)
    pending: dict = {}
    it = iter(todo)
    try:
        def refill():
            while len(pending) < 2 * ctx.workers:
                t = next(it, None)
                if t is None:
                    return
                pf.consumed()
                pending[ex.submit(_pool_run, *_job(ctx, t), ctx.options)] = t

        refill()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in sorted(done, key=lambda f: pending[f].index):
                t = pending.pop(f)
                try:
                    row = f.result()
                except BrokenProcessPool as e:
                    raise BatchError(f"a worker process died ({e}); the journal keeps what was finished - "
                                     f"rerun the same command to continue") from None
                except Exception as e:  # process_file never raises; anything here is a transport problem
                    row = error_row(t.path, f"{t.path}: worker error: {type(e).__name__}: {e}")
                yield t, row
            refill()
    finally:
        pf.close()
        ex.shutdown(wait=True, cancel_futures=True)


def _run_dask(ctx: _Ctx, todo: list[ImageTask]) -> Iterator[tuple[ImageTask, dict]]:
    """The same tasks on Dask distributed: an existing scheduler (``tcp://host:port``) or a local cluster.

    Workers must see the model file, the images and the output folder at the same paths (shared filesystem).
    The model is loaded once per worker process (cached); torch threads per worker = the host's CPUs divided by
    the worker threads on that host.
    """
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise BatchError("Dask distributed is not installed: pip install 'artseg[dask]'") from None
    cluster = None
    if ctx.scheduler:
        try:
            client = Client(ctx.scheduler, timeout="30s")
        except OSError as e:
            raise BatchError(f"cannot reach the Dask scheduler {ctx.scheduler}: {e}") from None
    else:
        cluster = LocalCluster(n_workers=ctx.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               protocol="tcp", dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    pending: dict = {}
    try:
        info = client.scheduler_info()["workers"]
        if not info:
            client.wait_for_workers(1, timeout=60)
            info = client.scheduler_info()["workers"]
        per_host: dict[str, int] = {}
        for addr, w in info.items():
            per_host[w["host"]] = per_host.get(w["host"], 0) + int(w.get("nthreads", 1))
        for addr, w in info.items():
            client.run(_dask_worker_threads, per_host[w["host"]], workers=[addr])
        slots = 2 * sum(int(w.get("nthreads", 1)) for w in info.values())
        logger.info("dask: %d workers, %d threads (%s)", len(info), slots // 2, client.scheduler.address)
        opts = ctx.options.to_dict()
        it = iter(todo)
        ac = as_completed()

        def submit_more():
            while len(pending) < slots:
                t = next(it, None)
                if t is None:
                    return
                path, out_dir, name = _job(ctx, t)
                fut = client.submit(_dask_run, ctx.model_path, ctx.sha, ctx.device, path, out_dir, name, opts,
                                    pure=False, retries=0)
                pending[fut.key] = (fut, t)
                ac.add(fut)

        submit_more()
        for fut in ac:
            _, t = pending.pop(fut.key)
            try:
                row = fut.result()
            except Exception as e:
                row = error_row(t.path, f"{t.path}: dask task failed: {type(e).__name__}: {e}")
            fut.release()
            yield t, row
            submit_more()
    finally:
        for fut, _ in pending.values():
            fut.cancel()
        client.close()
        if cluster is not None:
            cluster.close()


# ----------------------------------------------------------------------------------------------- the run


def plan_batch(plate, out_dir, *, channel: str | None = None, name_regex: str | None = None,
               retry_failed: bool = True) -> tuple[Manifest, dict[str, dict], list[ImageTask]]:
    """The plate's images, the journal records already in ``out_dir`` and the images still to do."""
    out = Path(out_dir)
    man = build_manifest(plate, channel=channel, name_regex=name_regex, exclude=out)
    done = read_journal(out / JOURNAL)
    todo = [t for t in man.tasks
            if t.key not in done or (retry_failed and done[t.key].get("status") != "ok")]
    return man, done, todo


def _check_settings(out: Path, settings: dict) -> dict:
    path = out / SETTINGS
    if not path.exists():
        return {**settings, "runs": []}
    try:
        old = json.loads(path.read_text())
    except ValueError as e:
        raise BatchError(f"{path}: unreadable run settings ({e})") from None
    diff = [k for k in _FIXED if old.get(k) != settings.get(k)]
    if diff and (out / JOURNAL).exists() and read_journal(out / JOURNAL):
        raise BatchError(f"{out} holds results of a run with different {', '.join(diff)} "
                         f"(was {', '.join(f'{k}={old.get(k)!r}' for k in diff)}); resuming would mix two "
                         f"analyses - use a new --out folder, or delete {out / JOURNAL} to start over")
    return {**settings, "runs": old.get("runs", [])}


def _setup_log(path: Path) -> logging.Handler:
    h = logging.FileHandler(path, encoding="utf-8")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    h.setLevel(logging.INFO)
    for name in ("artseg.batch", "artseg.predict"):
        lg = logging.getLogger(name)
        lg.addHandler(h)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    return h


def _drop_log(h: logging.Handler) -> None:
    for name in ("artseg.batch", "artseg.predict"):
        logging.getLogger(name).removeHandler(h)
    h.close()


def run_batch(plate, model_path, out_dir, *, workers: int = 1, scheduler: str | None = None,
              dask_local: bool = False, options: PredictOptions | None = None, channel: str | None = None,
              name_regex: str | None = None, max_failures: int | None = None, dry_run: bool = False,
              progress: bool = True, log: str | os.PathLike | None = None, retry_failed: bool = True,
              report: bool = True, device: str = "cpu", prefetch: int = 4,
              echo: Callable[[str], None] | None = None) -> BatchSummary:
    """Run the ArtSeg engine over every image of a plate; resumable and parallel.

    Parameters
    ----------
    plate : str or path-like
        Folder (recursive), glob pattern, or CSV manifest (plain ``path`` column or CellProfiler LoadData).
    model_path : path-like
        An ``.artseg`` model file.
    out_dir : path-like
        Output folder; a rerun into the same folder resumes (same model and options required).
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
        Stop once this many images have failed in this run (exit code 3); None never stops.
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
        Torch device for the workers ("cpu", "cuda", "auto").
    prefetch : int
        Files read ahead into the page cache.
    echo : callable, optional
        Receives the dry-run listing lines (default: print to stdout).

    Returns
    -------
    BatchSummary
        Counts, timings, paths and ``exit_code``.

    Raises
    ------
    ManifestError, ModelFileError, BatchError
        Bad plate input, bad model file, settings that differ from the run already in ``out_dir``, a dead
        worker process or an unreachable scheduler.
    KeyboardInterrupt
        After the tables of what finished have been written.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    opts = options or PredictOptions()
    if workers < 1:
        raise BatchError(f"--workers must be >= 1, got {workers}")
    if max_failures is not None and max_failures < 1:
        raise BatchError(f"--max-failures must be >= 1, got {max_failures}")
    if out.exists() and not out.is_dir():
        raise BatchError(f"{out}: exists and is not a folder")
    model_path = Path(model_path)
    if not model_path.is_file():
        from artseg_core.io.modelfile import ModelFileError

        raise ModelFileError(model_path, "no such model file")
    man, done, todo = plan_batch(plate, out, channel=channel, name_regex=name_regex, retry_failed=retry_failed)
    keys = {t.key for t in man.tasks}
    n_before = sum(1 for k in done if k in keys)
    summary = BatchSummary(out_dir=out, n_images=len(man), n_done_before=n_before, n_todo=len(todo),
                           notes=list(man.notes))
    if dry_run:
        say = echo or print
        say(f"plate {man.source} ({man.kind}, root {man.root}): {len(man)} images"
            + (f", channel {man.channel}" if man.channel else "")
            + f"; {n_before} already done in {out}; {len(todo)} to process")
        for note in man.notes:
            say(f"note: {note}")
        for t in todo:
            n = t.name
            say(f"{n.plate}\t{n.well or '-'}\tf{n.field if n.field is not None else '-'}\t"
                f"{n.channel or '-'}\t{t.path}")
        summary.dry_run = True
        return summary

    out.mkdir(parents=True, exist_ok=True)
    lock = run_lock(out)
    try:
        lock.acquire()
    except FolderBusyError as e:
        raise BatchError(str(e)) from None
    log_path = Path(log) if log is not None else out / LOG
    handler = _setup_log(log_path)
    summary.log_file = log_path
    try:
        from artseg_core.nets.cpus import available_cpus  # not fastpath: the parent of worker processes needs no torch
        from artseg_core.io.modelfile import load_model_file

        manifest, _ = load_model_file(model_path)  # validates the file before any worker starts
        sha = _sha256(model_path)
        settings = _check_settings(out, {
            "artseg_version": _version(), "model": str(model_path.resolve()), "model_sha256": sha,
            "model_thresholds": manifest.get("thresholds", {}),
            "quality_thresholds": manifest.get("quality_thresholds", {}),
            "model_profile": (manifest.get("profile") or {}).get("name", ""),
            "options": opts.to_dict(), "channel": man.channel, "name_regex": name_regex,
            "plate": str(plate), "plate_root": man.root, "plate_kind": man.kind, "n_images": len(man)})
        backend = ("dask " + scheduler if scheduler else f"dask-local x{workers}" if dask_local
                   else f"local x{workers}" if workers > 1 else "in-process")
        run_info = {"started": _now(), "host": socket.gethostname(), "python": platform.python_version(),
                    "backend": backend, "workers": workers, "todo": len(todo), "done_before": n_before}
        settings["runs"].append(run_info)
        _write_settings(out, settings)
        stale = _remove_stale_temps(out / OUTPUTS)
        logger.info("run start: plate %s (%d images, %d done, %d to do), model %s (sha256 %s), backend %s%s",
                    plate, len(man), n_before, len(todo), model_path, sha[:12], backend,
                    f", removed {stale} stale temporary files" if stale else "")
        for note in man.notes:
            logger.info("note: %s", note)
        ctx = _Ctx(out=out, model_path=str(model_path.resolve()), sha=sha, device=device, options=opts,
                   workers=workers, prefetch=prefetch, scheduler=scheduler, dask_local=dask_local,
                   cpus=available_cpus())
        summary.backend = backend
        if scheduler or dask_local:
            gen = _run_dask(ctx, todo)
        elif workers > 1:
            gen = _run_pool(ctx, todo)
        else:
            gen = _run_inprocess(ctx, todo)
        t_run = time.perf_counter()
        t_first = t_last = None
        bar = _progress(len(todo), progress)
        failed = 0
        try:
            with Journal(out / JOURNAL) as journal:
                if journal.torn_bytes:
                    logger.warning("journal: dropped a torn last line (%d bytes) from an interrupted run",
                                   journal.torn_bytes)
                try:
                    for t, row in gen:
                        t_last = time.perf_counter()
                        t_first = t_first or t_last
                        full = _full_row(t, row, opts)
                        journal.append({"key": t.key, "index": t.index, "status": full.get("status", "error"),
                                        "row": full, "t": _now()})
                        summary.n_processed += 1
                        if full.get("status") != "ok":
                            failed += 1
                            logger.error("failed: %s: %s", t.key, full.get("error", ""))
                        bar.update(1)
                        if failed:
                            bar.set_postfix(failed=failed, refresh=False)
                        if max_failures is not None and failed >= max_failures:
                            summary.stopped_early = True
                            logger.error("stopping: %d failures reached --max-failures %d", failed,
                                         max_failures)
                            break
                finally:
                    gen.close()
        except KeyboardInterrupt:
            summary.interrupted = True
            logger.warning("interrupted by the user after %d images; rerun the same command to continue",
                           summary.n_processed)
        finally:
            bar.close()
        elapsed = time.perf_counter() - t_run
        summary.n_failed_this_run = failed
        summary.elapsed_s = time.perf_counter() - t_start
        summary.images_per_s = summary.n_processed / elapsed if elapsed > 0 else 0.0
        if summary.n_processed > 1 and t_last > t_first:  # after the workers' start-up and first image
            summary.steady_images_per_s = (summary.n_processed - 1) / (t_last - t_first)
        rows, summary.results_csv, summary.wells_csv = finalize(out, man)
        summary.n_ok = sum(1 for r in rows if r.get("status") == "ok")
        summary.n_failed = len(rows) - summary.n_ok
        summary.n_flagged = sum(1 for r in rows if r.get("status") == "ok" and r.get("flagged") in (True, "True"))
        run_info.update(finished=_now(), processed=summary.n_processed, failed=failed,
                        images_per_s=round(summary.images_per_s, 4), stopped_early=summary.stopped_early,
                        interrupted=summary.interrupted)
        _write_settings(out, settings)
        if report and not summary.interrupted:
            from artseg_core.batch.report import write_report

            try:
                summary.report = write_report(out)
            except Exception as e:  # the tables are the product; a report failure must not hide them
                logger.exception("report failed")
                summary.notes.append(f"report failed: {type(e).__name__}: {e}")
        logger.info("run end: %s", summary.line())
        if summary.interrupted:
            raise KeyboardInterrupt
        return summary
    finally:
        _drop_log(handler)
        lock.release()


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
