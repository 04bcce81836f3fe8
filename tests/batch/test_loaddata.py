"""artseg_core.batch.loaddata: the LoadData table that pairs each field's channels with its ArtSeg mask.

The CellProfiler run of the table (no plugin) is in tests/plugins/test_cellprofiler.py; here the table itself
and its refusals, on a hand-made finished run (results.csv + batch.json) so that no model is needed.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from artseg_core.batch.loaddata import parse_channel_names, write_loaddata
from artseg_core.batch.manifest import ManifestError
from artseg_core.io.files import write_tiff


def _plate(tmp_path, wells=("A01", "A02"), channels=(1, 2), missing=()):
    plate = tmp_path / "plate"
    plate.mkdir()
    for w in wells:
        for c in channels:
            if (w, c) not in missing:
                write_tiff(plate / f"P1_{w}_s1_w{c}.tif", np.full((8, 8), 10 * c, np.uint16))
    return plate


def _finished_run(tmp_path, plate, wells=("A01", "A02"), failed=()):
    out = tmp_path / "run"
    (out / "outputs").mkdir(parents=True)
    rows = []
    for i, w in enumerate(wells):
        key = f"P1_{w}_s1_w1.tif"
        ok = w not in failed
        if ok:
            write_tiff(out / "outputs" / f"P1_{w}_s1_w1_mask.tif", np.zeros((8, 8), np.uint8))
        rows.append({"image": key, "status": "ok" if ok else "error", "flagged": "True" if i else "False",
                     "area_fraction": "0.1" if i else "0.0", "p_artifact": "0.7" if i else "0.1",
                     "mask": f"outputs/P1_{w}_s1_w1_mask.tif" if ok else ""})
    with open(out / "results.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    (out / "batch.json").write_text(json.dumps({"plate": str(plate), "channel": "1", "name_regex": None}))
    return out


def test_table_pairs_every_channel_with_the_mask(tmp_path):
    plate = _plate(tmp_path)
    out = _finished_run(tmp_path, plate)
    t = write_loaddata(out, names=parse_channel_names("Brightfield=1,Nuclei=w2"))
    assert t.path == out / "loaddata.csv" and t.rows == 2 and t.left_out == []
    with open(t.path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["Metadata_Well"] for r in rows] == ["A01", "A02"]
    for r in rows:
        assert r["FileName_Brightfield"].endswith("_w1.tif") and r["FileName_Nuclei"].endswith("_w2.tif")
        assert r["PathName_Brightfield"] == r["PathName_Nuclei"] == str(plate.resolve())
        assert r["FileName_ArtifactMask"] == r["FileName_Brightfield"].replace(".tif", "_mask.tif")
        assert r["PathName_ArtifactMask"] == str((out / "outputs").resolve())
    assert [r["Metadata_ArtSegFlagged"] for r in rows] == ["0", "1"]
    # automatic names: Brightfield for the processed channel, Channel<id> for the others
    t = write_loaddata(out)
    assert list(t.names) == ["Brightfield", "Channel2", "ArtifactMask"]


def test_failed_fields_are_left_out_and_listed(tmp_path):
    plate = _plate(tmp_path)
    out = _finished_run(tmp_path, plate, failed=("A01",))
    t = write_loaddata(out, names={"Brightfield": "1"})
    assert t.rows == 1 and len(t.left_out) == 1 and "P1_A01_s1_w1.tif" in t.left_out[0]


def test_refusals_name_the_problem(tmp_path):
    plate = _plate(tmp_path, missing=(("A02", 2),))
    out = _finished_run(tmp_path, plate)
    with pytest.raises(ManifestError, match="P1_A02_s1_w1.tif has no image of channel 2 \\(Nuclei\\)"):
        write_loaddata(out, names={"Brightfield": "1", "Nuclei": "2"})
    with pytest.raises(ManifestError, match="--loaddata DNA=5"):
        write_loaddata(out, names={"Brightfield": "1", "DNA": "5"})
    with pytest.raises(FileNotFoundError, match="no results table"):
        write_loaddata(tmp_path / "plate")
    for bad, msg in (("Brightfield", "not NAME=CHANNEL"), ("1x=1", "not a CellProfiler image name"),
                     ("A=1,A=2", "given twice"), ("ArtifactMask=1", "reserved"), ("A=", "no channel")):
        with pytest.raises(ValueError, match=msg):
            parse_channel_names(bad)
    assert parse_channel_names("auto") is None and parse_channel_names("A=1;B=2") == {"A": "1", "B": "2"}
