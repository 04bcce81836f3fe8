"""The plate runner never gets it silently wrong (issue 15, issue 16 item 2), tested as a user meets it: reruns into a
folder of another plate, kills of the run and of its workers, repeated failures, added outputs, formula cells.

An untrained tiny model is enough here (the numbers are not under test, the files, tables and processes are)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artseg_core.batch.layout import JOURNAL, LOG, RESULTS
from artseg_core.batch.runner import BatchError, run_batch
from artseg_core.io.results import read_csv_rows
from artseg_core.predict.files import PredictOptions

psutil = pytest.importorskip("psutil")
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["ARTSEG_THREADS"] = "1"
    return env


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARTSEG_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from artseg_core.nets.profiles import get_profile
    from artseg_core.predict.model import ArtifactModel

    prof = get_profile("tiny").with_overrides(predict_tile=128, predict_overlap=32)
    m = ArtifactModel(prof, *ArtifactModel.build_networks(prof), thresholds={"unet": 0.5, "min_size": 4,
                                                                              "gate": 0.0, "classifier": 0.5},
                      device="cpu")
    path = tmp_path_factory.mktemp("model") / "m.artseg"
    m.save(path)
    return path


def _plate(root: Path, seed: int, rows=2, cols=3, fields=2, size=64, plate="P") -> Path:
    from artseg_core.data import phantoms

    phantoms.make_plate(root, rows=rows, cols=cols, fields=fields, prevalence=0.5, seed=seed, shape=(size, size),
                        plate=plate)
    return root / "images"


def _cmd(plate, model, out, *extra) -> list[str]:
    return [sys.executable, "-m", "artseg_core.cli", "batch", str(plate), "-m", str(model), "-o", str(out),
            "--quiet", "--no-report", "--device", "cpu", *map(str, extra)]


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_rerun_with_another_plate_is_refused_and_overwrite_starts_over(tmp_path, model_file):
    """15.1: plate B into plate A's finished folder processed nothing, exit 0, and kept plate A's values."""
    a, b = _plate(tmp_path / "A", 1), _plate(tmp_path / "B", 2)
    out = tmp_path / "out"
    assert run_batch(a, model_file, out, progress=False, report=False).exit_code == 0
    r = subprocess.run(_cmd(b, model_file, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    assert "other input files: 12 of the images done before differ" in r.stderr and "--overwrite" in r.stderr
    assert all(str(a) in row["path"] for row in read_csv_rows(out / RESULTS))  # nothing of A was touched
    r = subprocess.run(_cmd(b, model_file, out, "--overwrite"), env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    rows = read_csv_rows(out / RESULTS)
    assert len(rows) == 12 and all(str(b.resolve()) in row["path"] for row in rows)
    assert json.loads((out / "batch.json").read_text())["plate"] == str(b)
    # a file of the plate changed since it was processed: refused too, naming it
    victim = sorted(b.glob("*.tif"))[3]
    os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10 ** 9))
    with pytest.raises(BatchError, match=f"{victim.name}: the file changed since it was processed"):
        run_batch(b, model_file, out, progress=False, report=False)


def test_mixed_channel_suffixes_are_all_processed_or_listed(tmp_path, model_file):
    """15.3: `A01_s1_w1.tif`, `B02_s1.tif`, `sample.tif` processed 1 image."""
    src = sorted(_plate(tmp_path / "src", 3, rows=1, cols=2, fields=2).glob("*.tif"))
    p = tmp_path / "mixed"
    p.mkdir()
    for name, s in (("A01_s1_w1.tif", src[0]), ("B02_s1.tif", src[1]), ("sample.tif", src[2]),
                    ("A01_s1_w2.tif", src[3])):
        (p / name).write_bytes(s.read_bytes())
    (p / "broken.tif").write_bytes(b"garbage")
    out = tmp_path / "out"
    s = run_batch(p, model_file, out, channel="1", progress=False, report=False)
    assert s.n_images == 4 and s.n_ok == 3 and s.n_failed == 1 and s.exit_code == 1
    rows = {r["image"]: r for r in read_csv_rows(out / RESULTS)}
    assert set(rows) == {"A01_s1_w1.tif", "B02_s1.tif", "sample.tif", "broken.tif"}
    assert "broken.tif" in rows["broken.tif"]["error"]
    skipped = read_csv_rows(out / "skipped.csv")
    assert skipped == [{"path": str(p / "A01_s1_w2.tif"), "reason": "channel 2 (processing channel 1)"}]
    assert "skipped: " in (out / LOG).read_text()


def _tree(pid: int) -> list:
    return psutil.Process(pid).children(recursive=True)


def _gone(procs, timeout=30.0) -> list:
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.2)
    return [(p.pid, " ".join(p.cmdline())[:120]) for p in alive]


def _start_and_freeze(cmd, journal: Path, n: int):
    proc = subprocess.Popen(cmd, env=_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 600
    while _lines(journal) < n:
        assert proc.poll() is None, f"the run ended too early: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)
    return proc


@pytest.fixture(scope="module")
def plate96(tmp_path_factory) -> Path:
    return _plate(tmp_path_factory.mktemp("p96"), 5, rows=4, cols=6, fields=4, size=128)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_a_parallel_run_leaves_no_process_behind(tmp_path, model_file, plate96, sig):
    """15.4: SIGKILL/SIGTERM of `artseg batch --workers 2` left the fork server, both workers and the resource
    tracker running; SIGTERM exited 143 with no tables and nothing in batch.log."""
    out = tmp_path / "out"
    proc = _start_and_freeze(_cmd(plate96, model_file, out, "--workers", 2), out / JOURNAL, 3)
    try:
        children = _tree(proc.pid)
        assert len(children) >= 3, [c.cmdline() for c in children]  # fork server, 2 workers, resource tracker
        frozen_at = _lines(out / JOURNAL)
        os.kill(proc.pid, sig)
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert frozen_at < 96
    left = _gone(children)
    assert not left, f"processes left behind after {sig.name}: {left}"
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, proc.stderr.read()[-2000:]
        rows = read_csv_rows(out / RESULTS)
        assert 3 <= len(rows) == _lines(out / JOURNAL) < 96 and all(r["status"] == "ok" for r in rows)
        log = (out / LOG).read_text()
        assert "interrupted (SIGTERM)" in log and "run end:" in log
    else:
        assert proc.returncode == -signal.SIGKILL
    # the rerun finishes the plate
    r = subprocess.run(_cmd(plate96, model_file, out, "--workers", 2), env=_env(), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(read_csv_rows(out / RESULTS)) == 96


def test_a_killed_worker_costs_no_more_than_a_retry(tmp_path, model_file, plate96):
    """15.6: a killed worker aborted the whole plate with exit 2, no tables and no reason in the log."""
    out = tmp_path / "out"
    proc = _start_and_freeze(_cmd(plate96, model_file, out, "--workers", 2), out / JOURNAL, 3)
    try:
        children = _tree(proc.pid)
        server = [c for c in psutil.Process(proc.pid).children() if "forkserver" in " ".join(c.cmdline())]
        workers = server[0].children() if server else []
        assert len(workers) == 2, [c.cmdline() for c in _tree(proc.pid)]
        workers[0].kill()
        workers[0].wait(timeout=30)
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    rows = read_csv_rows(out / RESULTS)
    assert len(rows) == 96 and all(r["status"] == "ok" for r in rows)
    assert "a worker process died" in (out / LOG).read_text()
    assert not _gone(children)


def test_max_failures_counts_only_new_failures(tmp_path, model_file):
    """15.10: with the default retry of failed images a rerun stopped on the same failures every time."""
    src = sorted(_plate(tmp_path / "src", 4, rows=1, cols=1, fields=3).glob("*.tif"))
    p = tmp_path / "p"
    p.mkdir()
    for i, s in enumerate(src):
        (p / f"P_B01_s{i + 1}_w1.tif").write_bytes(s.read_bytes())
    for i in range(3):  # first in plate order: well A01
        (p / f"P_A01_s{i + 1}_w1.tif").write_bytes(b"broken %d" % i)
    out = tmp_path / "out"
    s = run_batch(p, model_file, out, max_failures=2, progress=False, report=False)
    assert s.exit_code == 3 and s.n_processed == 2
    s = run_batch(p, model_file, out, max_failures=2, progress=False, report=False)
    assert s.exit_code == 1 and s.complete and s.n_ok == 3 and s.n_failed == 3 and s.n_new_failures == 1
    s = run_batch(p, model_file, out, max_failures=1, progress=False, report=False)
    assert s.exit_code == 1 and s.n_processed == 3 and s.n_new_failures == 0


def test_outputs_added_to_a_finished_run_and_analysis_changes_named(tmp_path, model_file):
    """16.2: adding --prob to a finished run was refused with a dict dump and everything had to be recomputed."""
    plate = _plate(tmp_path / "A", 6, rows=1, cols=2, fields=2)
    out = tmp_path / "out"
    run_batch(plate, model_file, out, progress=False, report=False)
    masks = {p: p.stat().st_mtime_ns for p in (out / "outputs").glob("*_mask.tif")}
    before = read_csv_rows(out / RESULTS)
    s = run_batch(plate, model_file, out, options=PredictOptions(prob=True), progress=False, report=False)
    assert s.exit_code == 0 and s.n_processed == 4
    assert len(list((out / "outputs").glob("*_prob.tif"))) == 4
    assert {p: p.stat().st_mtime_ns for p in (out / "outputs").glob("*_mask.tif")} == masks  # not recomputed
    assert read_csv_rows(out / RESULTS) == before
    s = run_batch(plate, model_file, out, progress=False, report=False)  # dropping --prob removes nothing
    assert s.n_processed == 0 and len(list((out / "outputs").glob("*_prob.tif"))) == 4
    with pytest.raises(BatchError, match=r"--threshold \(was None, now 0.9\)"):
        run_batch(plate, model_file, out, options=PredictOptions(threshold=0.9), progress=False)


def test_formula_cells_neutralised_in_results(tmp_path, model_file):
    """15.8: plate and file names that start with = + - @ opened as spreadsheet formulas."""
    plate = _plate(tmp_path / "A", 7, rows=1, cols=1, fields=2, plate="=HYPERLINK(1)")
    out = tmp_path / "out"
    run_batch(plate, model_file, out, progress=False, report=False)
    with open(out / RESULTS, newline="") as fh:
        raw = list(csv.DictReader(fh))
    assert raw and all(r["plate"] == "'=HYPERLINK(1)" and r["image"].startswith("'=") for r in raw)
    with open(out / "wells.csv", newline="") as fh:
        assert all(r["plate"] == "'=HYPERLINK(1)" for r in csv.DictReader(fh))
    assert read_csv_rows(out / RESULTS)[0]["plate"] == "=HYPERLINK(1)"


def test_warnings_reach_batch_log_without_source_lines(tmp_path, model_file, monkeypatch):
    """15.11: warnings printed Python source lines and did not reach batch.log."""
    import warnings

    from artseg_core.batch import executors

    real = executors.process_file

    def warn_then_run(*a, **k):
        warnings.warn("pixel size differs from the model's", UserWarning)
        return real(*a, **k)

    monkeypatch.setattr(executors, "process_file", warn_then_run)
    plate = _plate(tmp_path / "A", 8, rows=1, cols=1, fields=2)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # whatever -W the tests run with
        run_batch(plate, model_file, tmp_path / "out", progress=False, report=False)
    log = (tmp_path / "out" / LOG).read_text()
    assert "UserWarning: pixel size differs from the model's" in log
    assert "warnings.warn(" not in log


def test_unwritable_output_folder_is_one_clear_error(tmp_path, model_file):
    """15.7: a read-only output folder gave a raw PermissionError traceback (.artseg.lock)."""
    plate = _plate(tmp_path / "A", 9, rows=1, cols=1, fields=1)
    (tmp_path / "afile").write_text("x")
    r = subprocess.run(_cmd(plate, model_file, tmp_path / "afile" / "out"), env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2 and "cannot write to the output folder" in r.stderr and "Traceback" not in r.stderr
