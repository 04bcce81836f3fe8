"""``artseg export``: the bioimage.io package passes bioimage.io's own test, the ONNX network run with onnxruntime
reproduces ArtSeg's probability map, and damaged packages are rejected by the validator.

Needs the ``export`` extra (onnx, onnxruntime, onnxscript, bioimageio.core), which ``make test`` installs; its
absence is an error, not a skip."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(trained_model_path):
    from artseg_core.predict.model import load_model

    return load_model(trained_model_path, device="cpu")


def _cli(*args):
    from artseg_core.cli.main import main

    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def package(trained_model_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bioimageio") / "artseg.zip"
    text = _cli("export", trained_model_path, "--format", "bioimageio", "--out", out, "--no-validate",
                "--author", "Test Lab")
    assert f"wrote {out}" in text
    return out


@pytest.fixture(scope="module")
def onnx_dir(trained_model_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "onnx"
    _cli("export", trained_model_path, "--format", "onnx", "--out", out)
    return out


def _rdf(zip_path: Path) -> dict:
    import yaml

    with zipfile.ZipFile(zip_path) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a package zip, passing every member (name, bytes) through ``edit``, which returns new bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info.filename)))
    return dst


def test_package_passes_bioimageio_test(package):
    from artseg_core.export import validate_package

    ok, summary = validate_package(package)
    assert ok, summary
    for fmt in ("onnx", "torchscript", "pytorch_state_dict"):
        assert f"Reproduce test outputs from test inputs ({fmt})" in summary


def test_package_describes_artseg(package, model):
    rdf = _rdf(package)
    assert rdf["format_version"].startswith("0.5")
    assert set(rdf["weights"]) == {"onnx", "torchscript", "pytorch_state_dict"}
    pre = rdf["inputs"][0]["preprocessing"]
    ops = [p["id"] for p in pre]
    assert [o for o in ops if o != "ensure_dtype"] == ["scale_range", "clip"]
    sr = pre[ops.index("scale_range")]["kwargs"]
    assert (sr["min_percentile"], sr["max_percentile"], float(sr["eps"])) == (1.0, 99.8, 1e-6)
    assert sr["axes"] == ["y", "x"]
    assert pre[ops.index("clip")]["kwargs"] == {"min": 0.0, "max": 1.0}
    assert rdf["cite"][0]["doi"] == "10.1038/s41598-022-14703-y"
    assert rdf["authors"][0]["name"] == "Test Lab"
    assert rdf["config"]["artseg"]["thresholds"]["unet"] == model.thresholds["unet"]
    d = model.unet.divisor
    assert rdf["inputs"][0]["axes"][2]["size"] == {"min": d, "step": d}
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        assert {"cover.png", "README.md", "test_input.npy", "test_output.npy"} <= names
        doc = z.read("README.md").decode()
        assert "## Training summary" in doc and str(model.thresholds["min_size"]) in doc


def test_package_test_output_is_artseg_probability(package, model, tmp_path):
    """The test tensors are ArtSeg's own prediction: predict() on the raw test input gives the test output."""
    with zipfile.ZipFile(package) as z:
        z.extract("test_input.npy", tmp_path)
        z.extract("test_output.npy", tmp_path)
    x = np.load(tmp_path / "test_input.npy")
    y = np.load(tmp_path / "test_output.npy")
    assert x.shape == y.shape and x.shape[:2] == (1, 1)
    res = model.predict(x[0, 0], gate=False)
    assert np.abs(res.prob - y[0, 0]).max() < 1e-4
    assert res.mask.any(), "the test field should show an artifact"


def test_onnx_reproduces_artseg_probability(onnx_dir, model):
    from artseg_core.data.phantoms import make_field
    from artseg_core.export import OnnxArtSeg

    cfg = json.loads((onnx_dir / "artseg_onnx.json").read_text())
    assert cfg["thresholds"] == model.thresholds
    ox = OnnxArtSeg(onnx_dir)
    # one tile (256 x 256), and a field larger than a tile whose sides are no multiple of the divisor
    for shape, seed in (((256, 256), 11), ((600, 700), 12)):
        img = make_field(shape=shape, seed=seed, artifacts=["fibre", "bubble"]).image
        res = model.predict(img, gate=False)
        prob = ox.probability(img)
        assert prob.shape == img.shape
        assert np.abs(prob - res.prob).max() < 1e-4, shape
        assert abs(ox.p_artifact(img) - res.p_artifact) < 1e-4


def test_corrupted_weights_are_rejected(package, tmp_path):
    from artseg_core.export import validate_package

    def flip(name, data):
        if name != "weights.onnx":
            return data
        b = bytearray(data)
        mid = len(b) // 2
        b[mid:mid + 64] = bytes(64)
        return bytes(b)

    bad = _rewrite(package, tmp_path / "bad_weights.zip", flip)
    ok, summary = validate_package(bad, weight_format="onnx")
    assert not ok
    assert "sha256" in summary.lower() or "hash" in summary.lower(), summary[-2000:]


def test_wrong_preprocessing_is_rejected(package, tmp_path):
    """A package whose pre-processing no longer matches ArtSeg's fails the reproduction test."""
    from artseg_core.export import validate_package

    def edit(name, data):
        if name != "rdf.yaml":
            return data
        text = data.decode()
        assert "max_percentile: 99.8" in text
        return text.replace("max_percentile: 99.8", "max_percentile: 90.0").encode()

    bad = _rewrite(package, tmp_path / "bad_pre.zip", edit)
    ok, summary = validate_package(bad, weight_format="onnx")
    assert not ok
    assert "Reproduce test outputs" in summary



def test_test_image_is_cropped_to_the_divisor():
    from artseg_core.export.bioimageio import ExportError, _test_image

    img = np.arange(100 * 75, dtype=np.uint16).reshape(100, 75)
    out = _test_image(16, img)
    assert out.shape == (96, 64)
    np.testing.assert_array_equal(out, img[:96, :64])
    with pytest.raises(ExportError, match="2-D"):
        _test_image(16, np.zeros((2, 64, 64)))
    with pytest.raises(ExportError, match="smaller"):
        _test_image(32, np.zeros((20, 64)))
    assert _test_image(16, None).shape == (256, 256)


def test_onnx_classifier_with_the_multiple_instance_head(tmp_path):
    """The top-k pooling head (multiple-instance) exports: onnxruntime gives ArtSeg's p_artifact on a field and on
    the same field with a small bright spot (which changes the score)."""
    import torch

    from artseg_core.data.phantoms import make_field
    from artseg_core.export import OnnxArtSeg, export_onnx
    from artseg_core.nets.profiles import get_profile
    from artseg_core.predict.model import ArtifactModel

    prof = get_profile("tiny", cls_pool="topk", cls_pool_param=0.02)
    torch.manual_seed(5)
    cls, unet = ArtifactModel.build_networks(prof)
    for m in cls.modules():  # non-trivial batch-norm statistics, so the export folds real numbers
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model = ArtifactModel(prof, cls, unet)
    export_onnx(model, tmp_path / "onnx")
    ox = OnnxArtSeg(tmp_path / "onnx")
    img = make_field(shape=(256, 256), seed=3, artifacts=["debris"]).image
    spot = img.astype(np.float32).copy()
    spot[100:104, 100:104] = spot.max() * 3
    ps = []
    for im in (img, spot):
        p = model.predict(im, gate=False).p_artifact
        assert abs(ox.p_artifact(im) - p) < 1e-4
        ps.append(p)
    assert ps[0] != ps[1]


@pytest.fixture(scope="module")
def quartile_model(model, tmp_path_factory):
    """The trained tiny model, its images scaled by their quartiles (``normalization="quartile"``, the default
    route's) instead of their percentiles; same networks."""
    from artseg_core.predict.model import load_model

    path = tmp_path_factory.mktemp("quartile") / "model.artseg"
    model.profile = model.profile.with_overrides(normalization="quartile")
    try:
        model.save(path)
    finally:
        model.profile = model.profile.with_overrides(normalization="percentile")
    return load_model(path, device="cpu"), path


def test_quartile_normalisation_exports_with_the_spec_operations(quartile_model, tmp_path):
    """bioimage.io writes the quartile scaling as scale_range (25, 75) then scale_linear then clip, and its own test
    reproduces ArtSeg's probability from the raw test input with them; onnxruntime does too through the JSON."""
    from artseg_core.data.phantoms import make_field
    from artseg_core.export import OnnxArtSeg, validate_package

    model, path = quartile_model
    assert model.profile.normalization == "quartile"
    pkg = tmp_path / "q.zip"
    _cli("export", path, "--format", "bioimageio", "--out", pkg, "--no-validate")
    pre = _rdf(pkg)["inputs"][0]["preprocessing"]
    ops = [p["id"] for p in pre if p["id"] != "ensure_dtype"]
    assert ops == ["scale_range", "scale_linear", "clip"]
    sr, sl = pre[[p["id"] for p in pre].index("scale_range")]["kwargs"], pre[[p["id"] for p in pre].index(
        "scale_linear")]["kwargs"]
    assert (sr["min_percentile"], sr["max_percentile"]) == (25.0, 75.0)
    assert (sl["gain"], sl["offset"]) == pytest.approx((1 / 6, 2.5 / 6))
    ok, summary = validate_package(pkg, weight_format="onnx")
    assert ok, summary
    assert "Reproduce test outputs from test inputs (onnx)" in summary
    with zipfile.ZipFile(pkg) as z:
        assert "quartile normalisation" in z.read("README.md").decode()

    _cli("export", path, "--format", "onnx", "--out", tmp_path / "onnx")
    ox = OnnxArtSeg(tmp_path / "onnx")
    assert ox.config["normalization"]["method"] == "quartile"
    img = make_field(shape=(300, 280), seed=13, artifacts=["bubble", "debris"]).image
    res = model.predict(img, gate=False)
    assert np.abs(ox.probability(img) - res.prob).max() < 1e-4
    assert abs(ox.p_artifact(img) - res.p_artifact) < 1e-4
