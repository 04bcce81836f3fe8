"""Plate runner, CellProfiler mode: image-set sharding, merge equal to a single-process run, resume."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from artseg_core.batch.cpshard import ImageSets, merge_shard_outputs, plan_shards

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "pipelines" / "mask_artifacts_nuclei.cppipe"


def test_plan_shards_even_and_group_aligned():
    flat = ImageSets(list(range(1, 13)), [1] * 12)
    assert plan_shards(flat, 3) == [(1, 4), (5, 8), (9, 12)]
    assert plan_shards(flat, 1) == [(1, 12)]
    assert plan_shards(flat, 20) == [(i, i) for i in range(1, 13)]
    grouped = ImageSets(list(range(1, 11)), [1, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    got = plan_shards(grouped, 2)
    assert got == [(1, 3), (4, 10)] or got == [(1, 7), (8, 10)]
    assert plan_shards(grouped, 5) == [(1, 3), (4, 7), (8, 10)]  # never more shards than groups
    assert plan_shards(ImageSets([], []), 3) == []


def test_merge_concatenates_tables_in_shard_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    (a / "Image.csv").write_text("ImageNumber,Count\n1,3\n2,4\n")
    (b / "Image.csv").write_text("ImageNumber,Count\n3,5\n")
    (a / "Experiment.csv").write_text("Key,Value\nRun_Timestamp,t1\n")
    (b / "Experiment.csv").write_text("Key,Value\nRun_Timestamp,t2\n")
    (b / "sub").mkdir()
    (b / "sub" / "mask.png").write_bytes(b"png")
    out = tmp_path / "out"
    out.mkdir()
    merge_shard_outputs([a, b], out)
    assert (out / "Image.csv").read_text() == "ImageNumber,Count\n1,3\n2,4\n3,5\n"
    assert (out / "Experiment.csv").read_text() == "Key,Value\nRun_Timestamp,t1\n"
    assert (out / "sub" / "mask.png").read_bytes() == b"png"
    (b / "Image.csv").write_text("ImageNumber,Other\n3,5\n")
    with pytest.raises(Exception, match="columns differ"):
        merge_shard_outputs([a, b], out)


def test_report_of_a_pipeline_run_without_maskartifacts(tmp_path):
    """A pipeline run folder as cpshard leaves it (written by hand: no CellProfiler needed) whose pipeline measures
    no artifacts: the page lists the wells and the pipeline's counts, and says why the artifact sections are left
    out instead of drawing empty axes; a failed image set is listed."""
    import json

    from click.testing import CliRunner

    from artseg_core.batch.layout import JOURNAL, PIPELINE_SETTINGS, PIPELINE_WORK, REPORT
    from artseg_core.cli.main import main

    out = tmp_path / "run"
    shard = out / PIPELINE_WORK / "000001-000004"
    shard.mkdir(parents=True)
    plate = tmp_path / "plate"
    table = "ImageNumber,FileName_DNA,PathName_DNA,Count_Nuclei,ModuleError_01Images,ModuleError_05Identify\n"
    for n, (well, site) in enumerate([("B02", 1), ("B02", 2), ("B03", 1), ("B03", 2)], start=1):
        table += f"{n},P1_{well}_s{site}_w2.tif,{plate},{10 * n},0,{int(n == 4)}\n"
    for d in (shard, out):
        (d / "Image.csv").write_text(table)
    (out / PIPELINE_WORK / PIPELINE_SETTINGS).write_text(json.dumps(
        {"pipeline": "/p/count_nuclei.cppipe", "plate": str(plate), "plate_root": str(plate), "n_image_sets": 5,
         "ranges": [[1, 4], [5, 5]], "maskartifacts": None, "runs": []}))
    (out / PIPELINE_WORK / JOURNAL).write_text(json.dumps({"key": "000001-000004", "status": "ok", "first": 1,
                                                           "last": 4, "returncode": 0, "seconds": 1.0}) + "\n")
    r = CliRunner().invoke(main, ["report", str(out)])
    assert r.exit_code == 0, r.output
    html = (out / REPORT).read_text()
    assert "<img" not in html  # nothing to draw: no empty axes
    assert html.count("the pipeline has no MaskArtifacts module") == 3  # heatmaps, distributions, worst fields
    for well in ("B02", "B03"):
        assert f"<td>{well}</td><td>2</td>" in html  # two fields per well, wells read from the file names
    assert "Nuclei per field" in html and "<td>15.0</td>" in html and "<td>30.0</td>" in html
    assert 'id="count-image_sets_in_plate">5<' in html and 'id="count-failed">1<' in html
    assert 'id="count-not_yet_processed">1<' in html and "flagged_artifacts" not in html
    assert "CellProfiler module error in Identify" in html and "P1_B03_s2_w2.tif" in html


def _table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if not k.startswith("ExecutionTime_")} for r in csv.DictReader(fh)]


def _check_pipeline_report(out: Path, model: Path) -> str:
    """The report of a pipeline run of the MaskArtifacts pipeline over tiny_plate (2 x 3 wells, 2 fields each):
    every well with its two fields and its CellProfiler counts, the artifact sections drawn from the module's
    measurements with the model's thresholds, every picture it refers to present."""
    import hashlib
    import re

    html = (out / "report.html").read_text()
    img = _table(out / "Image.csv")
    assert 'id="count-image_sets_in_plate">12<' in html and 'id="count-processed">12<' in html
    assert f'id="count-flagged_artifacts_">{sum(r["MaskArtifacts_Flagged"] == "1" for r in img)}<' in html
    for well in ("A01", "A02", "A03", "B01", "B02", "B03"):
        assert f"<td>{well}</td><td>2</td><td>0</td>" in html, well  # well, fields, failed
    assert "CleanNuclei per field" in html and "Nuclei per field" in html
    for r in img:  # each field's image (the one MaskArtifacts ran on) among the worst-12 thumbnails
        assert r["FileName_Brightfield"] in html
    assert "MaskArtifacts</th><td>image Brightfield, objects Artifacts" in html
    assert hashlib.sha256(model.read_bytes()).hexdigest() in html  # the model the module read, and its thresholds
    assert "focus_min" in html and "No threshold lines" not in html
    pngs = re.findall(r'src="([^"]+\.png)"', html)
    assert any("heatmap_area" in p for p in pngs) and any("heatmap_flagged" in p for p in pngs)
    assert "report_files/distributions.png" in pngs and sum("worst_" in p for p in pngs) == 12
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert (out / ref).is_file(), ref
    return html


@pytest.mark.slow
@pytest.mark.cellprofiler
def test_sharded_pipeline_equals_single_run_and_resumes(tiny_plate, trained_model_path, tmp_path):
    pytest.importorskip("cellprofiler_core", reason="CellProfiler 4.2.8.1 is not installed (make cellprofiler)")
    distributed = pytest.importorskip("distributed")
    from artseg_core.batch.cpshard import run_pipeline_sharded

    plate = tmp_path / "plate"  # the pipeline's layout: both channels and the model in one folder
    plate.mkdir()
    for sub in ("images", "nuclei"):
        for f in (tiny_plate / sub).glob("*.tif"):
            shutil.copy(f, plate / f.name)
    shutil.copy(trained_model_path, plate / "model.artseg")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    single = tmp_path / "single"
    r = subprocess.run([sys.executable, "-m", "cellprofiler", "-c", "-r", "-p", str(PIPELINE), "-i", str(plate),
                        "-o", str(single), "--plugins-directory", str(REPO / "plugins"), "-L", "WARNING"],
                       env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "sharded"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, host="127.0.0.1",
                                  protocol="tcp", dashboard_address=None) as cluster:
        s = run_pipeline_sharded(PIPELINE, plate, out, plugins_directory=REPO / "plugins", shards=2,
                                 scheduler=cluster.scheduler_address, progress=False)
    assert s.exit_code == 0 and s.n_image_sets == 12 and s.shards == [(1, 6), (7, 12)] and s.n_run == 2
    tables = sorted(p.name for p in single.glob("*.csv"))
    assert tables == sorted(p.name for p in out.glob("*.csv")) and "Image.csv" in tables
    for name in tables:
        if name == "Experiment.csv":
            continue
        assert _table(out / name) == _table(single / name), name
    img = _table(out / "Image.csv")
    assert [int(r["ImageNumber"]) for r in img] == list(range(1, 13))
    # the ArtSeg module ran in every shard: its per-image measurements are there and differ between images
    assert len({r["MaskArtifacts_Focus"] for r in img}) == 12 and all(r["MaskArtifacts_Flagged"] in "01" for r in img)
    # the run ends in the plate report, drawn from the merged tables
    assert s.report == out / "report.html"
    _check_pipeline_report(out, plate / "model.artseg")

    # resume, as a user runs it (artseg batch --pipeline): a lost shard is run again (locally this time), the
    # finished one is not; the merge is unchanged and the report is written again
    before = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    shutil.rmtree(out / "cp_shards" / "000007-000012")
    (out / "report.html").unlink()
    r = subprocess.run([sys.executable, "-m", "artseg_core.cli", "batch", str(plate), "--pipeline", str(PIPELINE),
                        "--plugins-directory", str(REPO / "plugins"), "--out", str(out), "--shards", "2",
                        "--workers", "2", "--quiet"], env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(1 run now, 1 before)" in r.stdout and f"report: {out / 'report.html'}" in r.stdout, r.stdout
    for name, data in before.items():
        if name not in ("Image.csv", "Experiment.csv"):
            assert (out / name).read_bytes() == data, name
    assert _table(out / "Image.csv") == _table(single / "Image.csv")
    html = _check_pipeline_report(out, plate / "model.artseg")
    assert html.count("<td>local processes</td>") == 1 and "<td>dask " in html  # both runs in the run table

    # artseg report OUT regenerates the page of a pipeline run folder (also with its pictures gone)
    shutil.rmtree(out / "report_files")
    (out / "report.html").write_text("stale")
    r = subprocess.run([sys.executable, "-m", "artseg_core.cli", "report", str(out)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == str(out / "report.html"), r.stderr[-3000:]
    assert _check_pipeline_report(out, plate / "model.artseg") == html
