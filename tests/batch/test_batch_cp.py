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


def _table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if not k.startswith("ExecutionTime_")} for r in csv.DictReader(fh)]


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

    # resume: a lost shard is run again (locally this time), the finished one is not; the merge is unchanged
    before = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    shutil.rmtree(out / "cp_shards" / "000007-000012")
    s = run_pipeline_sharded(PIPELINE, plate, out, plugins_directory=REPO / "plugins", shards=2, workers=2,
                             progress=False)
    assert s.exit_code == 0 and s.n_run == 1 and s.n_done_before == 1
    for name, data in before.items():
        if name not in ("Image.csv", "Experiment.csv"):
            assert (out / name).read_bytes() == data, name
    assert _table(out / "Image.csv") == _table(single / "Image.csv")
