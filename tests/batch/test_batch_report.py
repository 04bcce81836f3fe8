"""Plate report: files, figures, and rendering in a real browser (headless Chromium)."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from artseg_core.batch.layout import REPORT, RESULTS
from artseg_core.batch.report import plate_shape
from artseg_core.batch.runner import run_batch

pytestmark = pytest.mark.slow
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    for c in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if c and os.access(c, os.X_OK):
            return c
    pytest.skip("Chromium is not installed (make chromium: apt-get install chromium); browser test skipped")


def _run_browser(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """Run Chromium in its own session and kill the whole session when done or on timeout."""
    with tempfile.TemporaryDirectory(prefix="artseg-chromium-") as profile:
        cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"Chromium did not finish in {timeout} s: {err[-2000:]}")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # helper processes that outlive the browser
            except ProcessLookupError:
                pass
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def run_dir(tiny_plate, trained_model_path, tmp_path_factory) -> Path:
    plate = tmp_path_factory.mktemp("rp") / "images"
    shutil.copytree(tiny_plate / "images", plate)
    (plate / "phantom_B03_s9_w1.tif").write_bytes(b"broken")
    out = tmp_path_factory.mktemp("report") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARTSEG_THREADS", "1")
        s = run_batch(plate, trained_model_path, out, progress=False)
    assert s.report == out / REPORT and s.n_failed == 1 and s.n_ok == 12
    return out


def _refs(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_report_references_valid_files(run_dir):
    from PIL import Image

    html = (run_dir / REPORT).read_text()
    refs = _refs(html)
    pngs = [r for r in refs if r.endswith(".png")]
    assert any("heatmap_area" in r for r in pngs) and any("heatmap_flagged" in r for r in pngs)
    assert "report_files/distributions.png" in pngs
    with open(run_dir / RESULTS, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(r.startswith("report_files/worst_") for r in pngs) == min(12, sum(r["status"] == "ok" for r in rows))
    for r in refs:
        p = run_dir / r
        assert p.is_file(), f"report refers to a missing file {r}"
        if r.endswith(".png"):
            with Image.open(p) as im:
                im.verify()
            with Image.open(p) as im:
                assert im.size[0] > 50 and im.size[1] > 50
    # counts on the page are the table's
    flagged = sum(r["flagged"] == "True" for r in rows if r["status"] == "ok")
    assert 'id="count-failed">1<' in html and f'id="count-flagged_artifacts_">{flagged}<' in html
    assert "phantom_B03_s9_w1.tif" in html  # the failed image is listed with its error
    settings = json.loads((run_dir / "batch.json").read_text())
    assert settings["model_sha256"] in html


def test_report_command_rebuilds_from_journal(run_dir, tmp_path):
    from click.testing import CliRunner

    from artseg_core.cli.main import main

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for name in ("results.csv", "wells.csv", REPORT):
        (copy / name).unlink()
    shutil.rmtree(copy / "report_files")
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 0, r.output
    assert (copy / REPORT).is_file() and (copy / "results.csv").read_text() == (run_dir / "results.csv").read_text()
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "not a plate run folder" in r.output


def test_plate_shapes():
    assert plate_shape(2, 3) == (2, 3) and plate_shape(3, 5) == (4, 6) and plate_shape(8, 12) == (8, 12)
    assert plate_shape(9, 2) == (9, 2) and plate_shape(32, 48) == (32, 48) and plate_shape(40, 2) == (40, 2)
    assert plate_shape(2, 6) == (2, 6) and plate_shape(4, 6) == (4, 6) and plate_shape(7, 12) == (8, 12)


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    from PIL import Image

    _chromium()
    shot = tmp_path / "shot.png"
    r = _run_browser(["--window-size=1280,1800", "--hide-scrollbars", f"--screenshot={shot}",
                      (run_dir / REPORT).resolve().as_uri()])
    assert shot.is_file(), r.stderr[-2000:]
    a = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert a.shape[0] >= 1000 and a.shape[1] >= 1000
    assert a.std() > 20, "screenshot is blank"
    assert (a.sum(axis=2) < 200).mean() > 0.001  # dark pixels: text and figures were drawn

    # load the page and ask the browser whether every image decoded (naturalWidth > 0): a copy of the page in the
    # same folder with a probe script that writes the answer into the DOM, which --dump-dom then prints
    probe = run_dir / "_probe_report.html"
    html = (run_dir / REPORT).read_text()
    script = ("<script>window.addEventListener('load',function(){var r=[];document.querySelectorAll('img')"
              ".forEach(function(i){r.push([i.getAttribute('src'),i.complete,i.naturalWidth])});"
              "var p=document.createElement('pre');p.id='probe';p.textContent=JSON.stringify(r);"
              "document.body.appendChild(p);});</script>")
    probe.write_text(html.replace("</body>", script + "</body>"))
    try:
        r = _run_browser(["--virtual-time-budget=15000", "--dump-dom", probe.resolve().as_uri()])
    finally:
        probe.unlink()
    m = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"probe output missing; stderr: {r.stderr[-2000:]}"
    imgs = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(imgs) == len([x for x in _refs(html) if x.endswith(".png")])
    bad = [src for src, complete, width in imgs if not (complete and width > 0)]
    assert not bad, f"images that did not load in the browser: {bad}"
    heat = [w for src, _, w in imgs if "heatmap_area" in src]
    assert heat and heat[0] > 100


def test_figures_show_what_they_claim():
    """The report's figures, checked on their matplotlib objects: thresholds inside the axes and named, a few
    labels on the log focus axis, a constant score said in words, integer ticks for counts, a 2 x 6 plate drawn
    2 x 6."""
    from artseg_core.batch.report import distribution_figure, heatmap_figure

    rng = np.random.default_rng(0)
    rows = [{"status": "ok", "p_artifact": p, "focus": f, "illumination": i, "saturation": 0.0}
            for p, f, i in zip(rng.random(30), 10 ** rng.uniform(-3.2, -2.9, 30), rng.uniform(0.01, 0.05, 30))]
    settings = {"model_thresholds": {"classifier": 0.45, "gate": 0.11},
                "quality_thresholds": {"focus_min": 2e-4, "illumination_max": 0.3, "saturation_max": 0.002}}
    fig = distribution_figure(rows, settings)
    fig.canvas.draw()
    axes = fig.axes
    for ax, t in zip(axes, (0.45, 2e-4, 0.3, 0.002)):
        lo, hi = ax.get_xlim()
        assert lo < t < hi, (ax.get_title(), t, lo, hi)
        labels = [x.get_text() for x in ax.get_legend().get_texts()]
        assert any(lab.startswith(("flag", "focus_min", "illumination_max", "saturation_max")) for lab in labels)
    focus = axes[1]
    shown = [tk for tk in focus.get_xticklabels() if tk.get_text() and focus.get_xlim()[0] <= tk.get_position()[0]
             <= focus.get_xlim()[1]]
    assert 1 <= len(shown) <= 6 and not any(t.get_text() for t in focus.get_xticklabels(minor=True))
    boxes = [t.get_window_extent() for t in shown]
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), "focus tick labels overlap"
    assert any("all 30 fields = 0" in t.get_text() for t in axes[3].texts)
    assert not any("gate" in t.get_text() for ax in axes for t in ax.get_legend().get_texts())

    wells = [{"row": r, "col": c, "flagged_fields": (r + c) % 3, "fields": 2} for r in (1, 2) for c in range(1, 7)]
    fig = heatmap_figure(wells, lambda w: float(w["flagged_fields"]), "t", "flagged fields", vmax=2.0,
                         cmap="viridis", counts=True)
    fig.canvas.draw()
    image = fig.axes[0].images[0]
    assert image.get_array().shape == (2, 6)
    ticks = [t for t in fig.axes[1].get_yticks() if 0 <= t <= 2]
    assert ticks and all(float(t).is_integer() for t in ticks)
