"""Output writers: ImageJ ROI sets (read back with roifile and, when available, ImageJ itself), overlay, TIFFs."""
from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import roifile
import tifffile
from PIL import Image
from scipy import ndimage as ndi
from skimage.draw import polygon2mask

from artseg_core.imgproc.postprocess import label_objects
from artseg_core.io.outputs import (
    outline_polygons,
    overlay_rgb,
    roi_name,
    trace_outline,
    write_cleaned,
    write_mask_tiff,
    write_overlay_png,
    write_prob_tiff,
    write_roi_zip,
)

pytestmark = pytest.mark.engine  # also run in the numpy-2 environment (make test-numpy2)


def _shoelace(xy: np.ndarray) -> float:
    x, y = xy[:, 0].astype(float), xy[:, 1].astype(float)
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _objects(shape=(90, 120), seed=0):
    """Random blobs of varied shape (concavities, diagonal contacts, border contacts), holes filled."""
    rng = np.random.default_rng(seed)
    mask = ndi.gaussian_filter(rng.random(shape), 2.5) > 0.53
    mask[0:6, 50:58] = True  # touches the top border
    mask[40, 0] = mask[41, 1] = mask[42, 2] = True  # diagonal chain at the left border
    mask = ndi.binary_fill_holes(mask)
    return label_objects(mask)


def _roi_mask(xy: np.ndarray, shape) -> np.ndarray:
    """Rasterise a corner-coordinate polygon by pixel centres (shift -0.5: centres on integers)."""
    return polygon2mask(shape, xy[:, ::-1].astype(float) - 0.5)


def test_trace_single_shapes():
    one = np.zeros((3, 3), bool)
    one[1, 1] = True
    np.testing.assert_array_equal(trace_outline(one), [[1, 1], [2, 1], [2, 2], [1, 2]])
    ell = np.zeros((4, 4), bool)
    ell[0:3, 0] = True
    ell[2, 0:3] = True
    assert _shoelace(trace_outline(ell)) == 5
    diag = np.eye(4, dtype=bool)  # 8-connected chain: one outline touching itself at corners
    poly = trace_outline(diag)
    assert _shoelace(poly) == 4 and len(poly) == 4 * 4
    with pytest.raises(ValueError, match="empty"):
        trace_outline(np.zeros((2, 2), bool))


def test_outlines_have_exact_area_and_rasterise_back_to_the_object():
    labels = _objects()
    polys = outline_polygons(labels)
    assert len(polys) == labels.max() > 5
    for lab, xy in polys:
        obj = labels == lab
        assert _shoelace(xy) == obj.sum()  # exact: outlines follow pixel edges
        np.testing.assert_array_equal(_roi_mask(xy, labels.shape), obj)


def test_roi_zip_reads_back_with_roifile(tmp_path):
    labels = _objects(seed=1)
    path = write_roi_zip(labels, tmp_path / "img_rois.zip")
    rois = roifile.roiread(path)
    n = int(labels.max())
    assert isinstance(rois, list) and len(rois) == n
    areas = np.bincount(labels.ravel())[1:]
    H, W = labels.shape
    for k, roi in enumerate(rois, start=1):
        assert roi.name == roi_name(k) == f"artifact-{k:03d}"
        assert roi.roitype == roifile.ROI_TYPE.TRACED
        xy = roi.coordinates()
        # tolerance: none; corner-following outlines enclose exactly the object's pixels
        assert _shoelace(xy) == areas[k - 1]
        assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= W and xy[:, 1].min() >= 0 and xy[:, 1].max() <= H
    assert sorted(zipfile.ZipFile(path).namelist()) == sorted(f"artifact-{k:03d}.roi" for k in range(1, n + 1))


def test_roi_zip_names_empty_and_errors(tmp_path):
    labels = np.zeros((10, 10), np.int32)
    labels[2:4, 2:4] = 1
    labels[6:9, 5:9] = 2
    p = write_roi_zip(labels, tmp_path / "named.zip", names=["dust", "fibre"])
    assert [r.name for r in roifile.roiread(p)] == ["dust", "fibre"]
    empty = write_roi_zip(np.zeros((5, 5), np.int32), tmp_path / "empty.zip")
    assert zipfile.ZipFile(empty).namelist() == []
    with pytest.raises(ValueError, match="names"):
        write_roi_zip(labels, tmp_path / "bad.zip", names=["one"])
    with pytest.raises(ValueError, match="unique"):
        write_roi_zip(labels, tmp_path / "bad.zip", names=["a", "a"])
    assert not (tmp_path / "bad.zip").exists()
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temp files left


def test_overlay_shape_dtype_and_colours(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.normal(1000, 50, (60, 80)).astype(np.uint16)
    mask = np.zeros(img.shape, bool)
    mask[10:30, 20:50] = True
    rgb = overlay_rgb(img, mask)
    assert rgb.shape == (60, 80, 3) and rgb.dtype == np.uint8
    # outside: grey; outline: pure colour; interior: tinted towards red
    assert np.all(rgb[~mask][:, 0] == rgb[~mask][:, 1]) and np.all(rgb[~mask][:, 1] == rgb[~mask][:, 2])
    assert tuple(rgb[10, 30]) == (255, 0, 0) and tuple(rgb[29, 49]) == (255, 0, 0)
    inner = rgb[15:25, 25:45].astype(int)
    assert np.all(inner[..., 0] > inner[..., 1]) and np.all(inner[..., 1] == inner[..., 2])
    weak = overlay_rgb(img, mask, prob=np.full(img.shape, 0.3, np.float32))[15:25, 25:45].astype(int)
    assert (weak[..., 0] - weak[..., 1]).mean() < (inner[..., 0] - inner[..., 1]).mean()
    p = write_overlay_png(tmp_path / "o.png", img, mask)
    back = np.asarray(Image.open(p))
    np.testing.assert_array_equal(back, rgb)
    with pytest.raises(ValueError, match="shape"):
        overlay_rgb(img, mask[:10])


def test_tiff_writers_round_trip(tmp_path):
    mask = np.zeros((40, 50), bool)
    mask[5:9, 7:20] = True
    p = write_mask_tiff(tmp_path / "m.tif", mask, pixel_size=0.5)
    with tifffile.TiffFile(p) as tf:
        assert tf.is_imagej
        m = tf.asarray()
        assert tf.imagej_metadata.get("unit") in ("um", "micron")
        xres = tf.pages[0].tags["XResolution"].value
        assert xres[0] / xres[1] == pytest.approx(2.0)
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 255}
    np.testing.assert_array_equal(m == 255, mask)
    prob = np.random.default_rng(3).random((40, 50)).astype(np.float32)
    q = write_prob_tiff(tmp_path / "p.tif", prob)
    np.testing.assert_array_equal(tifffile.imread(q), prob)
    for dtype in (np.uint8, np.uint16, np.float32, np.float64, np.int32):
        img = (prob * 100).astype(dtype)
        c = write_cleaned(tmp_path / f"c_{np.dtype(dtype).name}.tif", img, pixel_size=0.25)
        back = tifffile.imread(c)
        assert back.dtype == img.dtype
        np.testing.assert_array_equal(back, img)
    with pytest.raises(ValueError, match="2-D"):
        write_mask_tiff(tmp_path / "x.tif", np.zeros((2, 3, 4), bool))


_JAVA = r"""
import ij.IJ; import ij.ImagePlus; import ij.gui.Roi; import ij.io.RoiDecoder;
import java.io.*; import java.util.zip.*;
public class CheckRois {
  public static void main(String[] a) throws Exception {
    ImagePlus imp = IJ.openImage(a[1]);
    System.out.println("MASK " + imp.getWidth() + " " + imp.getHeight() + " " + imp.getBitDepth()
        + " " + imp.getProcessor().getStatistics().histogram[255]);
    ZipInputStream z = new ZipInputStream(new FileInputStream(a[0])); ZipEntry e;
    while ((e = z.getNextEntry()) != null) {
      byte[] b = z.readAllBytes();
      Roi r = new RoiDecoder(b, e.getName()).getRoi();
      int n = 0; for (java.awt.Point p : r.getContainedPoints()) n++;
      System.out.println("ROI " + r.getName() + " " + r.getType() + " " + n);
    }
  }
}
"""


@pytest.mark.imagej
def test_imagej_reads_rois_and_mask(tmp_path):
    """ImageJ 1.x itself: ROI pixel counts equal object areas and the mask TIFF opens as 8-bit."""
    ij = Path("/usr/share/java/ij.jar")
    if not ij.is_file() or not shutil.which("javac") or not shutil.which("java"):
        pytest.skip("needs Debian ImageJ (/usr/share/java/ij.jar) and a JDK")
    labels = _objects(seed=4)
    write_roi_zip(labels, tmp_path / "r.zip")
    write_mask_tiff(tmp_path / "m.tif", labels > 0)
    (tmp_path / "CheckRois.java").write_text(_JAVA)
    subprocess.run(["javac", "-cp", str(ij), "CheckRois.java"], cwd=tmp_path, check=True, timeout=120)
    res = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", f"{ij}:.", "CheckRois", "r.zip", "m.tif"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    mask_line = [ln.split() for ln in lines if ln.startswith("MASK")][0]
    assert mask_line[1:] == [str(labels.shape[1]), str(labels.shape[0]), "8", str(int((labels > 0).sum()))]
    rois = [ln.split() for ln in lines if ln.startswith("ROI")]
    areas = np.bincount(labels.ravel())[1:]
    assert len(rois) == len(areas)
    for (_, name, _, n), k in zip(rois, range(1, len(areas) + 1)):
        assert name == roi_name(k) and int(n) == areas[k - 1]
    assert {r[2] for r in rois} == {"4"}  # Roi.TRACED_ROI


def test_overlay_blocks_do_not_change_the_result():
    """Row-block processing (with a halo row for the outline) equals a single block."""
    rng = np.random.default_rng(6)
    img = rng.random((70, 40)).astype(np.float32)
    mask = ndi.gaussian_filter(rng.random((70, 40)), 2) > 0.52
    prob = rng.random((70, 40)).astype(np.float32)
    whole = overlay_rgb(img, mask, prob, block_rows=1000)
    for rows in (1, 7, 32):
        np.testing.assert_array_equal(overlay_rgb(img, mask, prob, block_rows=rows), whole)
    outline = mask & ~ndi.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)
    assert np.all(whole[outline] == (255, 0, 0))


def test_touching_labels_holes_and_row_blocks(monkeypatch):
    labels = np.zeros((30, 30), np.int32)
    labels[2:10, 2:10] = 1
    labels[2:10, 10:15] = 2  # touches label 1 (user-supplied labels may touch)
    labels[15:28, 5:25] = 3
    labels[18:22, 10:14] = 0  # a 16-pixel hole in object 3
    polys = dict(outline_polygons(labels))
    assert _shoelace(polys[1]) == 64 and _shoelace(polys[2]) == 40
    assert _shoelace(polys[3]) == (labels == 3).sum() + 16  # outer outline only
    # edges built in row blocks of one or a few rows (halo handling) give the same outlines
    from artseg_core.io import outputs

    big = _objects(seed=8)
    ref = outline_polygons(big)
    real = outputs._boundary_edges
    for block in (1, 3 * big.shape[1] + 5):
        monkeypatch.setattr(outputs, "_boundary_edges", lambda lab, b=block: real(lab, block_pixels=b))
        got = outline_polygons(big)
        assert [k for k, _ in got] == [k for k, _ in ref]
        for (_, p), (_, q) in zip(got, ref):
            np.testing.assert_array_equal(p, q)
