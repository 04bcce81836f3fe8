"""Real microscopy images (../shared/data/real): a phantom-trained model runs on them and writes the right files."""
from __future__ import annotations

import csv

import numpy as np
import tifffile
from click.testing import CliRunner

from artseg_core.cli.main import main


def test_predict_all_ebony_watson_images(real_data_dir, trained_model_path, tmp_path):
    """All 30 Operetta brightfield images (1080x1080 big-endian uint16) get a mask of the right size and a row."""
    src = real_data_dir / "ebony_watson"
    files = sorted(src.glob("*.tiff"))
    assert len(files) == 30
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["predict", str(src), "--model", str(trained_model_path), "--out", str(out),
                                  "--no-gate", "--roi", "--quiet"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out / "artseg_results.csv")))
    assert len(rows) == 30 and all(row["status"] == "ok" for row in rows)
    for f in files:
        m = tifffile.imread(out / f"{f.stem}_mask.tif")
        assert m.shape == (1080, 1080) and m.dtype == np.uint8
        assert (out / f"{f.stem}_rois.zip").is_file()


def test_predict_rgb_jpeg_and_sephace_stack(real_data_dir, trained_model_path, tmp_path):
    """A phase-contrast RGB JPEG (grey content) and an 8-bit sephaCe plane predict with matching mask sizes."""
    jpg = real_data_dir / "wound_healing_phase" / "DMSO_B5_t24.JPG"
    tifs = sorted((real_data_dir / "sephace_zstacks" / "set1").glob("*.tif"))
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["predict", str(jpg), str(tifs[0]), "--model", str(trained_model_path),
                                  "--out", str(out), "--no-gate", "--quiet"])
    assert r.exit_code == 0, r.output
    assert tifffile.imread(out / f"{jpg.stem}_mask.tif").shape == (1536, 2304)
    assert tifffile.imread(out / f"{tifs[0].stem}_mask.tif").shape == tifffile.imread(tifs[0]).shape[-2:]
