"""Plate runner end to end with a real trained model: outputs, resume after SIGKILL, failures, parallel runs.

The reference in every comparison is an uninterrupted in-process run over the same plate.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from artseg_core.batch.layout import JOURNAL, RESULTS, WELLS
from artseg_core.batch.runner import BatchError, run_batch
from artseg_core.predict.files import PredictOptions

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _rows(out: Path) -> list[dict]:
    with open(out / RESULTS, newline="") as fh:
        return list(csv.DictReader(fh))


def _masks(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "outputs").rglob("*_mask.tif"))}


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread per worker (also in subprocesses): on the shared 2-core test machine two OpenMP threads
    per worker were ~20x slower than one (they spin-wait for each other on oversubscribed cores)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARTSEG_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def plate48(tmp_path_factory) -> Path:
    """48 fields (4 x 6 wells x 2 fields, 256 x 256): enough to kill a run in the middle."""
    from artseg_core.data import phantoms

    root = tmp_path_factory.mktemp("plate48")
    phantoms.make_plate(root, rows=4, cols=6, fields=2, prevalence=0.5, seed=3, shape=(256, 256), plate="P48")
    return root / "images"


@pytest.fixture(scope="module")
def reference(plate48, trained_model_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    s = run_batch(plate48, trained_model_path, out, progress=False, report=False)
    assert s.exit_code == 0 and s.n_ok == 48 and s.n_processed == 48 and s.complete
    return out


def test_outputs_tables_and_rerun_does_nothing(reference, plate48, trained_model_path):
    rows = _rows(reference)
    assert len(rows) == 48 and len({r["image"] for r in rows}) == 48
    assert [(r["well"], r["field"]) for r in rows[:3]] == [("A01", "1"), ("A01", "2"), ("A02", "1")]
    assert all(r["plate"] == "P48" and r["status"] == "ok" and r["mask"] for r in rows)
    masks = _masks(reference)
    assert len(masks) == 48 and f"{rows[0]['mask']}" in masks
    with open(reference / WELLS, newline="") as fh:
        wells = list(csv.DictReader(fh))
    assert len(wells) == 24 and all(w["fields"] == "2" and w["failed"] == "0" for w in wells)
    by_well = {}
    for r in rows:
        by_well.setdefault(r["well"], []).append(float(r["area_fraction"]))
    for w in wells:
        assert float(w["mean_area_fraction"]) == pytest.approx(np.mean(by_well[w["well"]]), abs=1e-6)
    # the per-image numbers are the engine's: compare one image with model.predict directly
    import artseg_core
    from artseg_core.io.images import read_image

    model = artseg_core.load_model(trained_model_path)
    res = model.predict(read_image(rows[5]["path"]))
    assert float(rows[5]["p_artifact"]) == pytest.approx(res.p_artifact, abs=1e-5)
    assert float(rows[5]["area_fraction"]) == pytest.approx(res.area_fraction, abs=1e-6)
    m = read_image(reference / rows[5]["mask"], allow_constant=True) > 0
    assert np.array_equal(m, res.mask)
    # nothing left to do: a rerun processes nothing and keeps the tables
    before = (reference / RESULTS).read_bytes()
    s = run_batch(plate48, trained_model_path, reference, progress=False, report=False)
    assert s.n_processed == 0 and s.n_done_before == 48 and s.exit_code == 0
    assert (reference / RESULTS).read_bytes() == before


def test_sigkill_mid_plate_then_resume_matches_uninterrupted_run(plate48, trained_model_path, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "artseg_core.cli", "batch", str(plate48), "-m", str(trained_model_path), "-o",
           str(out), "--quiet", "--no-report"]
    proc = subprocess.Popen(cmd, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    journal = out / JOURNAL
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own: {proc.stderr.read().decode()[-2000:]}"
    lines = journal.read_bytes().count(b"\n")
    assert 5 <= lines < 48, f"kill came too late to test resuming ({lines} of 48 done)"
    # also simulate the worst moments of a kill: a torn journal line and a temporary file of an atomic write
    with open(journal, "ab") as fh:
        fh.write(b'{"key":"P48_D06_s2_w1.tif","row":{"sta')
    stale = out / "outputs" / ".P48_D06_s2_w1_mask.tif.abc123.tmp"
    stale.write_bytes(b"half a tiff")

    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not stale.exists()
    done = [json.loads(x) for x in journal.read_text().splitlines()]
    assert len(done) == 48 and len({d["key"] for d in done}) == 48  # each image exactly once
    assert f"this run {48 - lines} in" in r.stdout  # only the missing images were processed
    assert _rows(out) == [{**row} for row in _rows(reference)]
    assert _masks(out) == _masks(reference)  # byte-identical mask files, none torn, none extra


def test_ctrl_c_writes_tables_of_what_finished_then_resume(plate48, trained_model_path, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "artseg_core.cli", "batch", str(plate48), "-m", str(trained_model_path), "-o",
           str(out), "--quiet"]
    # The run gets Ctrl-C's default disposition even where this test was started with SIGINT ignored (a
    # background job of a non-interactive shell, `nohup cmd &`): an ignored SIGINT is inherited, and Python then
    # installs no KeyboardInterrupt handler - the run would simply finish (seen once when CI was started that way).
    proc = subprocess.Popen(cmd, env=_env(), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if (out / JOURNAL).exists() and (out / JOURNAL).read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.01)
        # Freeze the run, then send the SIGINT, then let it go on: how soon this process gets a core back
        # cannot decide whether the signal lands mid-plate (a 256x256 field takes ~10 ms).
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGSTOP)
        frozen_at = (out / JOURNAL).read_bytes().count(b"\n") if (out / JOURNAL).exists() else 0
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert frozen_at < 46, f"the run was stopped too late to test Ctrl-C ({frozen_at} of 48 images done)"
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "rerun the same command" in err
    partial = _rows(out)
    done = (out / JOURNAL).read_bytes().count(b"\n")
    assert 3 <= len(partial) == done < 48 and all(r["status"] == "ok" for r in partial)
    ref = {r["image"]: r for r in _rows(reference)}
    assert all(r == ref[r["image"]] for r in partial)
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _rows(out) == _rows(reference) and _masks(out) == _masks(reference)


def test_full_disk_then_resume(plate48, trained_model_path, reference, tmp_path, monkeypatch):
    """The disk fills up: first the mask writes fail (error rows), then the journal itself (the run stops with
    the OSError). After space is freed, a rerun redoes exactly what is missing or failed."""
    import errno

    from artseg_core.io import outputs
    from artseg_core.batch import journal

    real_mask, real_append = outputs.write_mask_tiff, journal.Journal.append
    calls = {"mask": 0, "append": 0}

    def mask_fills_disk(*a, **k):
        calls["mask"] += 1
        if calls["mask"] > 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mask(*a, **k)

    def append_fills_disk(self, record):
        calls["append"] += 1
        if calls["append"] > 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(self, record)

    monkeypatch.setattr(outputs, "write_mask_tiff", mask_fills_disk)
    monkeypatch.setattr(journal.Journal, "append", append_fills_disk)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        run_batch(plate48, trained_model_path, out, progress=False, report=False)
    monkeypatch.undo()
    recs = [json.loads(x) for x in (out / JOURNAL).read_text().splitlines()]
    assert len(recs) == 20 and sum(r["status"] == "ok" for r in recs) == 10
    assert all("No space left" in r["row"]["error"] for r in recs if r["status"] != "ok")
    s = run_batch(plate48, trained_model_path, out, progress=False, report=False)
    assert s.n_processed == 38 and s.exit_code == 0 and s.complete
    assert _rows(out) == _rows(reference) and _masks(out) == _masks(reference)


def test_bad_images_max_failures_and_retry(tmp_path, trained_model_path, plate48):
    plate = tmp_path / "plate"
    plate.mkdir()
    good = sorted(plate48.glob("*.tif"))[:4]
    for p in good:
        (plate / p.name).write_bytes(p.read_bytes())
    (plate / "P48_A01_s5_w1.tif").write_bytes(b"not an image at all")
    (plate / "P48_A01_s6_w1.tif").write_bytes(good[0].read_bytes()[:300])  # truncated TIFF
    (plate / "P48_A01_s7_w1.tif").write_bytes(b"")
    out = tmp_path / "out"
    s = run_batch(plate, trained_model_path, out, max_failures=2, progress=False, report=False)
    assert s.stopped_early and s.exit_code == 3 and s.n_failed_this_run == 2
    assert s.n_processed < 7 and not s.complete
    s = run_batch(plate, trained_model_path, out, progress=False, report=False)
    assert s.exit_code == 1 and s.complete and s.n_ok == 4 and s.n_failed == 3
    rows = {r["image"]: r for r in _rows(out)}
    assert rows["P48_A01_s5_w1.tif"]["status"] == "error" and "P48_A01_s5_w1.tif" in rows["P48_A01_s5_w1.tif"]["error"]
    assert rows["P48_A01_s7_w1.tif"]["error"] and rows["P48_A01_s6_w1.tif"]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == 4
    # a fixed file is picked up by the next run (failed images are retried), the rest is left alone
    (plate / "P48_A01_s5_w1.tif").write_bytes(good[1].read_bytes())
    s = run_batch(plate, trained_model_path, out, progress=False, report=False)
    assert s.n_processed == 3 and s.n_ok == 5 and s.n_failed == 2
    s = run_batch(plate, trained_model_path, out, progress=False, report=False, retry_failed=False)
    assert s.n_processed == 0 and s.exit_code == 1


def test_changed_settings_refused_and_dry_run_writes_nothing(tmp_path, trained_model_path, plate48):
    plate = tmp_path / "p"
    plate.mkdir()
    for p in sorted(plate48.glob("*.tif"))[:3]:
        (plate / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    lines = []
    s = run_batch(plate, trained_model_path, out, dry_run=True, echo=lines.append)
    assert s.dry_run and s.n_todo == 3 and not out.exists()
    assert len(lines) == 4 and lines[1].startswith("P48\tA01\tf1\t1\t")
    run_batch(plate, trained_model_path, out, progress=False, report=False)
    with pytest.raises(BatchError, match="different options"):
        run_batch(plate, trained_model_path, out, options=PredictOptions(threshold=0.9), progress=False)
    # a second opinion the model does not hold is refused before any image is read
    with pytest.raises(BatchError, match="no second opinion"):
        run_batch(plate, trained_model_path, tmp_path / "so", options=PredictOptions(second_opinion=True),
                  progress=False)
    assert not (tmp_path / "so" / "artseg_results.csv").exists()
    with pytest.raises(Exception, match="no such model file"):
        run_batch(plate, tmp_path / "missing.artseg", out)


def test_two_local_workers_match_in_process(plate48, trained_model_path, reference, tmp_path):
    out = tmp_path / "out"
    s = run_batch(plate48, trained_model_path, out, workers=2, progress=False, report=False)
    assert s.exit_code == 0 and s.backend == "local x2" and s.n_processed == 48
    assert _rows(out) == _rows(reference)
    assert _masks(out) == _masks(reference)


def test_dask_cluster_matches_in_process(plate48, trained_model_path, reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, host="127.0.0.1",
                                  protocol="tcp", dashboard_address=None) as cluster:
        out = tmp_path / "out"
        s = run_batch(plate48, trained_model_path, out, scheduler=cluster.scheduler_address, progress=False,
                      report=False)
    assert s.exit_code == 0 and s.backend.startswith("dask tcp://127.0.0.1") and s.n_processed == 48
    assert _rows(out) == _rows(reference)
    assert _masks(out) == _masks(reference)


def test_dask_local_cluster_processes(plate48, trained_model_path, reference, tmp_path):
    """``--dask local``: a LocalCluster of worker processes on 127.0.0.1 started by the runner itself."""
    pytest.importorskip("distributed")
    plate = tmp_path / "plate"
    plate.mkdir()
    for p in sorted(plate48.glob("*.tif"))[:6]:
        (plate / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    s = run_batch(plate, trained_model_path, out, dask_local=True, workers=2, progress=False, report=False)
    assert s.exit_code == 0 and s.backend == "dask-local x2" and s.n_processed == 6
    ref = {r["image"]: r for r in _rows(reference)}
    for r in _rows(out):
        want = dict(ref[r["image"]], path=r["path"])
        assert r == want
    ref_masks = _masks(reference)
    assert _masks(out) == {k: ref_masks[k] for k in _masks(out)} and len(_masks(out)) == 6
