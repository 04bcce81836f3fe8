"""Tests of the synthetic brightfield phantoms (artseg_core.phantoms)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from artseg_core.data import phantoms as P

pytestmark = pytest.mark.engine  # also run in the numpy-2 environment (make test-numpy2)

SHAPE = (192, 192)


def _same_field(a: P.Field, b: P.Field) -> bool:
    return (np.array_equal(a.image, b.image) and np.array_equal(a.nuclei_image, b.nuclei_image)
            and np.array_equal(a.artifact_labels, b.artifact_labels) and a.artifact_types == b.artifact_types
            and np.array_equal(a.nuclei_labels, b.nuclei_labels))


def test_deterministic_for_a_seed():
    a = P.make_field(SHAPE, seed=5)
    b = P.make_field(SHAPE, seed=5)
    c = P.make_field(SHAPE, seed=6)
    assert _same_field(a, b)
    assert not np.array_equal(a.image, c.image)


def test_no_global_random_state_used():
    np.random.seed(1)
    a = P.make_field(SHAPE, seed=3)
    state = np.random.get_state()[1].copy()
    np.random.seed(2)
    b = P.make_field(SHAPE, seed=3)
    assert _same_field(a, b)
    np.random.seed(1)
    P.make_field(SHAPE, seed=3)
    assert np.array_equal(np.random.get_state()[1], state)  # global stream untouched


@pytest.mark.parametrize("seed", range(8))
def test_outside_mask_identical_to_clean_field(seed):
    """Artifacts change pixels only inside their masks; the clean field is the same scene and noise."""
    f = P.make_field(SHAPE, seed=seed, n_artifacts=3, density=0.5)
    clean = P.make_field(SHAPE, seed=seed, artifacts=[], density=0.5)
    m = f.artifact_mask
    assert m.any() and not m.all()
    assert np.array_equal(f.image[~m], clean.image[~m])
    assert np.array_equal(f.nuclei_image[~m], clean.nuclei_image[~m])
    assert np.array_equal(f.nuclei_labels, clean.nuclei_labels)  # true nuclei are not changed by artifacts
    for lab in f.artifact_types:  # every object really changed the image
        obj = f.artifact_labels == lab
        assert np.any(f.image[obj] != clean.image[obj])


@pytest.mark.parametrize("kind", P.ARTIFACT_KINDS)
def test_each_kind_has_one_connected_nonempty_mask(kind):
    for seed in (0, 1, 2):
        f = P.make_field(SHAPE, seed=seed, artifacts=[kind], density=0.4)
        assert f.artifact_types == {1: kind}
        assert f.has_artifact
        obj = f.artifact_labels == 1
        assert obj.sum() >= 20
        assert ndi.label(obj)[1] == 1
        assert set(np.unique(f.artifact_labels)) == {0, 1}


@pytest.mark.parametrize("kind", P.ARTIFACT_KINDS)
def test_each_kind_is_visible(kind):
    """Inside the mask the brightfield differs from the clean field clearly above the camera noise."""
    for seed in (3, 4):
        f = P.make_field(SHAPE, seed=seed, artifacts=[kind], density=0.6)
        clean = P.make_field(SHAPE, seed=seed, artifacts=[], density=0.6)
        m = f.artifact_mask
        diff = np.abs(f.image.astype(float) - clean.image.astype(float))[m]
        noise = f.info["rel_noise"] * f.info["background"]
        assert np.percentile(diff, 90) > 2 * noise, kind


def test_artifact_sizes_span_small_to_large():
    kinds = ("debris", "bubble", "defocus", "blotch")
    areas = {k: [int(P.make_field((256, 256), seed=s, artifacts=[k], density=0.2).artifact_mask.sum())
                 for s in range(5)] for k in kinds}
    assert np.median(areas["debris"]) < 600  # specks: tens to hundreds of pixels
    assert max(max(areas[k]) for k in ("bubble", "defocus", "blotch")) > 0.15 * 256 * 256


def test_clean_and_count_options():
    assert not P.make_field(SHAPE, seed=0, artifacts=[]).has_artifact
    assert not P.make_field(SHAPE, seed=0, n_artifacts=0).has_artifact
    f = P.make_field(SHAPE, seed=0, artifacts=["bubble", "fibre"], n_artifacts=4)
    assert sorted(f.info["kinds"]) == ["bubble", "bubble", "fibre", "fibre"]
    assert set(f.artifact_types.values()) <= {"bubble", "fibre"}
    for seed in range(6):
        g = P.make_field(SHAPE, seed=seed)
        assert 1 <= len(g.info["kinds"]) <= 3 and g.has_artifact


@pytest.mark.parametrize("bad", [dict(artifacts=["dust"]), dict(bit_depth=12), dict(density=1.5),
                                 dict(shape=(10, 10)), dict(seed=-1), dict(n_artifacts=-1), dict(pixel_size=0)])
def test_bad_arguments_raise(bad):
    with pytest.raises(ValueError):
        P.make_field(**{"shape": SHAPE, **bad})


def test_unknown_kind_message_names_it():
    with pytest.raises(ValueError, match="dust"):
        P.make_field(SHAPE, artifacts=["bubble", "dust"])


@pytest.mark.parametrize("bit_depth,dtype,lo,hi", [(16, np.uint16, 8000, 55000), (8, np.uint8, 90, 220)])
def test_dtype_and_range(bit_depth, dtype, lo, hi):
    for seed in range(3):
        f = P.make_field(SHAPE, seed=seed, bit_depth=bit_depth, artifacts=[])
        for img in (f.image, f.nuclei_image):
            assert img.dtype == dtype and img.shape == SHAPE
        bg = np.median(f.image[ndi.binary_dilation(f.nuclei_labels > 0, iterations=30) == 0]) \
            if (f.nuclei_labels == 0).mean() > 0.5 else np.median(f.image)
        assert lo < bg < hi
        top = np.iinfo(dtype).max
        assert (f.image == 0).mean() < 1e-3 and (f.image == top).mean() < 1e-3
        # camera noise ~1-1.5 % of the background in flat regions (Operetta-like)
        flat = f.image.astype(float) - ndi.uniform_filter(f.image.astype(float), 5)
        quiet = ndi.uniform_filter(np.abs(flat), 9) < np.percentile(ndi.uniform_filter(np.abs(flat), 9), 30)
        rel = flat[quiet].std() * 1.12 / np.median(f.image)  # 1.12: variance kept by the 5x5 high-pass
        assert 0.004 < rel < 0.03
        assert f.artifact_labels.dtype == np.int32 and f.nuclei_labels.dtype == np.int32


def test_uneven_illumination():
    f = P.make_field((256, 256), seed=4, artifacts=[], density=0.0)
    smooth = ndi.gaussian_filter(f.image.astype(float), 12)
    assert (smooth.max() - smooth.min()) / smooth.mean() > 0.01


def test_density_parameter():
    sparse = P.make_field((256, 256), seed=2, artifacts=[], density=0.1)
    dense = P.make_field((256, 256), seed=2, artifacts=[], density=0.9)
    assert dense.nuclei_labels.max() > 3 * max(sparse.nuclei_labels.max(), 1)
    assert sparse.density == pytest.approx(0.1) and dense.density == pytest.approx(0.9)


def test_cells_have_dark_parts():
    """Dark spots are not only artifacts: clean cells hold granules/nucleoli darker than the background."""
    f = P.make_field((256, 256), seed=1, artifacts=[], density=0.7)
    img = f.image.astype(float)
    bg = np.median(img)
    local_min = ndi.minimum_filter(img, 5) == img
    dark_spots = local_min & (img < 0.85 * bg)
    assert dark_spots.sum() >= 10


def test_nuclei_labels_consistent_with_nuclei_image():
    f = P.make_field((256, 256), seed=9, artifacts=[], density=0.6)
    nl, img = f.nuclei_labels, f.nuclei_image.astype(float)
    n = int(nl.max())
    assert n >= 5 and set(np.unique(nl)) == set(range(n + 1))  # numbered 1..n
    for lab in range(1, n + 1):
        assert ndi.label(nl == lab)[1] == 1
    far = ndi.binary_dilation(nl > 0, iterations=6) == 0
    bg = np.median(img[far])
    means = ndi.mean(img, nl, range(1, n + 1))
    assert np.all(means > bg + 0.3 * (np.median(means) - bg))  # every nucleus stands out of the background
    # a global threshold halfway between background and the nuclei reproduces the labels
    thr = bg + 0.3 * (np.median(means) - bg)
    seg = ndi.gaussian_filter(img, 1) > thr
    iou = (seg & (nl > 0)).sum() / (seg | (nl > 0)).sum()
    assert iou > 0.75


def test_artifacts_pollute_nuclear_channel():
    """Dead-cell clumps show bright condensed nuclei where no true nucleus is."""
    for seed in range(3):
        f = P.make_field((256, 256), seed=seed, artifacts=["clump"], density=0.3)
        clean = P.make_field((256, 256), seed=seed, artifacts=[], density=0.3)
        m = f.artifact_mask & (ndi.binary_dilation(f.nuclei_labels > 0, iterations=2) == 0)
        nuc_level = np.median(clean.nuclei_image[clean.nuclei_labels > 0])
        assert f.nuclei_image[m].max() > nuc_level
        assert f.nuclei_image[m].astype(float).mean() > clean.nuclei_image[m].astype(float).mean()


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_make_plate(tmp_path):
    labels_csv = P.make_plate(tmp_path, rows=2, cols=3, fields=2, prevalence=0.25, seed=3, shape=(96, 128),
                              bit_depth=8, plate="PL1")
    assert labels_csv == tmp_path / "labels.csv"
    rows = _read_csv(labels_csv)
    assert len(rows) == 12
    assert sum(r["label"] == "artifact" for r in rows) == round(0.25 * 12)
    names = [r["image"] for r in rows]
    assert names[0] == "PL1_A01_s1_w1.tif" and names[-1] == "PL1_B03_s2_w1.tif"
    arts = _read_csv(tmp_path / "artifacts.csv")
    nucs = {r["image"]: r for r in _read_csv(tmp_path / "nuclei.csv")}
    assert set(nucs) == set(names)
    for r in rows:
        stem = r["image"][:-len("_w1.tif")]
        img = tifffile.imread(tmp_path / "images" / r["image"])
        nuc = tifffile.imread(tmp_path / "nuclei" / f"{stem}_w2.tif")
        mask = tifffile.imread(tmp_path / "masks" / r["image"])
        nmask = tifffile.imread(tmp_path / "nuclei_masks" / r["image"])
        assert img.shape == nuc.shape == mask.shape == nmask.shape == (96, 128)
        assert img.dtype == nuc.dtype == np.uint8 and mask.dtype == np.uint16 and nmask.dtype == np.uint16
        assert (r["label"] == "artifact") == bool(mask.any())
        objs = [a for a in arts if a["image"] == r["image"]]
        assert sorted(int(a["object"]) for a in objs) == list(range(1, int(mask.max()) + 1))
        for a in objs:
            obj = mask == int(a["object"])
            assert int(a["area"]) == obj.sum() and a["type"] in P.ARTIFACT_KINDS
            rr, cc = np.nonzero(obj)
            assert (int(a["bbox_min_row"]), int(a["bbox_min_col"]), int(a["bbox_max_row"]),
                    int(a["bbox_max_col"])) == (rr.min(), cc.min(), rr.max() + 1, cc.max() + 1)
        n_nuc = len(np.unique(nmask[nmask > 0]))
        assert int(nucs[r["image"]]["n_nuclei"]) == n_nuc
        overlapping = len(np.unique(nmask[(mask > 0) & (nmask > 0)]))
        assert int(nucs[r["image"]]["n_nuclei_overlapping_artifacts"]) == overlapping


def test_make_plate_prevalence_kinds_and_determinism(tmp_path):
    a = P.make_plate(tmp_path / "a", rows=1, cols=5, fields=1, prevalence=0.6, seed=11, shape=(64, 64),
                     kinds=["debris"])
    b = P.make_plate(tmp_path / "b", rows=1, cols=5, fields=1, prevalence=0.6, seed=11, shape=(64, 64),
                     kinds=["debris"])
    assert a.read_text() == b.read_text()
    assert sum(r["label"] == "artifact" for r in _read_csv(a)) == 3
    assert {r["type"] for r in _read_csv(tmp_path / "a" / "artifacts.csv")} == {"debris"}
    for r in _read_csv(a):
        assert np.array_equal(tifffile.imread(tmp_path / "a" / "images" / r["image"]),
                              tifffile.imread(tmp_path / "b" / "images" / r["image"]))
    for p, n_art in ((0.0, 0), (1.0, 5)):
        rows = _read_csv(P.make_plate(tmp_path / f"p{p}", rows=1, cols=5, fields=1, prevalence=p, seed=1,
                                      shape=(64, 64)))
        assert sum(r["label"] == "artifact" for r in rows) == n_art


@pytest.mark.parametrize("bad", [dict(prevalence=1.5), dict(rows=0), dict(kinds=["smudge"]), dict(plate="a/b")])
def test_make_plate_bad_arguments(tmp_path, bad):
    with pytest.raises(ValueError):
        P.make_plate(tmp_path, **{"shape": (64, 64), **bad})


def test_well_names():
    assert P.well_name_0based(0, 0) == "A01" and P.well_name_0based(7, 11) == "H12"
    with pytest.raises(ValueError):
        P.well_name_0based(26, 0)
