"""Run a CellProfiler pipeline over a plate in shards of image sets, in parallel, and merge the exports.

How it works
------------
1. The plate's files become one CellProfiler file list (``--file-list``), exactly the files ``-i PLATE`` would
   add (all files under the folder), or the files of a glob / list file.
2. The image sets are counted the way ``cellprofiler -c -r`` itself finds them: a helper process loads the
   pipeline with cellprofiler_core, reads the file list and calls ``Pipeline.prepare_run`` (the step the headless
   run does before it applies ``-f``/``-l``). It reports every image number and its group number.
3. The image numbers are cut into contiguous ranges, only at group boundaries (a group - e.g. one illumination
   correction over a plate - is never split). Each range runs as
   ``cellprofiler -c -r -p PIPE --file-list L -i IN -o SHARD -f FIRST -l LAST --plugins-directory P`` on a
   local worker or a Dask worker. CellProfiler keeps the run-wide image numbers in a range run, so rows from
   different shards never clash.
4. Each shard writes into a temporary folder renamed when the run succeeded, and a journal line records it:
   a rerun only runs the shards that are missing.
5. The shards' exports are merged into ``OUT``: per-image and per-object CSV tables are concatenated in image
   number order (byte for byte after the header, so the merged tables equal those of a single run apart from
   the ``ExecutionTime_*`` timings); ``Experiment.csv`` (key/value) comes from the first shard; any other file
   (e.g. from SaveImages) is moved to the same relative path.
6. ``OUT/report.html`` is written from the merged per-image table (:mod:`.report`, :mod:`.cpresults`).
"""
from __future__ import annotations

import argparse
import glob as _glob
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from artseg_core.batch.layout import JOURNAL, PIPELINE_SETTINGS, PIPELINE_WORK

__all__ = ["ImageSets", "count_image_sets", "plan_shards", "run_pipeline_sharded", "merge_shard_outputs",
           "CPSummary", "CellProfilerError", "plate_file_list", "cellprofiler_command"]

log = logging.getLogger("artseg.batch.cp")
WORK = PIPELINE_WORK


class CellProfilerError(RuntimeError):
    """CellProfiler could not count or run the image sets (message has the tail of its output)."""


@dataclass
class ImageSets:
    """The image sets a pipeline makes of a file list: image numbers and their group numbers."""

    image_numbers: list[int]
    group_numbers: list[int]
    grouping_keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image_numbers)


@dataclass
class CPSummary:
    """What a sharded CellProfiler run did."""

    out_dir: Path
    n_image_sets: int = 0
    shards: list[tuple[int, int]] = field(default_factory=list)
    n_done_before: int = 0
    n_run: int = 0
    failed: list[str] = field(default_factory=list)
    merged: list[Path] = field(default_factory=list)
    elapsed_s: float = 0.0
    dry_run: bool = False
    report: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 all shards ran and were merged; 1 a shard failed (nothing merged)."""
        return 1 if self.failed else 0

    def line(self) -> str:
        if self.dry_run:
            return (f"dry run: {self.n_image_sets} image sets in {len(self.shards)} shards "
                    f"({self.n_done_before} already done) -> {self.out_dir}")
        s = (f"{self.n_image_sets} image sets in {len(self.shards)} shards ({self.n_run} run now, "
             f"{self.n_done_before} before) in {self.elapsed_s:.1f} s")
        if self.failed:
            s += f"; FAILED shards: {', '.join(self.failed)}"
        else:
            s += f"; merged {len(self.merged)} files"
        return s + f" -> {self.out_dir}"


# ------------------------------------------------------------------------------------------- inputs


def cellprofiler_command(cellprofiler: str | os.PathLike | None = None) -> list[str]:
    """The command that starts CellProfiler: the given executable, else ``python -m cellprofiler`` of this
    Python (the environment ArtSeg is installed in)."""
    if cellprofiler:
        return [str(cellprofiler)]
    return [sys.executable, "-m", "cellprofiler"]


def plate_file_list(plate: str | os.PathLike, exclude: str | os.PathLike | None = None) -> tuple[list[str], Path]:
    """The files CellProfiler should see, and the default input folder.

    A folder gives every file below it (as ``cellprofiler -i FOLDER`` would add them; the pipeline's Images
    filter decides which are images), a glob its matches, a ``.txt`` file its lines (one path per line).
    """
    p = Path(plate)
    excl = Path(exclude).resolve() if exclude is not None else None

    def keep(f: Path) -> bool:
        if not f.is_file():
            return False
        if excl is not None:
            try:
                f.resolve().relative_to(excl)
                return False
            except ValueError:
                pass
        return True

    if p.is_dir():
        files = sorted(str(f.resolve()) for f in p.rglob("*") if keep(f))
        root = p.resolve()
    elif p.is_file() and p.suffix.lower() == ".txt":
        lines = [x.strip() for x in p.read_text().splitlines() if x.strip() and not x.startswith("#")]
        files = [str((p.parent / x).resolve()) if not Path(x).is_absolute() else x for x in lines]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise CellProfilerError(f"{p}: listed file(s) not found: {', '.join(missing[:3])}")
        root = Path(os.path.commonpath([str(Path(f).parent) for f in files])) if files else p.parent
    elif _glob.has_magic(str(plate)):
        files = sorted(str(Path(f).resolve()) for f in _glob.glob(str(plate), recursive=True) if keep(Path(f)))
        root = Path(os.path.commonpath([str(Path(f).parent) for f in files])) if files else Path(".")
    else:
        raise CellProfilerError(f"{plate}: no such folder, glob pattern or .txt file list")
    if not files:
        raise CellProfilerError(f"{plate}: no files for CellProfiler")
    return files, root


# ------------------------------------------------------------------------------------------- counting


def _count_main(argv: list[str]) -> int:
    """``python -m artseg_core.batch.cpshard count ...``: print the image sets as JSON (runs in its own
    process: the JVM can be started only once per process)."""
    ap = argparse.ArgumentParser(prog="cpshard count")
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--file-list", required=True)
    ap.add_argument("--plugins-directory")
    ap.add_argument("--input-dir")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from cellprofiler_core.preferences import (set_default_image_directory, set_headless,
                                               set_plugin_directory)

    set_headless()
    if a.plugins_directory:
        set_plugin_directory(a.plugins_directory, globally=False)
    if a.input_dir:
        set_default_image_directory(a.input_dir)
    from cellprofiler_core.constants.measurement import GROUP_NUMBER, IMAGE
    from cellprofiler_core.image import ImageSetList
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.utilities.java import start_java, stop_java
    from cellprofiler_core.workspace import Workspace

    start_java()
    try:
        pipeline = Pipeline()
        errors = []
        pipeline.add_listener(lambda _p, ev: errors.append(ev) if "LoadException" in type(ev).__name__ else None)
        pipeline.load(a.pipeline)
        if errors:
            print(json.dumps({"error": f"cannot load {a.pipeline}: "
                                       + "; ".join(str(getattr(e, 'error', e)) for e in errors)}))
            return 2
        pipeline.read_file_list(a.file_list, add_undo=False)
        _needs_headless_extraction(pipeline)
        m = Measurements()
        ws = Workspace(pipeline, None, None, None, m, ImageSetList())
        if not pipeline.prepare_run(ws):
            print(json.dumps({"error": "prepare_run failed (see CellProfiler's messages above)"}))
            return 2
        numbers = [int(x) for x in m.get_image_numbers()]
        keys, groupings = pipeline.get_groupings(ws)
        groups = {}
        for gn, (_k, nums) in enumerate(groupings, start=1):
            for n in nums:
                groups[int(n)] = gn
        if not groups and numbers and m.has_feature(IMAGE, GROUP_NUMBER):
            groups = {n: int(m[IMAGE, GROUP_NUMBER, n]) for n in numbers}
        print("ARTSEG-IMAGE-SETS " + json.dumps({"image_numbers": numbers,
                                                 "group_numbers": [groups.get(n, 1) for n in numbers],
                                                 "grouping_keys": list(keys or [])}))
        m.close()
        return 0
    finally:
        stop_java()


def _needs_headless_extraction(pipeline) -> None:
    """What the headless run does before prepare_run when Metadata extracts from image headers."""
    try:
        from cellprofiler_core.constants.modules.metadata import X_AUTOMATIC_EXTRACTION
        from cellprofiler_core.modules.metadata import Metadata
    except ImportError:  # pragma: no cover - other CellProfiler versions
        return
    mods = pipeline.modules()
    if len(mods) > 1 and type(mods[1]) is Metadata and mods[1].wants_metadata.value:
        if any(g.extraction_method.value == X_AUTOMATIC_EXTRACTION for g in mods[1].extraction_methods):
            pipeline.set_needs_headless_extraction(True)


def count_image_sets(pipeline: str | os.PathLike, file_list: str | os.PathLike, *,
                     plugins_directory: str | os.PathLike | None = None, input_dir: str | os.PathLike | None = None,
                     timeout: float = 600) -> ImageSets:
    """Count the image sets (and their groups) a pipeline makes of a file list, as ``cellprofiler -c -r`` would.

    Runs :func:`_count_main` in a separate Python process (cellprofiler_core and a JVM).

    Raises
    ------
    CellProfilerError
        The pipeline cannot be loaded or prepared (message has the tail of CellProfiler's output).
    """
    cmd = [sys.executable, "-m", "artseg_core.batch.cpshard", "count", "--pipeline", str(pipeline),
           "--file-list", str(file_list)]
    if plugins_directory:
        cmd += ["--plugins-directory", str(plugins_directory)]
    if input_dir:
        cmd += ["--input-dir", str(input_dir)]
    env = _child_env()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise CellProfilerError(f"{pipeline}: counting image sets took longer than {timeout:.0f} s") from None
    for line in r.stdout.splitlines():
        if line.startswith("ARTSEG-IMAGE-SETS "):
            d = json.loads(line.split(" ", 1)[1])
            return ImageSets(d["image_numbers"], d["group_numbers"], d.get("grouping_keys", []))
    msg = ""
    for line in r.stdout.splitlines():
        if line.startswith("{") and '"error"' in line:
            msg = json.loads(line)["error"]
    tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
    raise CellProfilerError(f"{pipeline}: cannot count image sets (exit {r.returncode}) {msg}\n{tail}")


def _child_env() -> dict:
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def plan_shards(sets: ImageSets, n_shards: int) -> list[tuple[int, int]]:
    """Cut the image numbers into at most ``n_shards`` contiguous (first, last) ranges of about equal size,
    cutting only where the group number changes (so no group is split)."""
    nums, groups = sets.image_numbers, sets.group_numbers
    if not nums:
        return []
    if n_shards < 1:
        raise ValueError(f"shards must be >= 1, got {n_shards}")
    order = sorted(range(len(nums)), key=lambda i: nums[i])
    nums = [nums[i] for i in order]
    groups = [groups[i] for i in order]
    cuts = [i for i in range(1, len(nums)) if groups[i] != groups[i - 1]]
    if len(set(groups)) == 1:  # one group (no grouping): any image set may start a shard
        cuts = list(range(1, len(nums)))
    target = len(nums) / n_shards
    starts = [0]
    for k in range(1, n_shards):
        want = round(k * target)
        if not cuts:
            break
        best = min(cuts, key=lambda c: (abs(c - want), c))
        if best > starts[-1]:
            starts.append(best)
    starts = sorted(set(starts))
    ends = starts[1:] + [len(nums)]
    return [(nums[s], nums[e - 1]) for s, e in zip(starts, ends)]


# ------------------------------------------------------------------------------------------- running


def _shard_name(first: int, last: int) -> str:
    return f"{first:06d}-{last:06d}"


def run_shard(cmd: list[str], pipeline: str, file_list: str, input_dir: str, shard_dir: str, first: int,
              last: int, plugins_directory: str | None = None, timeout: float | None = None) -> dict:
    """Run one range of image sets into ``shard_dir`` (via a temporary folder renamed on success).

    Returns a dict with ``ok``, ``returncode``, ``seconds`` and the tail of the output. Never raises for a
    CellProfiler failure (usable as a Dask task).
    """
    dest = Path(shard_dir)
    tmp = dest.with_name("." + dest.name + ".running")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    args = list(cmd) + ["-c", "-r", "-p", str(pipeline), "--file-list", str(file_list), "-i", str(input_dir),
                        "-o", str(tmp), "-f", str(first), "-l", str(last), "-L", "WARNING"]
    if plugins_directory:
        args += ["--plugins-directory", str(plugins_directory)]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_child_env(),
                           stdin=subprocess.DEVNULL)
        rc, text = r.returncode, (r.stdout or "") + (r.stderr or "")
    except subprocess.TimeoutExpired as e:
        rc, text = -9, f"timed out after {timeout} s\n{e.stdout or ''}{e.stderr or ''}"
    except OSError as e:
        rc, text = -1, f"cannot start CellProfiler: {e}"
    (tmp / "cellprofiler.log").write_text(text)
    ok = rc == 0
    if ok:
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return {"ok": ok, "returncode": rc, "seconds": round(time.perf_counter() - t0, 3),
            "tail": "\n".join(text.strip().splitlines()[-12:])}


def _header_lines(lines: list[bytes]) -> int:
    """Header length of an ExportToSpreadsheet table: 1, or 2 when object names sit above the features."""
    for i, line in enumerate(lines[:3]):
        if b"ImageNumber" in line:
            return i + 1
    return 1


def merge_shard_outputs(shard_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Merge the shards' exports into ``out_dir`` (see the module docstring); returns the files written."""
    from artseg_core.io.files import atomic_write

    out_dir = Path(out_dir)
    rels: dict[str, list[Path]] = {}
    for d in shard_dirs:
        for f in sorted(Path(d).rglob("*")):
            if f.is_file() and f.name != "cellprofiler.log":
                rels.setdefault(f.relative_to(d).as_posix(), []).append(f)
    written = []
    for rel, files in sorted(rels.items()):
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel.lower().endswith(".csv"):
            first = files[0].read_bytes()
            head = first.splitlines(keepends=True)
            if head and head[0].strip().lower().replace(b'"', b"") == b"key,value":
                body = first  # Experiment.csv: one copy
            else:
                n = _header_lines(head)
                header = b"".join(head[:n])
                parts = [first if first.endswith(b"\n") or not first else first + b"\n"]
                for f in files[1:]:
                    lines = f.read_bytes().splitlines(keepends=True)
                    if b"".join(lines[:n]) != header:
                        raise CellProfilerError(f"{f}: its columns differ from {files[0]}; cannot merge {rel}")
                    chunk = b"".join(lines[n:])
                    if chunk and not chunk.endswith(b"\n"):
                        chunk += b"\n"
                    parts.append(chunk)
                body = b"".join(parts)
            with atomic_write(dest, "wb") as fh:
                fh.write(body)
        else:
            if len(files) > 1:
                log.warning("%s is written by %d shards; keeping the last", rel, len(files))
            shutil.copy2(files[-1], dest)
        written.append(dest)
    return written


def run_pipeline_sharded(pipeline: str | os.PathLike, plate: str | os.PathLike, out_dir: str | os.PathLike, *,
                         plugins_directory: str | os.PathLike | None = None,
                         input_dir: str | os.PathLike | None = None, workers: int = 1, shards: int | None = None,
                         scheduler: str | None = None, dask_local: bool = False,
                         cellprofiler: str | os.PathLike | None = None, dry_run: bool = False,
                         progress: bool = True, timeout: float | None = None, report: bool = True,
                         echo=None) -> CPSummary:
    """Run a CellProfiler pipeline over a plate split into image-set ranges across workers; merge the exports.

    Parameters
    ----------
    pipeline : path-like
        A ``.cppipe`` file (or CellProfiler project) for CellProfiler 4.2.
    plate : path-like
        Folder (all files below it), glob pattern, or ``.txt`` file list.
    out_dir : path-like
        Merged exports go here; shards and their logs under ``OUT/cp_shards/``. A rerun resumes.
    plugins_directory : path-like, optional
        CellProfiler plugins folder (``--plugins-directory``), e.g. the repository's ``plugins/``.
    input_dir : path-like, optional
        Default Input Folder (``-i``; pipelines may read e.g. the model file from it). Default: the plate folder.
    workers : int
        CellProfiler processes at a time (local), or local Dask workers with ``dask_local``.
    shards : int, optional
        Number of image-set ranges (default: ``workers``, more when a Dask cluster has more threads).
    scheduler, dask_local
        Run the shards on Dask distributed (workers need CellProfiler and the same filesystem).
    cellprofiler : path-like, optional
        The CellProfiler executable (default ``python -m cellprofiler`` of this environment).
    dry_run : bool
        Count image sets and list the shards only.
    timeout : float, optional
        Seconds allowed per shard.
    report : bool
        Write ``OUT/report.html`` when every shard ran and the exports are merged.

    Returns
    -------
    CPSummary
    """
    from artseg_core.io.files import write_text
    from artseg_core.batch.journal import Journal, read_journal

    t0 = time.perf_counter()
    out = Path(out_dir)
    pipe = Path(pipeline)
    if not pipe.is_file():
        raise CellProfilerError(f"{pipe}: no such pipeline file")
    if plugins_directory is not None and not Path(plugins_directory).is_dir():
        raise CellProfilerError(f"{plugins_directory}: no such plugins folder")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    work = out / WORK
    files, root = plate_file_list(plate, exclude=out)
    indir = Path(input_dir).resolve() if input_dir is not None else root
    text = "".join(f + "\n" for f in files)
    file_list = work / "filelist.txt"
    if dry_run:  # count from a temporary file list: a dry run writes nothing
        import tempfile

        with tempfile.TemporaryDirectory(prefix="artseg-cp-") as tmp:
            (Path(tmp) / "filelist.txt").write_text(text)
            sets = count_image_sets(pipe, Path(tmp) / "filelist.txt", plugins_directory=plugins_directory,
                                    input_dir=indir)
    else:
        work.mkdir(parents=True, exist_ok=True)
        write_text(file_list, text)
        sets = count_image_sets(pipe, file_list, plugins_directory=plugins_directory, input_dir=indir)
    if not len(sets):
        raise CellProfilerError(f"{pipe}: the pipeline makes no image sets of the {len(files)} files in {plate}")
    n_shards = shards or workers
    ranges = plan_shards(sets, n_shards)
    import hashlib

    # what decides whether a rerun may resume
    identity = {"pipeline_sha256": _sha(pipe), "files": len(files),
                "file_list_sha256": hashlib.sha256(text.encode()).hexdigest(), "ranges": ranges,
                "plugins": _dir_sha(plugins_directory), "input_dir": str(indir)}
    jpath = work / JOURNAL
    spath = work / PIPELINE_SETTINGS
    old = json.loads(spath.read_text()) if spath.exists() else {}
    if old and read_journal(jpath):
        if {k: old.get(k) for k in identity} != json.loads(json.dumps(identity)):
            raise CellProfilerError(f"{out} holds shards of a different pipeline, plugins, file list or shard plan; "
                                    f"use a new output folder or delete {work}")
    # a shard is done when the journal says so and its folder is there (a deleted folder is run again)
    done = {k for k, r in read_journal(jpath).items() if r.get("status") == "ok" and (work / k).is_dir()}
    todo = [(f, l) for f, l in ranges if _shard_name(f, l) not in done]
    summary = CPSummary(out_dir=out, n_image_sets=len(sets), shards=ranges, n_done_before=len(ranges) - len(todo))
    if dry_run:
        say = echo or print
        say(f"{pipe.name}: {len(sets)} image sets from {len(files)} files; {len(ranges)} shards, "
            f"{len(todo)} to run")
        for f, l in todo:
            say(f"  image sets {f}-{l}")
        summary.dry_run = True
        return summary

    # the record of the run, for the report and the next run: what decides a resume (above), the
    # MaskArtifacts module's image, objects and model, and each run's times
    from artseg_core._version import __version__
    from artseg_core.batch.cpresults import describe_pipeline

    settings = {**identity, "artseg_version": __version__, "pipeline": str(pipe.resolve()), "plate": str(plate),
                "plate_root": str(root), "n_image_sets": len(sets),
                "plugins_directory": str(Path(plugins_directory).resolve()) if plugins_directory else None,
                **describe_pipeline(pipe, indir), "runs": old.get("runs", []) if read_journal(jpath) else []}
    cmd = cellprofiler_command(cellprofiler)
    run_info = {"started": _now(), "host": socket.gethostname(), "python": platform.python_version(),
                "backend": f"dask {scheduler}" if scheduler else ("dask local" if dask_local else "local processes"),
                "workers": workers, "todo": len(todo), "done_before": summary.n_done_before}
    settings["runs"].append(run_info)
    write_text(spath, json.dumps(settings, indent=1) + "\n")
    common = dict(pipeline=str(pipe.resolve()), file_list=str(file_list.resolve()), input_dir=str(indir),
                  plugins_directory=str(Path(plugins_directory).resolve()) if plugins_directory else None,
                  timeout=timeout)
    bar = _bar(len(todo), progress)
    with Journal(jpath) as journal:
        for (first, last), res in _execute(cmd, common, work, todo, workers, scheduler, dask_local):
            name = _shard_name(first, last)
            journal.append({"key": name, "status": "ok" if res["ok"] else "error", "first": first, "last": last,
                            "returncode": res["returncode"], "seconds": res["seconds"],
                            "tail": "" if res["ok"] else res["tail"]})
            summary.n_run += 1
            if not res["ok"]:
                summary.failed.append(name)
                log.error("CellProfiler shard %s failed (exit %s):\n%s", name, res["returncode"], res["tail"])
            bar.update(1)
    bar.close()
    if not summary.failed:
        summary.merged = merge_shard_outputs([work / _shard_name(f, l) for f, l in ranges], out)
    summary.elapsed_s = time.perf_counter() - t0
    done_now = sum(l - f + 1 for f, l in todo if _shard_name(f, l) not in summary.failed)
    run_info.update(finished=_now(), processed=done_now, failed=len(summary.failed),
                    images_per_s=round(done_now / summary.elapsed_s, 4) if summary.elapsed_s > 0 else 0.0)
    write_text(spath, json.dumps(settings, indent=1) + "\n")
    if report and not summary.failed:
        from artseg_core.batch.report import write_report

        try:
            summary.report = write_report(out, run="pipeline")
        except Exception as e:  # the merged tables are the product; a report failure must not hide them
            log.exception("report failed")
            summary.notes.append(f"report failed: {type(e).__name__}: {e}")
    return summary


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _execute(cmd, common, work: Path, todo, workers, scheduler, dask_local):
    """Yield ((first, last), result) as shards finish: a local thread pool of CellProfiler processes, or Dask."""
    if scheduler or dask_local:
        from distributed import Client, LocalCluster, as_completed

        cluster = None
        if scheduler:
            client = Client(scheduler, timeout="30s")
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   protocol="tcp", dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster)
        try:
            futs, flist = {}, []
            for f, l in todo:
                fut = client.submit(run_shard, cmd, shard_dir=str(work / _shard_name(f, l)), first=f, last=l,
                                    pure=False, **common)
                futs[fut.key] = (f, l)
                flist.append(fut)
            for fut in as_completed(flist):
                try:
                    res = fut.result()
                except Exception as e:  # the task itself failed on the worker
                    res = {"ok": False, "returncode": -1, "seconds": 0.0, "tail": f"{type(e).__name__}: {e}"}
                yield futs[fut.key], res
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed as cf_completed

    with ThreadPoolExecutor(max_workers=workers) as ex:
        fmap = {ex.submit(run_shard, cmd, shard_dir=str(work / _shard_name(f, l)), first=f, last=l, **common): (f, l)
                for f, l in todo}
        for fut in cf_completed(fmap):
            yield fmap[fut], fut.result()


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _dir_sha(d) -> str | None:
    if d is None:
        return None
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(d).glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="shard", desc="cellprofiler", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "count":
        sys.exit(_count_main(sys.argv[2:]))
    sys.exit("usage: python -m artseg_core.batch.cpshard count --pipeline P --file-list L "
             "[--plugins-directory D] [--input-dir I]")
