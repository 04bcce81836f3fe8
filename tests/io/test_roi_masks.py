"""ImageJ ROI sets as training masks: ``artseg train --masks`` finds ``<stem>_rois.zip`` / ``.roi`` and rasterises
them the way ImageJ fills ROIs (pixel centres), so ArtSeg's own ROI output, corrected in Fiji, comes back exactly."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.engine


def _labels():
    lab = np.zeros((64, 80), np.int32)
    lab[5:20, 10:30] = 1                     # rectangle
    yy, xx = np.mgrid[:64, :80]
    lab[(yy - 42) ** 2 + (xx - 50) ** 2 < 12 ** 2] = 2   # disc
    lab[50:60, 5:8] = 3                      # thin bar
    return lab


def test_artseg_roi_output_round_trips(tmp_path):
    from artseg_core.io.labels import find_mask, read_mask
    from artseg_core.io.outputs import write_roi_zip

    lab = _labels()
    write_roi_zip(lab, tmp_path / "plate_A01_s1_rois.zip")
    found = find_mask(tmp_path, tmp_path / "plate_A01_s1.tif", rois=True)
    assert found == tmp_path / "plate_A01_s1_rois.zip"
    assert find_mask(tmp_path, tmp_path / "plate_A01_s1.tif") is None  # only when asked (evaluate reads images)
    m = read_mask(found, lab.shape)
    assert m.dtype == bool and np.array_equal(m, lab > 0)


def test_rect_oval_polygon_and_single_roi(tmp_path):
    import roifile

    from artseg_core.io.labels import find_mask, read_mask, rasterize_rois

    rect = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=10, top=4, right=20, bottom=9)
    poly = roifile.ImagejRoi.frompoints(np.array([[30, 30], [40, 30], [40, 40], [30, 40]], np.float32), name="sq")
    poly.roitype = roifile.ROI_TYPE.POLYGON
    line = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.LINE, x1=0, y1=0, x2=10, y2=10)
    roifile.roiwrite(tmp_path / "f_rois.zip", [rect, poly, line])
    m = read_mask(tmp_path / "f_rois.zip", (50, 50))
    want = np.zeros((50, 50), bool)
    want[4:9, 10:20] = True
    want[30:40, 30:40] = True
    assert np.array_equal(m, want)  # the line adds nothing

    oval = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.OVAL, left=0, top=0, right=20, bottom=20)
    roifile.roiwrite(tmp_path / "g.roi", oval)
    assert find_mask(tmp_path, tmp_path / "g.tif", rois=True) == tmp_path / "g.roi"
    o = rasterize_rois(tmp_path / "g.roi", (30, 30))
    assert abs(int(o.sum()) - np.pi * 10 ** 2) < 20 and o[10, 10] and not o[0, 0] and not o[25, 25]


def test_image_mask_wins_and_bad_files_are_named(tmp_path):
    import roifile

    from artseg_core.io.files import write_tiff
    from artseg_core.io.images import ImageReadError
    from artseg_core.io.labels import find_mask, read_mask

    roifile.roiwrite(tmp_path / "h_rois.zip", [roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=1, top=1,
                                                                 right=3, bottom=3)])
    write_tiff(tmp_path / "h_mask.tif", np.zeros((8, 8), np.uint8))
    assert find_mask(tmp_path, tmp_path / "h.tif", rois=True) == tmp_path / "h_mask.tif"
    (tmp_path / "bad_rois.zip").write_bytes(b"not a zip")
    with pytest.raises(ImageReadError, match="bad_rois.zip"):
        read_mask(tmp_path / "bad_rois.zip", (8, 8))
    roifile.roiwrite(tmp_path / "lines.roi", roifile.ImagejRoi(roitype=roifile.ROI_TYPE.LINE, x1=0, y1=0, x2=5, y2=5))
    with pytest.raises(ImageReadError, match="no area ROI"):
        read_mask(tmp_path / "lines.roi", (8, 8))
    with pytest.raises(ImageReadError, match="differs"):
        read_mask(tmp_path / "h_mask.tif", (9, 8))


def test_load_labeled_set_uses_roi_sets(tiny_plate, tmp_path):
    from artseg_core.io.labels import load_labeled_set, read_mask
    from artseg_core.io.outputs import write_roi_zip
    from artseg_core.io.images import read_image

    masks = tmp_path / "masks"
    masks.mkdir()
    name = "phantom_A01_s1_w1"
    truth = read_image(tiny_plate / "masks" / f"{name}.tif", allow_constant=True)
    lab = np.zeros((256, 256), np.int32)
    lab[40:80, 100:150] = 1
    write_roi_zip(lab, masks / f"{name}_rois.zip")
    samples = load_labeled_set(tiny_plate / "images", tiny_plate / "labels.csv", masks=masks)
    with_mask = [s for s in samples if s.mask_path is not None]
    assert [s.path.stem for s in with_mask] == [name]
    assert np.array_equal(read_mask(with_mask[0].mask_path, truth.shape), lab > 0)


def test_training_reads_roi_sets(tmp_path):
    from artseg_core.io.outputs import write_roi_zip
    from artseg_core.training.pipeline import _read_mask

    lab = _labels()
    write_roi_zip(lab, tmp_path / "x_rois.zip")
    assert np.array_equal(_read_mask(tmp_path / "x_rois.zip", lab.shape), lab > 0)
