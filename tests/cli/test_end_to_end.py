"""End to end: train on a tiny phantom plate, save/load, predict (API and CLI), evaluate."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

import artseg_core
from artseg_core.data import phantoms
from artseg_core.cli.main import main
from artseg_core.io.images import read_image
from artseg_core.io.modelfile import ModelFileError


@pytest.fixture(scope="module")
def model(trained_model_path):
    return artseg_core.load_model(trained_model_path, device="cpu")


def test_model_file_holds_everything(trained_model_path):
    from artseg_core.io.modelfile import load_model_file

    manifest, arrays = load_model_file(trained_model_path)
    assert manifest["profile"]["name"] == "tiny"
    assert set(manifest["thresholds"]) >= {"classifier", "gate", "unet", "min_size"}
    assert manifest["summary"]["n_images"] == 48 and manifest["summary"]["n_val"] > 0
    assert set(manifest["versions"]) >= {"artseg", "torch", "numpy"}
    assert any(k.startswith("classifier.layer4") for k in arrays) and any(k.startswith("unet.") for k in arrays)
    assert manifest["quality_thresholds"], "QC thresholds learned from the clean training images"


def test_save_load_round_trip_gives_identical_predictions(model, tmp_path):
    f = phantoms.make_field((256, 256), seed=123, artifacts=["bubble"])
    path = tmp_path / "again.artseg"
    model.save(path)
    again = artseg_core.load_model(path, device="cpu")
    a, b = model.predict(f.image, gate=False), again.predict(f.image, gate=False)
    assert a.p_artifact == b.p_artifact
    np.testing.assert_array_equal(a.prob, b.prob)
    assert again.thresholds == model.thresholds


def test_model_learned_something(model, tiny_plate):
    """On a held-apart plate the classifier ranks artifact images above clean ones better than chance."""
    from artseg_core.evaluation.metrics import roc_auc

    ys, ps = [], []
    with open(tiny_plate / "labels.csv") as fh:
        for r in csv.DictReader(fh):
            img = read_image(tiny_plate / "images" / r["image"])
            ys.append(r["label"] == "artifact")
            ps.append(model.predict(img, gate=True).p_artifact)
    assert roc_auc(ys, ps) > 0.7


def test_predict_result_is_consistent(model):
    f = phantoms.make_field((200, 300), seed=5, artifacts=["debris", "fibre"])
    r = model.predict(f.image, gate=False, fill="median")
    assert r.prob.shape == r.mask.shape == r.labels.shape == (200, 300)
    assert r.prob.dtype == np.float32 and 0 <= r.prob.min() and r.prob.max() <= 1
    assert r.n_objects == int(r.labels.max()) == len(r.objects)
    assert r.area_fraction == pytest.approx(r.mask.mean())
    assert sum(o["area"] for o in r.objects) == int(r.mask.sum())
    assert r.cleaned.dtype == f.image.dtype and np.array_equal(r.cleaned[~r.mask], f.image[~r.mask])
    row = r.row()
    assert set(row) >= {"p_artifact", "flagged", "area_fraction", "n_objects", "focus", "illumination",
                        "saturation", "defocus", "bad_illumination", "saturated"}
    assert r.segmented is True


def test_gate_skips_unet_on_confidently_clean(model):
    f = phantoms.make_field((256, 256), seed=9, artifacts=[])
    old = dict(model.thresholds)
    try:
        model.thresholds["classifier"] = 1.01  # the classifier calls every image clean
        r = model.predict(f.image, gate=True)
        assert r.segmented is False and r.prob is None and not r.mask.any() and not r.flagged
        r2 = model.predict(f.image, gate=False)
        assert r2.segmented is True and r2.prob is not None
    finally:
        model.thresholds.update(old)


def test_one_answer_per_image(model):
    """The flag and the mask agree: with the classifier deciding (gate on) an unflagged image has an empty mask,
    even when the U-Net would find something (the old lower 'gate' threshold let such masks through); with every
    image segmented (gate off) a non-empty mask flags the image."""
    f = phantoms.make_field((256, 256), seed=3, artifacts=["bubble", "debris"])
    old = dict(model.thresholds)
    try:
        model.thresholds.update(classifier=1.01, gate=0.0, unet=0.01, min_size=1)  # U-Net finds "artifacts"
        assert model.predict(f.image, gate=False).mask.any()
        r = model.predict(f.image, gate=True)
        assert not r.flagged and not r.mask.any() and r.n_objects == 0 and r.area_fraction == 0.0
        r2 = model.predict(f.image, gate=False)
        assert r2.flagged and r2.mask.any() and r2.row()["flagged"] is True
        model.thresholds.update(classifier=0.0)  # every image flagged: the U-Net runs and keeps its mask
        r3 = model.predict(f.image, gate=True)
        assert r3.flagged and r3.segmented and np.array_equal(r3.mask, r2.mask)
    finally:
        model.thresholds.update(old)


def test_tiled_equals_untiled_inside_tiles(model):
    """Tiled U-Net prediction matches one whole-image pass away from the image border.

    Exact equality for networks whose receptive field fits in the overlap is tested in test_tiling.py; the U-Net's
    receptive field is larger than any practical overlap, so zero padding at tile borders leaves tiny differences:
    they must stay far below what changes a mask.
    """
    f = phantoms.make_field((512, 512), seed=11, artifacts=["clump"])
    norm = artseg_core.normalize(f.image)
    whole = model.segment(norm, tile=512, overlap=0)
    tiled = model.segment(norm, tile=256, overlap=128)
    d = np.abs(tiled - whole)[32:-32, 32:-32]
    assert d.max() < 5e-2 and d.mean() < 1e-3, (d.max(), d.mean())
    thr = model.thresholds["unet"]
    agree = ((tiled >= thr) == (whole >= thr)).mean()
    assert agree > 0.999


def test_cli_predict_outputs_csv_and_bad_files(trained_model_path, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    f1 = phantoms.make_field((256, 256), seed=1, artifacts=["bubble"])
    f2 = phantoms.make_field((128, 160), seed=2, artifacts=[])
    tifffile.imwrite(inp / "a.tif", f1.image)
    tifffile.imwrite(inp / "b.tif", f2.image)
    (inp / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 10)          # truncated TIFF
    tifffile.imwrite(inp / "flat.tif", np.full((64, 64), 7, np.uint16))  # constant image
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["predict", str(inp), str(tmp_path / "missing.tif"), "--model",
                                    str(trained_model_path), "--out", str(out), "--roi", "--prob", "--overlay",
                                    "--cleaned", "background", "--quiet", "--no-gate"])
    assert res.exit_code == 1, res.output
    rows = {r["image"].split("/")[-1]: r for r in csv.DictReader(open(out / "artseg_results.csv"))}
    assert set(rows) == {"a.tif", "b.tif", "broken.tif", "flat.tif", "missing.tif"}
    assert rows["a.tif"]["status"] == "ok" and rows["b.tif"]["status"] == "ok"
    assert rows["broken.tif"]["status"] == "error" and "broken.tif" in rows["broken.tif"]["error"]
    assert "constant" in rows["flat.tif"]["error"]
    assert "missing.tif" in rows["missing.tif"]["error"]
    for name, shape in (("a", (256, 256)), ("b", (128, 160))):
        m = tifffile.imread(out / f"{name}_mask.tif")
        assert m.shape == shape and set(np.unique(m)) <= {0, 255}
        assert tifffile.imread(out / f"{name}_prob.tif").shape == shape
        assert tifffile.imread(out / f"{name}_cleaned.tif").dtype == np.uint16
        assert (out / f"{name}_rois.zip").is_file() and (out / f"{name}_overlay.png").is_file()
        assert float(rows[f"{name}.tif"]["area_fraction"]) == pytest.approx((m > 0).mean(), abs=1e-6)
    assert not (out / "broken_mask.tif").exists()


def test_cli_bad_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.artseg"
    bad.write_bytes(b"nope")
    img = tmp_path / "x.tif"
    tifffile.imwrite(img, phantoms.make_field((64, 64), seed=0).image)
    res = CliRunner().invoke(main, ["predict", str(img), "--model", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "bad.artseg" in res.output and "model file" in res.output
    with pytest.raises(ModelFileError):
        artseg_core.load_model(bad)


def test_cli_evaluate_on_predictions(trained_model_path, tiny_plate, tmp_path):
    out = tmp_path / "pred"
    r = CliRunner().invoke(main, ["predict", str(tiny_plate / "images"), "--model", str(trained_model_path),
                                  "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    js = tmp_path / "m.json"
    r = CliRunner().invoke(main, ["evaluate", str(out), "--truth", str(tiny_plate / "masks"), "--labels",
                                  str(tiny_plate / "labels.csv"), "--types", str(tiny_plate / "artifacts.csv"),
                                  "--json", str(js)])
    assert r.exit_code == 0, r.output
    rep = json.loads(js.read_text())
    assert rep["n_images"] == 12
    assert 0 <= rep["image"]["f1"] <= 1 and "object" in rep and rep["per_type"]
    assert "image level" in r.output and "pixel" in r.output


# ------------------------------------------------------------------------------------------------ pixel size


def _train_tiny(tmp_path, *options):
    """`artseg train` (tiny profile, one epoch, two U-Net steps) on a 4-field phantom plate with ``options``;
    (plate folder, CLI result), the model in tmp_path/m.artseg."""
    plate = tmp_path / "plate"
    phantoms.make_plate(plate, rows=2, cols=2, fields=1, prevalence=0.5, seed=3, shape=(64, 64))
    res = CliRunner().invoke(main, ["train", str(plate / "images"), "-o", str(tmp_path / "m.artseg"), "--profile",
                                    "tiny", "--epochs", "1", "--unet-steps", "2", "--val-fraction", "0",
                                    "--device", "cpu", *options])
    assert res.exit_code == 0, res.output
    return plate, res


def test_pixel_size_recorded_at_training_and_shown_by_info(tmp_path):
    """`artseg train --pixel-size` records it in the model file, `artseg info` shows it; without the option it
    is read from the training images' TIFF metadata; old files without it load with None."""
    from artseg_core.io.outputs import write_mask_tiff
    from artseg_core.predict.model import load_model, pixel_size_from_files

    _, res = _train_tiny(tmp_path, "--pixel-size", "0.5")
    assert "pixel size: 0.5 um (recorded in the model)" in res.output
    assert load_model(tmp_path / "m.artseg", device="cpu").pixel_size == 0.5
    info = CliRunner().invoke(main, ["info", str(tmp_path / "m.artseg")])
    assert json.loads(info.output)["pixel_size_um"] == 0.5
    # metadata route: TIFFs written with a pixel size of 0.325 um
    tif = write_mask_tiff(tmp_path / "cal.tif", np.eye(16, dtype=bool), pixel_size=0.325)
    assert pixel_size_from_files([tif]) == pytest.approx(0.325, rel=1e-6)


def test_train_synthetic_artifacts_option_reaches_the_unet(tmp_path):
    """--synthetic-artifacts F: the U-Net's clean-field crops get pasted artifacts; the model file says so."""
    from artseg_core.predict.model import load_model

    plate, _ = _train_tiny(tmp_path, "--synthetic-artifacts", "0.5")
    m = load_model(tmp_path / "m.artseg", device="cpu")
    assert m.profile.unet_paste == 0.5
    assert m.summary["unet"]["synthetic_artifacts"] == {"fraction": 0.5, "clean_fields": 2}
    bad = CliRunner().invoke(main, ["train", str(plate / "images"), "-o", str(tmp_path / "x.artseg"),
                                    "--synthetic-artifacts", "1.5"])
    assert bad.exit_code != 0 and "1.5" in bad.output


def test_old_model_files_load_without_pixel_size(trained_model_path):
    from artseg_core.io.modelfile import load_model_file

    manifest, _ = load_model_file(trained_model_path)
    m = artseg_core.load_model(trained_model_path, device="cpu")
    assert m.pixel_size == manifest.get("pixel_size_um")


def test_pixel_size_mismatch_warns_and_rescale_resamples(model, caplog):
    """An image at another pixel size than the model's: a warning above 20 %, none within; --rescale runs the
    networks on the image resampled to the model's pixel size and maps the result back."""
    from scipy import ndimage as ndi

    f = phantoms.make_field((192, 192), seed=5, artifacts=["bubble", "debris"], pixel_size=0.65)
    old = model.pixel_size
    try:
        model.pixel_size = 0.65
        model._warned_sizes.clear()
        with caplog.at_level("WARNING", logger="artseg_core.predict.model"):
            model.predict(f.image, pixel_size=0.7, gate=False)
            assert not [r for r in caplog.records if "pixel size" in r.getMessage()]
            model.predict(f.image, pixel_size=0.325, gate=False)
        msgs = [r.getMessage() for r in caplog.records if "pixel size" in r.getMessage()]
        assert len(msgs) == 1 and "0.325" in msgs[0] and "0.65" in msgs[0] and "--rescale" in msgs[0]
        # the same field seen at twice the magnification (0.325 um/px): with rescale the networks see what they
        # saw at 0.65 um/px, and the result comes back at the image's own size
        up = ndi.zoom(f.image.astype(np.float32), 2, order=1, grid_mode=True, mode="nearest")
        ref = model.predict(f.image, gate=False)
        r = model.predict(up, pixel_size=0.325, rescale=True, gate=False)
        assert r.prob.shape == r.mask.shape == up.shape
        back = ndi.zoom(ref.prob, 2, order=1, grid_mode=True, mode="nearest")
        assert np.corrcoef(back.ravel(), r.prob.ravel())[0, 1] > 0.9
        # the classifier saw the image resampled to the model's pixel size. Not necessarily the same value as on
        # the original field: the linear up- and down-sampling blurs it, and the tiny test classifier can move
        # by 0.5 on a field near its decision boundary (seen: 0.31 on the field, 0.86 after resampling).
        at_model_size = ndi.zoom(up, 0.5, order=1, grid_mode=True, mode="nearest")
        assert r.p_artifact == pytest.approx(model.classify(model.normalize(at_model_size)), abs=1e-5)
        no = model.predict(up, pixel_size=0.325, rescale=False, gate=False)
        assert no.prob.shape == up.shape  # without rescale: segmented as is (and warned)
    finally:
        model.pixel_size = old


# ------------------------------------------------------------------------------------------------ demo page


def _demo_page(out):
    """The demo page from real evaluation numbers on small synthetic masks (no training needed)."""
    from artseg_core.cli.demo import field_score, write_demo_page
    from artseg_core.evaluation.evaluate import evaluate_arrays
    from artseg_core.io.files import write_png

    truth = {"a": np.zeros((64, 64), np.int32), "b": np.zeros((64, 64), np.int32), "c": np.zeros((64, 64), np.int32)}
    truth["a"][10:30, 10:30] = 1
    pred = {k: np.zeros((64, 64), bool) for k in truth}
    pred["a"][12:30, 10:28] = True
    pred["c"][40:44, 40:44] = True  # a false positive on a clean field
    report = evaluate_arrays(pred, truth, types={("a", 1): "bubble"})
    report["image"] = {"precision": 1.0, "recall": 1.0, "f1": 1.0, "roc_auc": 0.9}
    summary = {"profile": "tiny", "n_images": 48, "n_artifact": 24, "n_clean": 24, "n_train": 38, "n_val": 10,
               "n_masks": 0, "classifier": {"epochs_run": 12, "best_epoch": 9,
                                            "val_metrics": {"accuracy": 0.9, "f1": 0.89}},
               "scorecam": {"mode": "fast", "threshold": 0.4, "threshold_source": "profile default"},
               "unet": {"steps_run": 600}, "calibration": {"classifier_threshold": 0.45, "unet_threshold": 0.5,
                                                           "min_size": 16, "reference": "none"}}
    items = []
    (out / "figures").mkdir(parents=True)
    for k in truth:
        write_png(out / "figures" / f"{k}.png", np.full((64, 64, 3), 128, np.uint8))
        items.append({"name": k, "png": f"figures/{k}.png", "truth": "artifact" if truth[k].any() else "clean",
                      "p": 0.5, "flagged": bool(pred[k].any()), "score": field_score(pred[k], truth[k])})
    return write_demo_page(out, report, summary, items, {"phantoms": 1.0, "train": 60.0})


def test_demo_page_tables_and_clean_field_scores(tmp_path):
    """Metrics and the training summary as tables (per kind, with counts), no raw JSON or text dump; clean
    fields scored by their false-positive area, not by an IoU of 1.00 / 0.00; rendered in headless Chromium."""
    import os
    import re
    import shutil
    import subprocess

    from artseg_core.cli.demo import field_score

    z = np.zeros((10, 10), bool)
    fp = z.copy()
    fp[0, 0] = True
    assert field_score(z, z) == "clean: no false positive"
    assert field_score(fp, z) == "clean: false positive 1.00 % of field"
    assert field_score(fp, fp) == "IoU 1.00"

    page = _demo_page(tmp_path)
    text = page.read_text()
    assert text.count("<table") >= 5 and "<pre>" not in text and '{"' not in text
    assert "Per artifact kind" in text and "<td>bubble</td>" in text and "IoU 1.00" not in text.split("Fields")[1]
    assert "clean: false positive" in text and "clean: no false positive" in text
    chromium = next((c for c in ("/usr/bin/chromium", shutil.which("chromium") or "") if c and os.access(c, os.X_OK)),
                    None)
    if chromium is None:
        pytest.skip("Chromium is not installed: the rendering check is skipped")
    shot = tmp_path / "demo.png"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}/p",
                           "--window-size=1280,1600", f"--screenshot={shot}", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    a = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert a.std() > 20 and (a.sum(axis=2) < 200).mean() > 0.001
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}/q",
                          "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=180).stdout
    assert len(re.findall(r"<table", dom)) >= 5


def test_demo_training_table_names_the_pseudo_mask_route():
    from artseg_core.cli.demo import training_table

    base = {"profile": "fast", "classifier": {"epochs_run": 3, "best_epoch": 2, "val_metrics": {"f1": 0.9}},
            "unet": {"steps_run": 10}, "calibration": {}}
    ev = training_table({**base, "scorecam": {"source": "evidence", "threshold": 0.861, "threshold_source": "clean",
                                               "object_threshold": 0.93, "object_threshold_scale": "logit",
                                               "object_threshold_source": "objects"}}, {})
    assert "pseudo-masks from the clean fields" in ev and "0.861" in ev and "0.930 (logit)" in ev
    assert "Score-CAM" not in ev
    cam = training_table({**base, "scorecam": {"mode": "fast", "threshold": 0.2, "threshold_source": "default"}}, {})
    assert "Score-CAM pseudo-masks" in cam and "mode fast" in cam
    assert "classifier fit" in cam and "not recorded in this model file" in cam  # a summary without train_metrics


def test_classifier_fit_text_warns_when_the_training_fields_are_not_fitted():
    from artseg_core.training.pipeline import FIT_ACCURACY, classifier_fit_text

    def text(tp, fn, fp, tn):
        return classifier_fit_text({"train_metrics": {"accuracy": (tp + tn) / (tp + fn + fp + tn),
                                                      "recall": tp / (tp + fn), "tp": tp, "fn": fn, "fp": fp,
                                                      "tn": tn}})

    misses = text(40, 40, 6, 74)  # half the artifact fields missed, few clean ones flagged
    assert "accuracy 0.71, artifact fields flagged 0.50, clean fields flagged 0.07" in misses
    assert "does not fit them well" in misses and "unflagged and unmasked" in misses
    assert "clean fields flagged (and masked)" not in misses
    alarms = text(78, 2, 24, 56)  # nearly every artifact field flagged, many clean ones too
    assert "unflagged" not in alarms and "clean fields flagged (and masked)" in alarms
    good = text(76, 4, 4, 76)
    assert "accuracy 0.95" in good and "does not fit" not in good
    assert 0.5 < FIT_ACCURACY < 0.95


def test_pretrain_once_per_plate_and_train_from_it(tmp_path):
    """`artseg pretrain FOLDER -o FILE` pretrains the U-Net on unlabelled fields; `artseg train --unlabelled FILE`
    starts from those weights (every layer but the head); --unlabelled FOLDER pretrains inline; a file that is not a
    pretraining stops with its name."""
    import torch

    from artseg_core.predict.model import load_model
    from artseg_core.training.pretrain import read_pretrained

    unl = tmp_path / "unlabelled"
    phantoms.make_plate(unl, rows=1, cols=3, fields=2, prevalence=0.5, seed=8, shape=(64, 64))
    pre = tmp_path / "plate.pretrain.pt"
    res = CliRunner().invoke(main, ["pretrain", str(unl / "images"), "-o", str(pre), "--profile", "tiny",
                                    "--steps", "4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "fields: 6 (0 unreadable skipped), steps: 4" in res.output
    d = read_pretrained(pre)
    _, res = _train_tiny(tmp_path, "--unlabelled", str(pre), "--unet-steps", "0")
    assert "U-Net pretrained on 6 fields" in res.output and "reused" in res.output
    m = load_model(tmp_path / "m.artseg", device="cpu")
    assert m.summary["pretrain"]["reused"] is True
    for k, v in m.unet.state_dict().items():  # no fine-tuning step: the pretrained layers as they were
        assert torch.equal(v, d["state"][k]) != k.startswith("head."), k
    # a folder: pretrained here, on the unlabelled and the training fields
    _, res = _train_tiny(tmp_path, "--unlabelled", str(unl / "images"), "--work-dir", str(tmp_path / "w"))
    m = load_model(tmp_path / "m.artseg", device="cpu")
    assert m.summary["pretrain"]["reused"] is False and m.summary["pretrain"]["n_fields"] == 6 + 4
    assert (tmp_path / "w" / "pretrained_unet.pt").is_file()
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"junk")
    res = CliRunner().invoke(main, ["train", str(tmp_path / "plate" / "images"), "-o", str(tmp_path / "x.artseg"),
                                    "--profile", "tiny", "--unlabelled", str(bad), "--epochs", "1", "--device", "cpu"])
    assert res.exit_code != 0 and "junk.pt: not a pretrained U-Net file" in res.output
    # pretrained for another profile's U-Net: refused before the classifier trains
    res = CliRunner().invoke(main, ["train", str(tmp_path / "plate" / "images"), "-o", str(tmp_path / "x.artseg"),
                                    "--profile", "fast", "--unlabelled", str(pre), "--device", "cpu"])
    assert res.exit_code != 0 and "pretrain again with the same profile" in res.output
    assert "classifier" not in res.output.lower()
