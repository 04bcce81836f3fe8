"""The model file: round trip, and clear errors for corrupt, truncated, foreign and newer-format files."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from artseg_core.io.modelfile import FORMAT_VERSION, ModelFileError, load_model_file, save_model_file

pytestmark = pytest.mark.engine  # also run in the numpy-2 environment (make test-numpy2)


def _write(tmp_path, **extra):
    arrays = {"classifier.w": np.arange(12, dtype=np.float32).reshape(3, 4), "unet.n": np.array(7, np.int64)}
    p = tmp_path / "m.artseg"
    save_model_file(p, {"profile": {"name": "tiny"}, **extra}, arrays)
    return p, arrays


def test_round_trip_keeps_arrays_and_manifest(tmp_path):
    p, arrays = _write(tmp_path, thresholds={"unet": 0.4})
    manifest, loaded = load_model_file(p)
    assert manifest["format"] == "artseg-model" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["thresholds"] == {"unet": 0.4}
    assert set(loaded) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(loaded[k], arrays[k])
        assert loaded[k].dtype == arrays[k].dtype


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="object"):
        save_model_file(tmp_path / "x.artseg", {}, {"a": np.array([{"x": 1}], dtype=object)})


@pytest.mark.parametrize("case,problem", [
    ("missing", "not found"),
    ("empty", "empty"),
    ("truncated", "truncated or corrupt"),
    ("garbage", "not a model file|truncated or corrupt"),
    ("foreign_zip", "not an ArtSeg model file"),
    ("foreign_manifest", "not an ArtSeg model file"),
    ("newer", "newer ArtSeg"),
    ("checksum", "checksum"),
    ("directory", "directory"),
])
def test_bad_model_files_raise_clear_errors(tmp_path, case, problem):
    p, _ = _write(tmp_path)
    bad = tmp_path / f"{case}.artseg"
    data = p.read_bytes()
    if case == "missing":
        pass
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif case == "garbage":
        bad.write_bytes(b"this is not a model" * 10)
    elif case == "foreign_zip":
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("something.txt", "hello")
    elif case in ("foreign_manifest", "newer", "checksum"):
        with zipfile.ZipFile(p) as zin:
            manifest = json.loads(zin.read("manifest.json"))
            weights = zin.read("weights.npz")
        if case == "foreign_manifest":
            manifest["format"] = "other-tool"
        elif case == "newer":
            manifest["format_version"] = FORMAT_VERSION + 1
        else:
            weights = weights[:-8] + b"\x00" * 8
        with zipfile.ZipFile(bad, "w") as zout:
            zout.writestr("manifest.json", json.dumps(manifest))
            zout.writestr("weights.npz", weights)
    elif case == "directory":
        bad.mkdir()
    with pytest.raises(ModelFileError, match=problem) as ei:
        load_model_file(bad)
    assert str(bad) in str(ei.value)


def test_no_pickle_is_ever_loaded(tmp_path):
    """A weights.npz holding a pickled object is refused (np.load with allow_pickle=False)."""
    import hashlib
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as z:
        z.writestr("a.npy", buf.getvalue())
    weights = npz.getvalue()
    manifest = {"format": "artseg-model", "format_version": 1, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    bad = tmp_path / "pickle.artseg"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        zf.writestr("weights.npz", weights)
    with pytest.raises(ModelFileError, match="corrupt weights"):
        load_model_file(bad)


def test_model_truncated_by_100_bytes_is_called_truncated(tmp_path):
    """Issue 15.11: the inner weights.npz's zip directory made it look like "not an ArtSeg model file"."""
    p, _ = _write(tmp_path)
    bad = tmp_path / "cut.artseg"
    bad.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="truncated or corrupt model file"):
        load_model_file(bad)


def test_inflated_manifest_and_too_many_members_are_refused_before_reading(tmp_path):
    """Issue 15.9: a 3 MB file whose manifest unpacks to 300 MB was read whole (656 MB peak for `artseg info`)."""
    import resource

    bomb = tmp_path / "bomb.artseg"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", b'{"format": "artseg-model", "x": "' + b" " * (300 << 20) + b'"}')
        zf.writestr("weights.npz", b"")
    assert bomb.stat().st_size < 2 << 20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelFileError, match="unpacks to"):
        load_model_file(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100 << 10  # kB: < 100 MB more
    many = tmp_path / "many.artseg"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(100):
            zf.writestr(f"m{i}.json", "{}")
    with pytest.raises(ModelFileError, match="100 members"):
        load_model_file(many)


def test_non_numeric_threshold_is_a_model_file_error(tmp_path):
    """Issue 15.11: a text threshold failed on every image with a TypeError."""
    p, _ = _write(tmp_path, thresholds={"unet": "high"})
    with pytest.raises(ModelFileError, match=r"thresholds.unet is 'high', not a number"):
        load_model_file(p)
    p, _ = _write(tmp_path, thresholds={"unet": 0.5}, quality_thresholds={"focus_min": 1.0, "method": "mad"})
    assert load_model_file(p)[0]["quality_thresholds"]["method"] == "mad"
