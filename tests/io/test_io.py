"""Tests for artseg_core.io: reading every supported format, bad input, normalisation, atomic writes, listing."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from artseg_core import io as aio
from artseg_core.io.images import ImageReadError, read_image, read_image_with_meta
from artseg_core.imgproc.normalize import NORMALIZE_SUBSAMPLE_PIXELS, normalize

pytestmark = pytest.mark.engine  # also run in the numpy-2 environment (make test-numpy2)


def _ramp(shape=(40, 50), dtype=np.uint16, scale=1):
    a = (np.arange(shape[0] * shape[1]).reshape(shape) * scale) % 60000
    return a.astype(dtype)


# --------------------------------------------------------------------------------------------- good input


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32,
                                   np.float32, np.float64])
def test_tiff_dtypes_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    if info is not None:
        a = rng.integers(info.min, info.max, size=(30, 41), endpoint=True).astype(dtype)
    else:
        a = rng.normal(100, 20, size=(30, 41)).astype(dtype)
    f = tmp_path / f"img_{np.dtype(dtype).name}.tif"
    tifffile.imwrite(f, a)
    b = read_image(f)
    assert b.dtype == np.dtype(dtype)
    assert b.shape == (30, 41)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [">u2", ">f4", ">i4"])
def test_big_endian_tiff_returns_native_order(tmp_path, dtype):
    a = _ramp((33, 47)).astype(dtype)
    f = tmp_path / "be.tiff"
    tifffile.imwrite(f, a, byteorder=">")
    with open(f, "rb") as fh:
        assert fh.read(2) == b"MM"  # really big-endian on disk
    b = read_image(f)
    assert b.dtype.isnative
    assert b.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(b, a.astype(b.dtype))


def test_bigtiff(tmp_path):
    a = _ramp((20, 30))
    f = tmp_path / "big.tif"
    tifffile.imwrite(f, a, bigtiff=True)
    np.testing.assert_array_equal(read_image(f), a)


def test_stack_needs_plane_and_reads_each_plane(tmp_path):
    stack = np.stack([_ramp((20, 30)) + 1000 * k for k in range(5)]).astype(np.uint16)
    f = tmp_path / "zstack.tif"
    tifffile.imwrite(f, stack, photometric="minisblack")
    with pytest.raises(ImageReadError) as e:
        read_image(f)
    assert "zstack.tif" in str(e.value)
    assert "3-D image with 5 planes" in str(e.value) and "choose a plane" in str(e.value)
    for k in range(5):
        np.testing.assert_array_equal(read_image(f, plane=k), stack[k])
    for bad in (5, -1, 99):
        with pytest.raises(ImageReadError, match="out of range") as e:
            read_image(f, plane=bad)
        assert "zstack.tif" in str(e.value)


def test_imagej_hyperstack_planes_in_c_order_and_pixel_size(tmp_path):
    data = np.arange(2 * 3 * 10 * 12, dtype=np.uint16).reshape(2, 3, 10, 12)
    f = tmp_path / "hyper.tif"
    tifffile.imwrite(f, data, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"axes": "TZYX", "unit": "um"})
    with pytest.raises(ImageReadError, match="4-D image with 6 planes"):
        read_image(f)
    img, meta = read_image_with_meta(f, plane=4)
    np.testing.assert_array_equal(img, data[1, 1])  # plane 4 = t1, z1 in C order
    assert meta["n_planes"] == 6 and meta["axes"] == "TZYX"
    assert meta["pixel_size_um"] == pytest.approx(0.65, rel=1e-3)


def test_pixel_size_from_centimetre_resolution_and_absent(tmp_path):
    a = _ramp((10, 12))
    f = tmp_path / "cm.tif"
    tifffile.imwrite(f, a, resolution=(1e4 / 0.325, 1e4 / 0.325), resolutionunit="CENTIMETER")
    assert read_image_with_meta(f)[1]["pixel_size_um"] == pytest.approx(0.325, rel=1e-3)
    g = tmp_path / "inch.tif"
    tifffile.imwrite(g, a, resolution=(72, 72), resolutionunit="INCH")  # a print dpi, not a pixel size
    assert read_image_with_meta(g)[1]["pixel_size_um"] is None


def test_single_page_stack_plane_zero_ok_one_not(tmp_path):
    a = _ramp((10, 12))
    f = tmp_path / "one.tif"
    tifffile.imwrite(f, a)
    np.testing.assert_array_equal(read_image(f, plane=0), a)
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(f, plane=1)


def test_rgb_tiff_with_equal_channels_is_grey(tmp_path):
    g = _ramp((21, 22), np.uint8)
    g[0, 0] = 255
    f = tmp_path / "rgb.tif"
    tifffile.imwrite(f, np.stack([g, g, g], axis=-1), photometric="rgb")
    out, meta = read_image_with_meta(f)
    assert out.dtype == np.uint8 and out.shape == g.shape
    np.testing.assert_array_equal(out, g)
    assert meta["colour"] == "equal channels"


def test_planar_rgb_tiff_is_grey(tmp_path):
    g = _ramp((21, 22), np.uint16)
    f = tmp_path / "planar.tif"
    tifffile.imwrite(f, np.stack([g, g, g]), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(f), g)


def test_rgb_tiff_stack_with_plane(tmp_path):
    g = np.stack([_ramp((9, 10), np.uint8) + k for k in range(4)])
    f = tmp_path / "rgbstack.tif"
    tifffile.imwrite(f, np.repeat(g[..., None], 3, axis=-1), photometric="rgb")
    with pytest.raises(ImageReadError, match="4 planes"):
        read_image(f)
    np.testing.assert_array_equal(read_image(f, plane=2), g[2])


def test_png_grey_8_and_16_bit(tmp_path):
    a8 = _ramp((15, 17), np.uint8)
    f8 = tmp_path / "g8.png"
    Image.fromarray(a8).save(f8)
    b = read_image(f8)
    assert b.dtype == np.uint8
    np.testing.assert_array_equal(b, a8)
    a16 = _ramp((15, 17), np.uint16, scale=97)
    f16 = tmp_path / "g16.png"
    aio.write_png(f16, a16)
    b = read_image(f16)
    assert b.dtype == np.uint16
    np.testing.assert_array_equal(b, a16)


def test_rgb_and_rgba_png_with_equal_channels(tmp_path):
    g = _ramp((15, 17), np.uint8)
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.stack([g, g, g, np.full_like(g, 255)], -1)).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), g)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), g)


def test_grey_content_rgb_jpeg_reads_as_grey_without_warning(tmp_path):
    yy, xx = np.mgrid[0:64, 0:80]
    g = (100 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.uint8)
    f = tmp_path / "grey.jpg"
    Image.fromarray(np.stack([g, g, g], -1)).save(f, quality=90)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, meta = read_image_with_meta(f)
    assert out.shape == g.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - g.astype(int)).mean() < 3  # JPEG loss only
    assert meta["format"] == "jpeg"


def test_colour_image_luminance_with_warning_or_error(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    rgb[:, :6, 2] = 50  # not constant after conversion
    f = tmp_path / "colour.png"
    Image.fromarray(rgb).save(f)
    with pytest.warns(aio.ColourImageWarning, match="colour.png"):
        out = read_image(f)
    # 0.299*200 + 0.587*100 + 0.114*50 = 59.8 + 58.7 + 5.7 = 124.2 -> 124 ; without blue: 118.5 -> 118 (round half even)
    assert out[0, 0] == 124 and out[0, 11] == 118
    with pytest.raises(ImageReadError, match="colour image") as e:
        read_image(f, colour="error")
    assert "colour.png" in str(e.value)


def test_format_is_sniffed_not_taken_from_suffix(tmp_path):
    a = _ramp((12, 13), np.uint8)
    f = tmp_path / "really_a_png.tif"
    Image.fromarray(a).save(f, format="PNG")
    img, meta = read_image_with_meta(f)
    assert meta["format"] == "png"
    np.testing.assert_array_equal(img, a)


def test_bool_tiff_mask_allowed_when_constant_permitted(tmp_path):
    m = np.zeros((8, 9), bool)
    f = tmp_path / "empty_mask.tif"
    tifffile.imwrite(f, m)
    with pytest.raises(ImageReadError, match="constant image"):
        read_image(f)
    out = read_image(f, allow_constant=True)
    assert out.dtype == bool and not out.any()


# ---------------------------------------------------------------------------------------------- bad input


def _assert_bad(f, *fragments, **kw):
    with pytest.raises(ImageReadError) as e:
        read_image(f, **kw)
    msg = str(e.value)
    assert os.path.basename(str(f)) in msg, msg
    assert e.value.path == str(f)
    for frag in fragments:
        assert frag in msg, msg
    return e.value


def test_missing_file(tmp_path):
    _assert_bad(tmp_path / "nope.tif", "no such file")


def test_folder_is_not_an_image(tmp_path):
    d = tmp_path / "adir.tif"
    d.mkdir()
    _assert_bad(d, "folder")


def test_empty_file(tmp_path):
    f = tmp_path / "empty.tif"
    f.write_bytes(b"")
    _assert_bad(f, "empty file")


def test_not_an_image(tmp_path):
    f = tmp_path / "notes.png"
    f.write_text("hello, I am not a picture")
    _assert_bad(f, "not a supported image")


@pytest.mark.parametrize("fmt", ["tif", "png", "jpg"])
def test_truncated_files(tmp_path, fmt):
    a = np.random.default_rng(1).integers(0, 255, size=(200, 200)).astype(np.uint8)
    full = tmp_path / f"full.{fmt}"
    if fmt == "tif":
        tifffile.imwrite(full, a)
    else:
        Image.fromarray(a).save(full)
    data = full.read_bytes()
    f = tmp_path / f"truncated.{fmt}"
    f.write_bytes(data[: len(data) // 2])
    err = _assert_bad(f)
    assert "truncated" in err.problem or "corrupt" in err.problem


def test_corrupt_tiff_header(tmp_path):
    f = tmp_path / "corrupt.tif"
    f.write_bytes(b"II*\x00" + b"\xff" * 60)
    err = _assert_bad(f)
    assert "corrupt" in err.problem or "truncated" in err.problem


def test_complex_dtype_refused(tmp_path):
    f = tmp_path / "complex.tif"
    tifffile.imwrite(f, (_ramp((8, 9)) + 1j).astype(np.complex64))
    _assert_bad(f, "unsupported pixel type complex64")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_refused(tmp_path, bad):
    a = _ramp((8, 9)).astype(np.float32)
    a[3, 4] = bad
    f = tmp_path / "nonfinite.tif"
    tifffile.imwrite(f, a)
    _assert_bad(f, "non-finite")


def test_constant_image_refused(tmp_path):
    f = tmp_path / "flat.tif"
    tifffile.imwrite(f, np.full((8, 9), 7, np.uint16))
    _assert_bad(f, "constant image", "7")


def test_plane_must_be_int(tmp_path):
    f = tmp_path / "s.tif"
    tifffile.imwrite(f, np.stack([_ramp((8, 9))] * 2), photometric="minisblack")
    _assert_bad(f, "plane must be an integer", plane="1")


def test_error_is_a_value_error_and_pickles():
    import pickle

    e = ImageReadError("/x/y.tif", "empty file (0 bytes)")
    assert isinstance(e, ValueError)
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == "/x/y.tif: empty file (0 bytes)" and e2.problem == e.problem


# ------------------------------------------------------------------------------------------ normalisation


def test_normalize_maps_percentiles_to_0_and_1():
    rng = np.random.default_rng(3)
    a = rng.normal(1000, 100, size=(300, 300)).astype(np.uint16)
    out = normalize(a, 1.0, 99.0)
    assert out.dtype == np.float32 and out.shape == a.shape
    lo, hi = np.percentile(a, [1, 99])
    assert out.min() == 0.0 and out.max() == 1.0
    # fraction of pixels clipped at each end is about 1 %
    assert 0.005 < (out == 0).mean() < 0.02 and 0.005 < (out == 1).mean() < 0.02
    mid = (a > lo) & (a < hi)
    np.testing.assert_allclose(out[mid], (a[mid] - lo) / (hi - lo), rtol=1e-4, atol=1e-5)


def test_normalize_no_clip_is_affine_and_monotone():
    a = np.linspace(-5, 5, 1001).reshape(7, 143)
    out = normalize(a, 10, 90, clip=False)
    assert out.min() < 0 and out.max() > 1
    d = np.diff(out.ravel())
    assert (d > 0).all()
    np.testing.assert_allclose(np.diff(d), 0, atol=1e-5)


def test_normalize_invariant_to_affine_change_of_input():
    rng = np.random.default_rng(4)
    a = rng.gamma(2.0, 50.0, size=(200, 210))
    np.testing.assert_allclose(normalize(a), normalize(3.0 * a + 1e6), atol=1e-4)


def test_normalize_constant_is_zero_and_dtype_independent():
    assert not normalize(np.full((5, 6), 42, np.uint8)).any()
    rng = np.random.default_rng(5)
    a = rng.integers(0, 255, size=(64, 64)).astype(np.uint8)
    np.testing.assert_allclose(normalize(a), normalize(a.astype(np.float64)), atol=1e-6)
    np.testing.assert_allclose(normalize(a), normalize(a.astype(">u2").astype(np.uint32)), atol=1e-6)


def test_normalize_large_image_subsample_close_to_exact():
    rng = np.random.default_rng(6)
    a = rng.normal(2000, 300, size=(2100, 2100)).astype(np.uint16)  # 4.4 Mpx > threshold
    assert a.size > NORMALIZE_SUBSAMPLE_PIXELS
    lo, hi = np.percentile(a, [1.0, 99.8])
    exact = np.clip((a.astype(np.float64) - lo) / (hi - lo), 0, 1)
    assert np.abs(normalize(a) - exact).max() < 0.01


def test_normalize_rejects_bad_percentiles():
    with pytest.raises(ValueError):
        normalize(np.arange(10.0), 50, 10)


# ------------------------------------------------------------------------------------------ atomic writes


def test_atomic_write_leaves_no_partial_file_on_error(tmp_path):
    dest = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with aio.atomic_write(dest) as fh:
            fh.write(b"partial data")
            raise RuntimeError("writer failed")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []  # temp file removed too


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    dest = tmp_path / "table.csv"
    aio.write_text(dest, "old\n")
    with pytest.raises(ValueError):
        with aio.atomic_write(dest, "w") as fh:
            fh.write("new half")
            raise ValueError("boom")
    assert dest.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_atomic_write_permissions_are_normal(tmp_path):
    dest = tmp_path / "p.txt"
    aio.write_text(dest, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (dest.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_write_tiff_failure_leaves_nothing(tmp_path):
    dest = tmp_path / "bad.tif"
    with pytest.raises(Exception):
        aio.write_tiff(dest, np.zeros((4, 4)), not_a_tifffile_option=1)
    assert list(tmp_path.iterdir()) == []


def test_write_tiff_and_png_round_trip(tmp_path):
    a = _ramp((20, 25), np.float32)
    aio.write_tiff(tmp_path / "a.tif", a, compression="zlib")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), a)
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[..., 1] = 9
    aio.write_png(tmp_path / "o.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), rgb)
    m = np.eye(5, dtype=bool)
    aio.write_png(tmp_path / "m.png", m)
    np.testing.assert_array_equal(read_image(tmp_path / "m.png"), m.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="write_png"):
        aio.write_png(tmp_path / "f.png", np.zeros((3, 3), np.float32))


def test_write_text_unicode(tmp_path):
    aio.write_text(tmp_path / "t.txt", "µm, ok\r\n")
    assert (tmp_path / "t.txt").read_bytes() == "µm, ok\r\n".encode()


# ------------------------------------------------------------------------------------------------ listing


def test_list_images(tmp_path):
    for name in ["b.TIF", "a.tif", "c.png", "d.JPEG", "e.jpg", "notes.txt", ".hidden.tif", "f.tiff"]:
        (tmp_path / name).write_bytes(b"x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "g.tif").write_bytes(b"x")
    names = [p.name for p in aio.list_images(tmp_path)]
    assert names == sorted(["a.tif", "b.TIF", "c.png", "d.JPEG", "e.jpg", "f.tiff"], key=lambda n: str(tmp_path / n))
    assert "g.tif" in [p.name for p in aio.list_images(tmp_path, recursive=True)]
    # files, folders and globs together, duplicates removed
    mixed = aio.list_images([tmp_path / "a.tif", str(tmp_path / "*.tif"), tmp_path, str(tmp_path / "a.tif")])
    assert len(mixed) == len(set(mixed)) == 6
    assert [p.name for p in aio.list_images(str(tmp_path / "*.png"))] == ["c.png"]
    assert aio.list_images(str(tmp_path / "*.nothing")) == []
    with pytest.raises(ImageReadError, match="no such file or folder"):
        aio.list_images(tmp_path / "missing")
    with pytest.raises(ImageReadError, match="notes.txt"):
        aio.list_images(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------------------- real images


@pytest.mark.real
def test_real_operetta_big_endian_uint16(real_data_dir):
    files = sorted((real_data_dir / "ebony_watson").glob("*.tiff"))
    assert files
    for f in files[:3]:
        img = read_image(f)
        assert img.shape == (1080, 1080) and img.dtype == np.uint16 and img.dtype.isnative
        assert img.std() > 0
        n = normalize(img)
        assert n.dtype == np.float32 and 0.3 < float(np.median(n)) < 0.95


@pytest.mark.real
def test_real_sephace_tif(real_data_dir):
    f = next((real_data_dir / "sephace_zstacks" / "set1").glob("fine_*.tif"))
    img = read_image(f)
    assert img.shape == (1024, 1344) and img.dtype == np.uint8


@pytest.mark.real
def test_real_wound_healing_rgb_jpeg_reads_as_grey(real_data_dir):
    f = real_data_dir / "wound_healing_phase" / "DMSO_B5_t0.JPG"
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        img, meta = read_image_with_meta(f)
    assert img.ndim == 2 and img.shape == (1536, 2304) and img.dtype == np.uint8
    assert meta["colour"] is not None
