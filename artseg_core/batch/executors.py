"""Where a plate's images are computed: in this process, in local worker processes, or on Dask distributed.

Every executor takes the run's :class:`ExecContext` and the list of :class:`Job` s and yields ``(job, row)`` as
images finish (``row`` is :func:`artseg_core.predict.files.process_file`'s CSV row; a failure is a row with
``status="error"``, never an exception). The runner decides what to do and records what comes back.

Worker processes end with the run: each one watches the process that started the run and exits when it is gone
(also after ``kill -9``), and on an interrupt (Ctrl-C, SIGTERM) the pool's processes are stopped at once. A worker
that dies (killed, out of memory, a crash in a library) costs no more than its images: they are run again, one at
a time, on a new worker, and an image that kills its worker a second time is recorded as failed with the reason.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from artseg_core.batch.layout import OUTPUTS
from artseg_core.batch.manifest import ImageTask
from artseg_core.batch.platenames import image_stem
from artseg_core.predict.files import PredictOptions, error_row, process_file

__all__ = ["Job", "ExecContext", "ExecutorError", "ExecutorSetupError", "executor_for", "threads_per_worker",
           "task_out_dir", "output_name", "MAX_WORKER_DEATHS_IN_A_ROW"]

logger = logging.getLogger("artseg.batch")

#: images in flight in the in-process worker (one computing while the other reads or writes)
_INPROCESS_OVERLAP = 2
#: worker deaths with no image finished in between after which the run stops (the machine, not an image, is wrong)
MAX_WORKER_DEATHS_IN_A_ROW = 5


class ExecutorError(RuntimeError):
    """The executor cannot go on (worker processes keep dying)."""


class ExecutorSetupError(ExecutorError):
    """The executor cannot start (Dask not installed, an unreachable scheduler): nothing was computed."""


@dataclass(frozen=True)
class Job:
    """One image to compute, with the outputs to write for it.

    ``options`` is the run's options, or, for an image done before whose run now asks for more outputs, only the
    new ones. ``failed_before`` marks an image whose last attempt failed (a failure again is not a new one).
    """

    task: ImageTask
    options: PredictOptions
    failed_before: bool = False


@dataclass
class ExecContext:
    """What every executor needs to know about the run."""

    out: Path
    model_path: str
    device: str
    workers: int = 1
    prefetch: int = 4
    scheduler: str | None = None
    dask_local: bool = False
    cpus: int = 1


def task_out_dir(out: Path, task: ImageTask) -> Path:
    """The folder that receives ``task``'s output files."""
    return out / OUTPUTS / task.out_subdir if task.out_subdir else out / OUTPUTS


def output_name(task: ImageTask) -> str:
    """The name stem of ``task``'s output files."""
    return image_stem(PurePosixPath(task.key).name)


def _args(ctx: ExecContext, job: Job) -> tuple[str, str, str]:
    return job.task.path, str(task_out_dir(ctx.out, job.task)), output_name(job.task)


def threads_per_worker(workers: int, cpus: int) -> int:
    """Torch threads for each of ``workers`` workers: ``ARTSEG_THREADS`` when set, else ``cpus // workers``.

    On a machine shared with other jobs fewer threads than cores are often faster: torch's OpenMP threads wait
    for each other, and an oversubscribed core stalls them all (``ARTSEG_THREADS=1``).
    """
    env = os.environ.get("ARTSEG_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, cpus // max(1, workers))


def _set_threads(n: int | None) -> int:
    from artseg_core.nets.accel import set_threads

    return set_threads(n)


def _model(model_path: str, device: str):
    from artseg_core.predict.cache import load_model_cached

    return load_model_cached(model_path, device)


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
        if self.depth and paths:
            threading.Thread(target=self._run, name="artseg-prefetch", daemon=True).start()

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


# ----------------------------------------------------------------------------------------------- in-process

def run_inprocess(ctx: ExecContext, jobs: list[Job]) -> Iterator[tuple[Job, dict]]:
    """One worker in this process: the model is loaded once; files are prefetched by a reader thread, and two
    images are in flight on two threads, so that one image's file reading and output writing (fsync) overlap
    with the other's compute. Each image still gets the worker's torch threads (torch releases the GIL)."""
    import torch
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    before = torch.get_num_threads()
    _set_threads(threads_per_worker(1, ctx.cpus))
    model = _model(ctx.model_path, ctx.device)
    pf = _Prefetcher([j.task.path for j in jobs], ctx.prefetch)
    ex = ThreadPoolExecutor(max_workers=_INPROCESS_OVERLAP, thread_name_prefix="artseg-image")
    pending: dict = {}
    it = iter(jobs)
    try:
        def refill():
            while len(pending) < _INPROCESS_OVERLAP:
                j = next(it, None)
                if j is None:
                    return
                pf.consumed()
                path, out_dir, name = _args(ctx, j)
                pending[ex.submit(process_file, model, path, out_dir, j.options, name=name)] = j

        refill()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in sorted(done, key=lambda f: pending[f].task.index):
                j = pending.pop(f)
                yield j, f.result()
            refill()
    finally:
        pf.close()
        ex.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- worker processes

_WORKER: dict = {}


def _watch_parent(pid: int) -> None:
    """Exit this worker as soon as process ``pid`` (the run) has ended - also when it was killed with SIGKILL and
    had no chance to stop its workers. The fork server this worker was forked from is stopped too."""
    import select
    import time

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])  # readable once the process has terminated
    else:  # pragma: no cover - no pidfd (old kernel, macOS): poll
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
            time.sleep(0.5)
    ppid = os.getppid()
    if ppid not in (1, pid):  # our parent is the run's fork server: it has no one left to serve
        try:
            os.kill(ppid, 15)
        except OSError:
            pass
    os._exit(1)


def _pool_init(model_path: str, device: str, threads: int, parent_pid: int) -> None:
    """Process-pool worker start: watch the run's process, ignore Ctrl-C (the parent handles it), set torch
    threads, load the model."""
    import signal

    threading.Thread(target=_watch_parent, args=(parent_pid,), name="artseg-watch-parent", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _set_threads(threads)
    _WORKER["current"] = (model_path, device)
    _model(model_path, device)


def _pool_run(path: str, out_dir: str, name: str, options: PredictOptions) -> dict:
    model = _model(*_WORKER["current"])
    return process_file(model, path, out_dir, options, name=name)


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


def _stop_pool(ex, now: bool) -> None:
    """Shut a process pool down; ``now``: stop its processes at once (an interrupt, a broken pool)."""
    if now:
        for p in list(getattr(ex, "_processes", {}).values()):
            try:
                p.terminate()
            except Exception:  # noqa: BLE001 - already gone
                pass
    ex.shutdown(wait=True, cancel_futures=True)


def run_pool(ctx: ExecContext, jobs: list[Job]) -> Iterator[tuple[Job, dict]]:
    """``workers`` worker processes, each loading the model once; at most two images queued per worker.

    When a worker dies, every image that was in flight is run again alone on a fresh pool: an image that breaks
    its worker then too is the cause and is recorded as failed ("the worker process died ..."); the others go on
    as usual. The run stops (:class:`ExecutorError`) only after :data:`MAX_WORKER_DEATHS_IN_A_ROW` deaths with no
    image finished in between.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = threads_per_worker(ctx.workers, ctx.cpus)
    me = os.getpid()

    def new_pool():
        return ProcessPoolExecutor(max_workers=ctx.workers, mp_context=_worker_context(), initializer=_pool_init,
                                   initargs=(ctx.model_path, ctx.device, threads, me))

    ex = new_pool()
    pf = _Prefetcher([j.task.path for j in jobs], ctx.prefetch + 2 * ctx.workers)
    queue = deque(jobs)
    suspects: deque[Job] = deque()  # in flight when a worker died: each is run again alone
    pending: dict = {}
    deaths_in_a_row = 0
    clean_exit = False

    def submit(j: Job, alone: bool) -> bool:
        try:
            pending[ex.submit(_pool_run, *_args(ctx, j), j.options)] = (j, alone)
            return True
        except BrokenProcessPool:  # a worker died between two results: the job was never started
            (suspects if alone else queue).appendleft(j)
            return False

    try:
        while queue or suspects or pending:
            broken = False
            if suspects:
                if not pending:
                    broken = not submit(suspects.popleft(), True)
            else:
                while len(pending) < 2 * ctx.workers and queue and not broken:
                    j = queue.popleft()
                    pf.consumed()
                    broken = not submit(j, False)
            lost: list[tuple[Job, bool]] = []
            if pending and not broken:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in sorted(done, key=lambda f: pending[f][0].task.index):
                    j, alone = pending.pop(f)
                    try:
                        row = f.result()
                    except BrokenProcessPool:
                        lost.append((j, alone))
                        continue
                    except Exception as e:  # process_file never raises; anything here is a transport problem
                        row = error_row(j.task.path, f"{j.task.path}: worker error: {type(e).__name__}: {e}")
                    deaths_in_a_row = 0
                    yield j, row
            if not (lost or broken):
                continue
            lost += list(pending.values())  # the pool is broken: every image in flight is lost
            pending.clear()
            _stop_pool(ex, now=True)
            deaths_in_a_row += 1
            if deaths_in_a_row >= MAX_WORKER_DEATHS_IN_A_ROW:
                raise ExecutorError(f"worker processes died {deaths_in_a_row} times in a row without finishing an "
                                    f"image (out of memory? see the system log); the journal keeps what was "
                                    f"finished - rerun the same command to continue")
            for j, alone in sorted(lost, key=lambda x: x[0].task.index):
                if alone:
                    logger.error("failed: %s: the worker process died while processing it, twice", j.task.key)
                    deaths_in_a_row = 0
                    yield j, error_row(j.task.path, f"{j.task.path}: the worker process died while processing this "
                                                    f"image, twice (out of memory, or a crash in a library)")
                else:
                    suspects.append(j)
            logger.warning("a worker process died; %d image(s) in flight are run again, one at a time, on a new "
                           "worker%s", len(suspects), (": " + ", ".join(j.task.key for j in suspects)) if suspects
                           else "")
            ex = new_pool()
        clean_exit = True
    finally:
        pf.close()
        _stop_pool(ex, now=not clean_exit)


# ----------------------------------------------------------------------------------------------- Dask

def _dask_run(model_path: str, device: str, path: str, out_dir: str, name: str, options: dict) -> dict:
    """The Dask task: the model comes from the worker process's cache (loaded on the first task)."""
    return process_file(_model(model_path, device), path, out_dir, PredictOptions(**options), name=name)


def _dask_worker_threads(threads_on_host: int) -> int:
    """Set torch threads in a Dask worker process: its host's CPUs shared by all worker threads on the host
    (or the worker's own ``ARTSEG_THREADS``)."""
    from artseg_core.nets.accel import available_cpus

    return _set_threads(threads_per_worker(threads_on_host, available_cpus()))


def run_dask(ctx: ExecContext, jobs: list[Job]) -> Iterator[tuple[Job, dict]]:
    """The same tasks on Dask distributed: an existing scheduler (``tcp://host:port``) or a local cluster.

    Workers must see the model file, the images and the output folder at the same paths (shared filesystem).
    The model is loaded once per worker process (cached); torch threads per worker = the host's CPUs divided by
    the worker threads on that host.
    """
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ExecutorSetupError("Dask distributed is not installed: pip install 'artseg[dask]'") from None
    cluster = None
    if ctx.scheduler:
        try:
            client = Client(ctx.scheduler, timeout="30s")
        except OSError as e:
            raise ExecutorSetupError(f"cannot reach the Dask scheduler {ctx.scheduler}: {e}") from None
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
        it = iter(jobs)
        ac = as_completed()

        def submit_more():
            while len(pending) < slots:
                j = next(it, None)
                if j is None:
                    return
                path, out_dir, name = _args(ctx, j)
                fut = client.submit(_dask_run, ctx.model_path, ctx.device, path, out_dir, name, j.options.to_dict(),
                                    pure=False, retries=1)
                pending[fut.key] = (fut, j)
                ac.add(fut)

        submit_more()
        for fut in ac:
            _, j = pending.pop(fut.key)
            try:
                row = fut.result()
            except Exception as e:
                row = error_row(j.task.path, f"{j.task.path}: dask task failed: {type(e).__name__}: {e}")
            fut.release()
            yield j, row
            submit_more()
    finally:
        for fut, _ in pending.values():
            fut.cancel()
        client.close()
        if cluster is not None:
            cluster.close()


def executor_for(ctx: ExecContext) -> tuple[str, Callable[[ExecContext, list[Job]], Iterator[tuple[Job, dict]]]]:
    """The executor the context asks for and its name for the log (``in-process``, ``local x4``, ``dask ...``)."""
    if ctx.scheduler:
        return "dask " + ctx.scheduler, run_dask
    if ctx.dask_local:
        return f"dask-local x{ctx.workers}", run_dask
    if ctx.workers > 1:
        return f"local x{ctx.workers}", run_pool
    return "in-process", run_inprocess
