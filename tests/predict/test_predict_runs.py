"""``artseg predict`` never overwrites or loses results silently (issue 15.5, 15.7, 15.8, 15.11): unique output names
with an ``output`` column, a locked output folder, a rerun that replaces the previous run as a whole, outputs never
read back as inputs, read-only folders and missing inputs as clear usage errors, formula cells neutralised."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from artseg_core.io.results import neutralize_cell, read_csv_rows, restore_cell
from artseg_core.predict.files import PredictOptions, run_predict, unique_names

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["ARTSEG_THREADS"] = "1"
    return env


def _artseg(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "artseg_core.cli", *map(str, args)], env=_env(),
                          capture_output=True, text=True, timeout=600, **kw)


def _tif(path: Path, seed: int) -> Path:
    from artseg_core.data import phantoms
    from artseg_core.io.files import write_tiff

    path.parent.mkdir(parents=True, exist_ok=True)
    write_tiff(path, phantoms.make_field((64, 64), seed=seed, artifacts=["debris"] if seed % 2 else []).image)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """An untrained tiny model in a file: predictions are meaningless, files and tables are what is tested."""
    from artseg_core.nets.profiles import get_profile
    from artseg_core.predict.model import ArtifactModel

    prof = get_profile("tiny").with_overrides(predict_tile=64, predict_overlap=16)
    m = ArtifactModel(prof, *ArtifactModel.build_networks(prof), thresholds={"unet": 0.5, "min_size": 4},
                      device="cpu")
    path = tmp_path_factory.mktemp("model") / "m.artseg"
    m.save(path)
    return path


@pytest.fixture(scope="module")
def model(model_file):
    from artseg_core.predict.model import load_model

    return load_model(model_file)


def test_unique_names_are_unique_and_deterministic():
    paths = ["p/c/a_x.tif", "q/c/a_x.tif", "r/c_a_x~2.tif", "r/c_a_x.tif", "d/a_x_1.tif", "e/b.ome.tif", "f/b.tif"]
    names = unique_names(paths)
    assert len(set(names)) == len(paths) and names == unique_names(paths)
    assert names[4] == "a_x_1" and names[5] != names[6]


def test_colliding_names_get_their_own_files_and_an_output_column(model, tmp_path):
    """Old code: q/c/a_x.tif and r/c_a_x_1.tif both wrote c_a_x_1_mask.tif (3 inputs, 2 sets of files)."""
    ins = [_tif(tmp_path / "in" / "p" / "c" / "a_x.tif", 1), _tif(tmp_path / "in" / "q" / "c" / "a_x.tif", 2),
           _tif(tmp_path / "in" / "r" / "c_a_x_1.tif", 3)]
    out = tmp_path / "out"
    run = run_predict(model, ins, out, PredictOptions(mask=True, prob=True))
    rows = read_csv_rows(run.csv_path)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    outs = [r["output"] for r in rows]
    assert len(set(outs)) == 3
    for r in rows:
        assert (out / f"{r['output']}_mask.tif").is_file() and (out / f"{r['output']}_prob.tif").is_file()
    assert len(list(out.glob("*_mask.tif"))) == 3
    # each row's mask is its own image's
    for r, p in zip(rows, ins):
        assert r["image"] == str(p)
        res = model.predict(__import__("tifffile").imread(p))
        from artseg_core.io.images import read_image

        assert np.array_equal(read_image(out / f"{r['output']}_mask.tif", allow_constant=True) > 0, res.mask)


def test_rerun_replaces_previous_outputs_and_never_reads_its_own(model_file, tmp_path):
    plate = tmp_path / "plate"
    for i in range(3):
        _tif(plate / f"f{i}.tif", i)
    out = plate / "results"  # inside the input tree
    r = _artseg("predict", plate, "-m", model_file, "-o", out, "--recursive", "--overlay", "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(read_csv_rows(out / "artseg_results.csv")) == 3 and len(list(out.glob("*_overlay.png"))) == 3
    # old code: the rerun read its own 3 masks as inputs (6 rows)
    r = _artseg("predict", plate, "-m", model_file, "-o", out, "--recursive", "--quiet")
    assert r.returncode == 0, r.stderr
    rows = read_csv_rows(out / "artseg_results.csv")
    assert len(rows) == 3 and not any("results" in Path(x["image"]).parts for x in rows)
    # the previous run's overlays are gone: the folder holds one run, matching its table
    assert not list(out.glob("*_overlay.png")) and len(list(out.glob("*_mask.tif"))) == 3


def test_concurrent_predict_into_one_folder_is_refused(model_file, tmp_path):
    ins = [_tif(tmp_path / "in" / f"g{i}.tif", i) for i in range(2)]
    out = tmp_path / "out"
    out.mkdir()
    from artseg_core.io.lock import run_lock

    with run_lock(out):  # another run holds the folder
        r = _artseg("predict", *ins, "-m", model_file, "-o", out, "--quiet")
    assert r.returncode == 2 and "in use by another run" in r.stderr
    assert not (out / "artseg_results.csv").exists()
    # two real runs at once: the first is frozen while it holds the folder; the second is refused; the first
    # then finishes with nothing lost (old code: both exited 0 and the first run's table was gone)
    import signal

    cmd = [sys.executable, "-m", "artseg_core.cli", "predict", *map(str, ins), "-m", str(model_file), "-o",
           str(out), "--quiet"]
    p1 = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while f"pid {p1.pid} " not in ((out / ".artseg.lock").read_text() if (out / ".artseg.lock").exists()
                                        else ""):
            assert time.time() < deadline and p1.poll() is None, p1.communicate()[1][-2000:]
            time.sleep(0.01)
        p1.send_signal(signal.SIGSTOP)
        r2 = _artseg("predict", ins[0], "-m", model_file, "-o", out, "--quiet")
        p1.send_signal(signal.SIGCONT)
        _, err1 = p1.communicate(timeout=600)
    finally:
        if p1.poll() is None:
            p1.kill()
    assert r2.returncode == 2 and "in use by another run" in r2.stderr
    assert p1.returncode == 0, err1
    assert len(read_csv_rows(out / "artseg_results.csv")) == 2 and len(list(out.glob("*_mask.tif"))) == 2


def test_read_only_output_and_missing_inputs_are_usage_errors(model_file, tmp_path):
    ins = [_tif(tmp_path / "in" / "h.tif", 1)]
    (tmp_path / "afile").write_text("x")  # an output folder that cannot be created (also as root)
    r = _artseg("predict", *ins, "-m", model_file, "-o", tmp_path / "afile" / "out", "--quiet")
    assert r.returncode == 2 and "cannot write to the output folder" in r.stderr and "Traceback" not in r.stderr
    r = _artseg("predict", tmp_path / "nope", "-m", model_file, "-o", tmp_path / "o2", "--quiet")
    assert r.returncode == 2 and "nope: no such file or folder" in r.stderr  # as `artseg batch` (was 1)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root): no read-only folder to test")
        r = _artseg("predict", *ins, "-m", model_file, "-o", ro, "--quiet")
        assert r.returncode == 2 and "cannot write to the output folder" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        ro.chmod(0o755)


def test_full_output_folder_reports_every_image(model, tmp_path, monkeypatch):
    """Every write fails (a full disk): one error per image, all images reported, nothing raised."""
    import errno

    from artseg_core.io import outputs

    ins = [_tif(tmp_path / "in" / f"k{i}.tif", i) for i in range(3)]

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "write_mask_tiff", full)
    run = run_predict(model, ins, tmp_path / "out", PredictOptions())
    assert len(run.rows) == 3 and all("No space left" in r["error"] for r in run.rows)


def test_formula_cells_are_neutralised_in_predict_csv(model, tmp_path):
    p = _tif(tmp_path / "in" / "=HYPERLINK(x).tif", 1)
    q = _tif(tmp_path / "in" / "-2+3.tif", 2)
    run = run_predict(model, [p, q], tmp_path / "out", PredictOptions())
    with open(run.csv_path, newline="") as fh:
        raw = list(csv.DictReader(fh))
    assert raw[0]["output"] == "'=HYPERLINK(x)" and raw[1]["output"] == "'-2+3"
    assert all(not r["image"].startswith(("=", "+", "-", "@")) for r in raw)
    assert read_csv_rows(run.csv_path)[0]["output"] == "=HYPERLINK(x)"  # restored when read back


@pytest.mark.parametrize("cell, safe", [("=1+2", "'=1+2"), ("+A1", "'+A1"), ("-x", "'-x"), ("@SUM(A1)", "'@SUM(A1)"),
                                        ("\tx", "'\tx"), ("-0.5", "-0.5"), ("a=b", "a=b"), ("'=x", "''=x"),
                                        (-0.5, -0.5), ("", "")])
def test_neutralize_cell(cell, safe):
    assert neutralize_cell(cell) == safe and restore_cell(neutralize_cell(cell)) == cell
