"""Pixel evidence (clean vs artifact fields), the normality model and the clean-field threshold."""
from __future__ import annotations

import numpy as np
import pytest

from artseg_core.imgproc.features import N_FEATURES, deviation_z, pixel_features, sample_pixels
from artseg_core.weak.evidence import (
    Normality,
    PixelEvidence,
    clean_field_threshold,
    fit_normality,
    fit_pixel_evidence,
    object_peak,
)

pytestmark = pytest.mark.engine


def _field(rng, fibre: bool, size: int = 96, n_cells: int = 6, short: bool = False, with_cells: bool = False):
    """Noise with dark round 'cells' (in every field) and, for artifact fields, a bright thin line (a fibre) across
    the field (``short``: 60 px long). Returns (field, fibre mask) or, ``with_cells``, (field, fibre, cells)."""
    yy, xx = np.mgrid[:size, :size]
    x = 0.5 + 0.03 * rng.standard_normal((size, size))
    cells = np.zeros((size, size), bool)
    for _ in range(n_cells):
        cy, cx = rng.integers(8, size - 8, 2)
        cells |= (yy - cy) ** 2 + (xx - cx) ** 2 < 25
    x[cells] -= 0.3
    truth = np.zeros((size, size), bool)
    if fibre:
        if short:
            r0, c0 = rng.integers(40, size - 40, 2)
            truth = (np.abs(yy - r0 - 0.3 * (xx - c0)) < 1.5) & (np.abs(xx - c0) < 30)
        else:
            r0 = rng.integers(20, size - 20)
            truth = np.abs(yy - r0 - 0.3 * (xx - size / 2)) < 1.5
        truth &= ~cells
        x[truth] += 0.4
    return (x.astype(np.float32), truth, cells) if with_cells else (x.astype(np.float32), truth)


def test_features_shape_and_median_invariance():
    rng = np.random.default_rng(0)
    x, _ = _field(rng, fibre=False)
    f = pixel_features(x)
    assert f.shape == (N_FEATURES, 96, 96) and f.dtype == np.float32
    # a field's overall brightness does not enter (intensities relative to its median)
    np.testing.assert_allclose(pixel_features(x + 0.2), f, atol=1e-4)
    with pytest.raises(ValueError, match="2-D"):
        pixel_features(np.zeros((2, 8, 8)))


def test_features_are_the_scale_normalised_gaussian_derivatives():
    """The filter bank shares 1-D passes between derivatives; its values are those of the 2-D definitions."""
    from scipy import ndimage as ndi

    from artseg_core.imgproc.features import PER_SCALE, SCALES

    x, _ = _field(np.random.default_rng(5), fibre=True)
    f = pixel_features(x)
    x0 = (x - np.median(x)).astype(np.float32)
    for j, s in enumerate(SCALES):
        def d(order):
            return ndi.gaussian_filter(x0, s, order=order, mode="reflect")
        hxx, hyy, hxy = d((0, 2)), d((2, 0)), d((1, 1))
        disc = np.sqrt(((hxx - hyy) / 2) ** 2 + hxy ** 2)
        k = j * len(PER_SCALE)
        np.testing.assert_array_equal(f[k], d((0, 0)))
        np.testing.assert_array_equal(f[k + 1], s * np.hypot(d((0, 1)), d((1, 0))))
        np.testing.assert_array_equal(f[k + 2], s * s * ((hxx + hyy) / 2 + disc))
        np.testing.assert_array_equal(f[k + 3], s * s * ((hxx + hyy) / 2 - disc))


def test_fits_do_not_depend_on_the_number_of_filter_bank_threads():
    rng = np.random.default_rng(4)
    fields = [_field(rng, fibre=bool(i % 2)) for i in range(8)]
    imgs, labels = [f for f, _ in fields], [i % 2 for i in range(8)]
    one, _ = fit_pixel_evidence(imgs, labels, seed=0, per_field=300, epochs=1, workers=1)
    two, _ = fit_pixel_evidence(imgs, labels, seed=0, per_field=300, epochs=1, workers=2)
    np.testing.assert_array_equal(one.score(imgs[1]), two.score(imgs[1]))
    n1, _ = fit_normality(imgs[::2], seed=0, per_field=300, components=2, workers=1)
    n2, _ = fit_normality(imgs[::2], seed=0, per_field=300, components=2, workers=3)
    np.testing.assert_array_equal(n1.means, n2.means)


def test_sampling_prefers_unusual_pixels():
    rng = np.random.default_rng(1)
    x = np.full((64, 64), 0.5, np.float32) + 0.01 * np.random.default_rng(2).standard_normal((64, 64)).astype(
        np.float32)
    x[30:34, 30:34] = 1.0  # 16 of 4096 pixels (0.4 %)
    f = pixel_features(x)
    rows = sample_pixels(f, 600, rng)
    assert rows.shape == (600, N_FEATURES)
    # the pixels around the spot (strong deviation from the background) are drawn far more often than their
    # share of the field
    unusual = deviation_z(f) > 6
    share = unusual.mean()
    assert 0 < share < 0.05
    cut = f[-1][unusual].min()
    assert np.mean(rows[:, -1] >= cut) > 10 * share


def test_pixel_evidence_separates_fibres_from_cells_that_clean_fields_also_have():
    rng = np.random.default_rng(3)
    fields = [_field(rng, fibre=bool(i % 2)) for i in range(24)]
    ev, info = fit_pixel_evidence([f for f, _ in fields], [i % 2 for i in range(24)], seed=0, per_field=800,
                                  epochs=6)
    assert info["pixels"] == 24 * 800 and 0 < info["train_pixel_accuracy"] <= 1
    test_rng = np.random.default_rng(99)
    x, truth = _field(test_rng, fibre=True)
    m = ev.score(x)
    assert m.shape == x.shape and m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1
    cells = x < 0.35
    assert m[truth].mean() > 0.75, m[truth].mean()
    assert m[truth].mean() > m[cells].mean() + 0.3, (m[truth].mean(), m[cells].mean())
    # the file round trip gives the same map
    arrays = ev.to_arrays("evidence")
    ev2 = PixelEvidence.from_arrays("evidence", arrays, hidden=ev.net.hidden)
    np.testing.assert_allclose(ev2.score(x), m, atol=1e-6)
    with pytest.raises(ValueError, match="both clean and artifact"):
        fit_pixel_evidence([fields[0][0]], [1])


def test_object_peak_ignores_objects_below_min_size():
    m = np.zeros((64, 64), np.float32)
    m[10:20, 10:20] = 0.7   # 100 px at 0.7
    m[40, 40] = 0.99        # a single bright pixel
    assert object_peak(m, 1) == pytest.approx(0.99)
    assert object_peak(m, 50) == pytest.approx(0.7, abs=1e-3)
    assert object_peak(m, 200) <= 1e-6   # no object that large at any threshold above the minimum


def test_clean_field_threshold_leaves_the_asked_share_empty():
    maps = []
    for k in range(20):
        m = np.zeros((32, 32), np.float32)
        m[4:14, 4:14] = 0.5 + 0.02 * k   # peaks 0.50 .. 0.88
        maps.append(m)
    t, empty = clean_field_threshold(maps, min_size=50, target_empty=0.95)
    assert empty >= 0.95
    assert t == pytest.approx(0.88, abs=2e-3)
    t2, empty2 = clean_field_threshold(maps, min_size=50, target_empty=0.5)
    assert t2 < t and 0.5 <= empty2 < 0.95
    assert clean_field_threshold([], 10) == (0.9, pytest.approx(float("nan"), nan_ok=True))


def test_normality_scores_what_clean_fields_never_show():
    rng = np.random.default_rng(4)
    clean = [_field(rng, fibre=False)[0] for _ in range(16)]
    nm, info = fit_normality(clean, seed=0, per_field=600, components=4, iters=30)
    assert info["components"] >= 1 and info["pixels"] == 16 * 600
    x, truth = _field(np.random.default_rng(98), fibre=True)
    s = nm.score(x)
    cells = x < 0.35
    assert np.median(s[truth]) > 1.0   # 1 = the clean fields' 99.9th percentile
    assert np.median(s[truth]) > 5 * np.median(s[cells])
    nm2 = Normality.from_arrays("n", nm.to_arrays("n"))
    np.testing.assert_allclose(nm2.score(x), s, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def zero_label_model(tmp_path_factory):
    """A zero-label model trained by ``artseg train --clean DIR`` on the clean fields of a small phantom plate."""
    import csv
    import shutil

    from click.testing import CliRunner

    from artseg_core.cli.main import main as cli
    from artseg_core.data import phantoms

    root = tmp_path_factory.mktemp("zero_label")
    phantoms.make_plate(root / "plate", rows=2, cols=4, fields=2, prevalence=0.5, seed=5, shape=(128, 128))
    clean = root / "clean"
    clean.mkdir()
    with open(root / "plate" / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        if r["label"] == "clean":
            shutil.copy(root / "plate" / "images" / r["image"], clean / r["image"])
    out = root / "zl.artseg"
    res = CliRunner().invoke(cli, ["train", "--clean", str(clean), "-o", str(out), "--profile", "tiny"])
    assert res.exit_code == 0, res.output
    assert "zero-label model" in res.output
    return out, root / "plate", rows


def test_zero_label_mode_trains_from_clean_fields_and_masks_artifacts(zero_label_model):
    from artseg_core import load_model
    from artseg_core.io.images import read_image

    path, plate, rows = zero_label_model
    model = load_model(path)
    assert model.zero_label and model.classifier is None and model.summary["mode"] == "zero_label"
    hits = []
    for r in rows:
        if r["label"] != "artifact":
            continue
        stem = r["image"].rsplit(".", 1)[0]
        res = model.predict(read_image(plate / "images" / r["image"]))
        truth = read_image(plate / "masks" / f"{stem}.tif", allow_constant=True) > 0
        assert res.flagged == bool(res.mask.any())           # one answer per image
        assert (res.p_artifact >= 0.5) == res.flagged or not res.mask.any()
        hits.append((res.mask & truth).sum() > 0)
    assert np.mean(hits) >= 0.5, hits     # most artifact fields: the mask touches the true artifact
    with pytest.raises(ValueError, match="zero-label"):
        from artseg_core.export.onnx_export import export_onnx
        export_onnx(model, path.parent / "onnx")


def test_zero_label_refuses_artifact_images(tmp_path, zero_label_model):
    from artseg_core.io.labels import LabelFileError
    from artseg_core.io.labels import load_labeled_set

    _, plate, _ = zero_label_model
    with pytest.raises(LabelFileError, match="clean images only"):
        load_labeled_set(plate / "images", plate / "labels.csv", clean_only=True)
    assert len(load_labeled_set(clean=plate / "images", clean_only=True)) == 16


def test_candidate_objects_and_object_evidence_keep_fibres_and_drop_cells():
    from artseg_core.weak.evidence import candidate_objects, fit_object_evidence, object_features

    rng = np.random.default_rng(6)
    rows, ys = [], []
    for i in range(20):
        x, _ = _field(rng, fibre=bool(i % 2))
        f = pixel_features(x)
        lab, n = candidate_objects(f)
        assert lab.shape == x.shape and lab.max() == n
        rows.append(object_features(f, np.zeros_like(x), lab, n))
        ys.append(i % 2)
    assert all(r.shape[1] == N_FEATURES + 5 for r in rows)
    oev, info = fit_object_evidence(rows[:16], ys[:16], seed=0, val_rows=rows[16:], val_labels=ys[16:])
    assert info["objects"] == sum(len(r) for r in rows[:16]) and 0 < info["from_artifact_fields"] < info["objects"]
    # multiple-instance fit with held-out early stopping: the kept epoch is reported and is a checked one
    assert info["pooling"].startswith("max") and info["held_out_fields"] == sum(len(r) > 0 for r in rows[16:])
    assert 5 <= info["best_epoch"] <= 300 and info["best_epoch"] % 5 == 0
    fib, other, top_is_fibre = [], [], []
    for seed in range(90, 100):  # over ten new fibre fields: the objects holding the fibre score higher
        x, truth = _field(np.random.default_rng(seed), fibre=True)
        f = pixel_features(x)
        lab, n = candidate_objects(f)
        obj_rows = object_features(f, np.zeros_like(x), lab, n)
        sc = oev.score(obj_rows)
        assert sc.shape == (n,) and ((0 <= sc) & (sc <= 1)).all()
        on = np.array([(truth & (lab == k + 1)).sum() > 0.5 * truth.sum() for k in range(n)], bool)
        fib += list(sc[on])
        other += list(sc[~on])
        if n:
            top_is_fibre.append(bool(on[int(np.argmax(oev.logit(obj_rows)))]))
    assert len(fib) >= 5 and other
    assert np.mean(fib) > np.mean(other), (np.mean(fib), np.mean(other))
    # a field's top object - what the field is judged by - is its fibre, not one of its cells, in most fields
    assert np.mean(top_is_fibre) >= 0.7, top_is_fibre
    # no candidates in one kind of field: nothing to learn, said so
    none, info2 = fit_object_evidence([rows[0]], [0])
    assert none is None and "skipped" in info2


def test_evidence_route_trains_reusing_a_classifier(trained_model_path, tmp_path):
    """cam_source='evidence' end to end on the fixture's plate, with the fixture model's classifier reused."""
    import torch

    import artseg_core
    from artseg_core.io.images import read_image

    plate = trained_model_path.parent / "plate"
    model = artseg_core.train(plate / "images", plate / "labels.csv", profile="tiny", seed=0, progress=False,
                              work_dir=tmp_path / "w", classifier_from=trained_model_path, cam_source="evidence",
                              pseudo_ignore=0.8, edge_refine=False, unet_steps=30, evidence_normal_ignore=0.25)
    s = model.summary
    assert s["scorecam"]["source"] == "evidence"
    ignored = s["scorecam"]["normal_pixels_ignored"]  # the fast profile's setting, recorded in the model summary
    assert ignored["below"] == 0.25 and 0 <= ignored["share_of_pseudo_mask_pixels"] < 1
    assert ignored["normality"]["components"] >= 1
    assert s["scorecam"]["objects"]["objects"] > 0 and 0 < s["scorecam"]["threshold"] < 1
    assert s["classifier"]["epochs_run"] == artseg_core.load_model(trained_model_path).summary["classifier"][
        "epochs_run"]
    ref = artseg_core.load_model(trained_model_path).classifier.state_dict()
    for k, v in model.classifier.state_dict().items():
        assert torch.equal(v.cpu(), ref[k].cpu()), k
    # the pseudo-masks written to the work folder overlap the true artifacts more than chance
    pm = sorted((tmp_path / "w" / "pseudo_masks").glob("*.tif"))
    assert pm
    inter = union = 0
    for p in pm:
        m = read_image(p, allow_constant=True) > 0
        t = read_image(plate / "masks" / p.name, allow_constant=True) > 0
        inter += (m & t).sum()
        union += (m | t).sum()
    assert inter / max(union, 1) > 0.1
    _check_second_opinion(model, plate, trained_model_path, tmp_path)
    with pytest.raises(ValueError, match="zero-label"):
        zl = tmp_path / "zl.artseg"
        from artseg_core.training.pipeline import _reuse_classifier
        from artseg_core.predict.model import ArtifactModel
        from artseg_core.weak.evidence import fit_normality

        nm, _ = fit_normality([np.random.default_rng(0).random((64, 64)).astype(np.float32)] * 2, per_field=300,
                              components=1, iters=3)
        ArtifactModel(model.profile, None, None, normality=nm).save(zl)
        _reuse_classifier(model.classifier, zl, "percentile")


def _check_second_opinion(model, plate, classifier_only_path, tmp_path):
    """The evidence route's second opinion: stored in the model file, and in predict it flags (and segments) exactly
    the fields the classifier leaves unflagged whose object score exceeds its threshold."""
    import dataclasses
    import math

    import artseg_core
    from artseg_core.io.images import read_image

    op = model.second_opinion
    assert op is not None and math.isfinite(op.threshold)
    assert model.summary["scorecam"]["second_opinion_threshold"] == round(op.threshold, 4)
    assert "_second_opinion" not in model.summary["scorecam"]
    model.thresholds["classifier"] = 1.01  # the classifier flags nothing: every flag below is the second opinion's
    model.save(tmp_path / "so.artseg")
    loaded = artseg_core.load_model(tmp_path / "so.artseg", device="cpu")
    assert loaded.manifest()["second_opinion_threshold"] == round(op.threshold, 4)
    images = [read_image(p) for p in sorted((plate / "images").glob("*.tif"))[:8]]
    scores = [op.score(model.normalize(im)) for im in images]
    assert [loaded.second_opinion.score(loaded.normalize(im)) for im in images] == pytest.approx(scores, abs=1e-5)
    # the threshold set in the middle of these fields' scores, so that both answers occur
    loaded.second_opinion.threshold = float(np.median([s for s in scores if math.isfinite(s)]))
    for im, sc in zip(images, scores):
        plain = loaded.predict(im)
        assert not plain.flagged and not plain.segmented and not plain.mask.any()
        r = loaded.predict(im, second_opinion=True)
        assert r.flagged == r.segmented == (sc > loaded.second_opinion.threshold), sc
        assert r.mask.any() <= r.flagged
    # resampled to the model's pixel size, the request reaches the resampled prediction: with a threshold below any
    # score, every field with a candidate object is flagged
    loaded.pixel_size, thr = 1.0, loaded.second_opinion.threshold
    loaded.second_opinion.threshold = -1e9
    im = images[int(np.argmax(scores))]
    assert loaded.predict(im, second_opinion=True, pixel_size=0.8, rescale=True).flagged
    assert not loaded.predict(im, pixel_size=0.8, rescale=True).flagged
    loaded.pixel_size, loaded.second_opinion.threshold = None, thr
    # a field larger than max_pixels is scored in overlapping tiles (bounded memory), as the highest of their scores
    big = np.tile(model.normalize(images[int(np.argmax(scores))]), (2, 2))
    seen = []
    whole = op._score_whole
    op._score_whole = lambda t: seen.append(t.shape) or whole(t)
    try:
        tiled = op.score(big, max_pixels=300 * 300)
    finally:
        del op._score_whole
    # 3 x 3 tiles of at most 300 px: neighbours overlap by 128 px, the filter bank's reach on both sides
    assert len(seen) == 9 and all(256 <= min(sh) and max(sh) <= 300 for sh in seen)
    assert math.isfinite(tiled) and tiled >= max(scores) - 1.0
    # the profile's setting is the default of predict
    loaded.profile = dataclasses.replace(loaded.profile, second_opinion=True)
    assert [loaded.predict(im).flagged for im in images] == [s > loaded.second_opinion.threshold for s in scores]
    assert not any(loaded.predict(im, second_opinion=False).flagged for im in images)
    # a model without one (the Score-CAM route) says so instead of ignoring the request
    with pytest.raises(ValueError, match="no second opinion"):
        artseg_core.load_model(classifier_only_path).predict(images[0], second_opinion=True)
    # the command line: --second-opinion asks it (the model's own setting is off), and the CSV says which were flagged
    import csv

    from click.testing import CliRunner

    from artseg_core.cli.main import main

    loaded.profile = dataclasses.replace(loaded.profile, second_opinion=False)
    loaded.save(tmp_path / "so_mid.artseg")
    paths = sorted((plate / "images").glob("*.tif"))[:8]
    for flag, expect in (("--second-opinion", [s > loaded.second_opinion.threshold for s in scores]),
                         ("--no-second-opinion", [False] * len(paths))):
        out = tmp_path / f"out{flag}"
        res = CliRunner().invoke(main, ["predict", *map(str, paths), "--model", str(tmp_path / "so_mid.artseg"),
                                        "--out", str(out), "--quiet", flag])
        assert res.exit_code == 0, res.output
        rows = {r["image"].split("/")[-1]: r for r in csv.DictReader(open(out / "artseg_results.csv"))}
        assert [rows[p.name]["flagged"] == "True" for p in paths] == expect
    res = CliRunner().invoke(main, ["predict", str(paths[0]), "--model", str(classifier_only_path), "--out",
                                    str(tmp_path / "refused"), "--quiet", "--second-opinion"])
    assert res.exit_code == 2 and "no second opinion" in res.output and str(classifier_only_path) in res.output


def test_pseudo_mask_pixels_that_look_like_clean_fields_leave_the_loss():
    """evidence_normal_ignore: a pseudo-mask that spilled onto cells (which every clean field has) keeps its fibre as
    foreground and puts the cells in the ignored band, not in the background."""
    from artseg_core.nets.profiles import get_profile
    from artseg_core.training.pipeline import _Fields, _ignore_normal_pixels, _normality_of_clean_fields, pseudo_target
    from artseg_core.training.unet import IGNORE

    rng = np.random.default_rng(3)
    clean = [_field(rng, False, size=192, n_cells=24, short=True, with_cells=True) for _ in range(12)]
    art = [_field(rng, True, size=192, n_cells=24, short=True, with_cells=True) for _ in range(3)]
    imgs = [c[0] for c in clean] + [a[0] for a in art]
    y = np.array([0] * 12 + [1] * 3)
    f = _Fields(samples=[None] * 15, imgs=imgs, qscores=[], skipped=[], y=y, true_masks={}, tr=np.arange(15),
                va=np.array([], int))
    art_idx = [12, 13, 14]
    pseudo = {i: a[1] | a[2] for i, a in zip(art_idx, art)}  # the fibre and, wrongly, every cell
    targets = {i: pseudo[i].astype(np.float32) for i in art_idx}
    thr = 0.5
    prof = get_profile("tiny", evidence_normal_ignore=1.0, pseudo_ignore=0.8)
    objects = {i: np.zeros_like(pseudo[i]) for i in art_idx}
    objects[13] = art[1][2].copy()  # the cells of one field were kept as candidate objects: they stay foreground
    nm, _info = _normality_of_clean_fields(prof, f, list(range(15)), seed=0, workers=1)
    looks_normal = {i: nm.score(f.imgs[i]) < prof.evidence_normal_ignore for i in art_idx}
    share = _ignore_normal_pixels(prof, pseudo, objects, looks_normal, targets, thr)
    fib_fg, cell_ignored = [], []
    for i, (_x, fib, cells) in zip(art_idx, art):
        t = pseudo_target(targets[i], thr, prof.pseudo_ignore)
        assert not np.any(t[~pseudo[i]])          # outside the pseudo-mask: background, as before
        fib_fg.append(np.mean(t[fib] == 1))
        if i == 13:
            assert np.all(t[cells] == 1)
        else:
            cell_ignored.append(np.mean(t[cells] == IGNORE))
    assert np.mean(fib_fg) > 0.8, fib_fg
    assert np.mean(cell_ignored) > 0.8, cell_ignored
    assert 0 < share < 1
    with pytest.raises(ValueError, match="ignored band"):
        _normality_of_clean_fields(get_profile("tiny", evidence_normal_ignore=0.5, pseudo_ignore=0.0), f,
                                   list(range(15)), seed=0, workers=1)
