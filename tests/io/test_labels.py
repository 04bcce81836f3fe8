"""labels.csv: an image listed twice counts once, an image labelled both ways is refused (issue 15.11)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from artseg_core.io.labels import LabelFileError, read_labels_csv

pytestmark = pytest.mark.engine


def _imgs(d, *names):
    import tifffile

    d.mkdir(exist_ok=True)
    for i, n in enumerate(names):
        tifffile.imwrite(d / n, np.arange(64, dtype=np.uint16).reshape(8, 8) + i)


def test_duplicate_rows_count_once_with_a_warning(tmp_path, caplog):
    _imgs(tmp_path, "a.tif", "b.tif")
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\na.tif,artifact\nb.tif,clean\n./a.tif,artifact\n")
    with caplog.at_level(logging.WARNING, logger="artseg.train"):
        pairs = read_labels_csv(csv)
    assert [(p.name, lbl) for p, lbl in pairs] == [("a.tif", 1), ("b.tif", 0)]
    assert "line 4" in caplog.text and "as on line 2" in caplog.text


def test_conflicting_rows_are_refused_naming_both_lines(tmp_path):
    _imgs(tmp_path, "a.tif", "b.tif")
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\na.tif,artifact\nb.tif,clean\na.tif,clean\n")
    with pytest.raises(LabelFileError, match=r"lines 2 and 4: image 'a.tif' is labelled both artifact and clean"):
        read_labels_csv(csv)
