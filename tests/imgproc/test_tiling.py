"""Tiled prediction: exact for small receptive fields, seamless, any size, bounded memory."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from artseg_core.imgproc.tiling import blend_window, iter_tiles, pad_to_multiple, predict_tiled, tile_starts

pytestmark = pytest.mark.engine  # also run in the numpy-2 environment (make test-numpy2)


def _conv_stack(seed: int = 0) -> torch.nn.Module:
    """Fixed random conv stack: three 3x3 convs (zero padding) -> receptive field 7x7 (radius 3)."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for cin, cout in ((1, 4), (4, 4), (4, 1)):
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.5)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)
        layers += [conv, torch.nn.Tanh()]
    layers[-1] = torch.nn.Sigmoid()
    return torch.nn.Sequential(*layers).eval()


@pytest.fixture(scope="module")
def net_fn():
    net = _conv_stack()
    calls = []

    def fn(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.ndim == 4 and batch.shape[1] == 1
        calls.append(batch.shape)
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()

    fn.calls = calls
    return fn


def _untiled(fn, img):
    return fn(np.ascontiguousarray(img, dtype=np.float32)[None, None])[0, 0]


@pytest.mark.parametrize("shape", [(150, 203), (64, 97), (129, 64)])
def test_tiled_equals_untiled_for_small_receptive_field(net_fn, shape):
    rng = np.random.default_rng(1)
    img = rng.normal(size=shape).astype(np.float32)
    ref = _untiled(net_fn, img)
    net_fn.calls.clear()
    got = predict_tiled(net_fn, img, tile=64, overlap=32, divisor=8, batch_size=3)
    assert got.shape == shape and got.dtype == np.float32
    # receptive field 7 < overlap / 2 = 16 and every tile edge is either an image edge or a cut
    # edge with zero blend weight: equal everywhere
    assert np.abs(got - ref).max() < 1e-5
    assert all(b <= 3 and h % 8 == 0 and w % 8 == 0 for b, _, h, w in net_fn.calls)
    n_tiles = len(list(iter_tiles(shape, 64, 32, 8)))
    assert sum(c[0] for c in net_fn.calls) == n_tiles
    assert n_tiles > 1


def test_image_smaller_than_tile_is_reflect_padded(net_fn):
    rng = np.random.default_rng(2)
    img = rng.normal(size=(21, 37)).astype(np.float32)
    net_fn.calls.clear()
    got = predict_tiled(net_fn, img, tile=128, overlap=32, divisor=16)
    assert net_fn.calls == [(1, 1, 32, 48)]
    padded, pad = pad_to_multiple(img, 16)
    assert pad == (11, 11)
    np.testing.assert_allclose(got, _untiled(net_fn, padded)[:21, :37], atol=1e-6)
    # away from the padded (bottom/right) border it equals the unpadded prediction
    ref = _untiled(net_fn, img)
    np.testing.assert_allclose(got[:-3, :-3], ref[:-3, :-3], atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1), (1, 700), (700, 1), (3, 2), (97, 1001), (513, 512)])
def test_identity_and_constant_are_reproduced_without_seams(shape):
    rng = np.random.default_rng(3)
    img = rng.random(shape, dtype=np.float32)
    got = predict_tiled(lambda b: b.copy(), img, tile=128, overlap=48, divisor=32, batch_size=2)
    np.testing.assert_allclose(got, img, rtol=0, atol=1e-6)
    const = predict_tiled(lambda b: np.full_like(b, 0.7), img, tile=128, overlap=48, divisor=32)
    np.testing.assert_allclose(const, 0.7, rtol=0, atol=1e-6)


def test_blend_is_smooth_for_tile_dependent_outputs():
    """A predictor that returns a different constant for every tile must give a smooth ramp, not seams."""
    rng = np.random.default_rng(4)
    vals = iter(rng.random(1000))

    def fn(batch):
        return np.stack([np.full(batch.shape[1:], next(vals), np.float32) for _ in batch])

    out = predict_tiled(fn, np.zeros((600, 700), np.float32), tile=128, overlap=64, divisor=32)
    jump = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    # cosine ramp over 32 px: max slope pi / (2 * 32) ~ 0.05 of the value range (< 1)
    assert jump < 0.06
    assert out.min() >= 0 and out.max() <= 1


def test_windows_cover_and_are_complementary():
    w = blend_window(128, 64, True, True)
    assert w[:16].max() == 0 and w[-16:].max() == 0 and np.all(w[48:80] == 1)
    # two tiles overlapping by exactly `overlap` sum to 1 in the overlap
    a, b = blend_window(128, 64, False, True), blend_window(128, 64, True, False)
    np.testing.assert_allclose(a[64:] + b[:64], 1, atol=1e-6)
    starts, length = tile_starts(1000, 256, 64, 32)
    assert starts[0] == 0 and starts[-1] + length == 1000
    assert all(s % 32 == 0 for s in starts[:-1])
    assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:]))


def test_out_dtype_and_preallocated_memmap(tmp_path):
    img = np.random.default_rng(5).random((300, 260), dtype=np.float32)
    half = predict_tiled(lambda b: b.copy(), img, tile=128, overlap=32, out_dtype=np.float16)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, img, atol=1e-3)
    mm = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=img.shape)
    res = predict_tiled(lambda b: b.copy(), img, tile=128, overlap=32, out=mm)
    assert res is mm
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), img, atol=1e-6)


def test_memory_is_bounded_by_output_plus_strip():
    """No full-size weight or padded copy: peak traced allocation ~ output + a few tile rows."""
    img = np.zeros((2048, 1536), np.float32)
    tracemalloc.start()
    try:
        out = predict_tiled(lambda b: b.copy(), img, tile=256, overlap=64, divisor=32, batch_size=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    strip = 3 * 256 * 1536 * 4  # a batch spans at most 2 tile rows + one tile height
    assert peak < out.nbytes + 2 * strip
    assert peak < 2 * out.nbytes  # a full-size weight array would already double it


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="2-D"):
        predict_tiled(lambda b: b, np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="empty"):
        predict_tiled(lambda b: b, np.zeros((0, 4)))
    with pytest.raises(ValueError, match="predictor returned shape"):
        predict_tiled(lambda b: b[:, 0], np.zeros((40, 40), np.float32), tile=32, overlap=8)
    with pytest.raises(ValueError, match="overlap"):
        predict_tiled(lambda b: b, np.zeros((100, 100)), tile=64, overlap=64)


def test_tiles_are_shrunk_to_cover_the_axis_without_waste():
    # a 1080-pixel field with 1024 tiles: two tiles are needed, but not two full 1024-pixel ones
    starts, length = tile_starts(1080, 1024, 128, 16)
    assert len(starts) == 2 and length == 608 and starts[-1] + length == 1080
    assert starts[0] + length - starts[1] >= 128
    for size in (300, 513, 700, 1080, 1337, 2156, 2556):
        for tile, overlap, div in ((256, 32, 16), (512, 64, 8), (1024, 128, 32)):
            st, ln = tile_starts(size, tile, overlap, div)
            if size <= tile:
                continue
            full = list(range(0, size - tile, (tile - overlap) // div * div)) + [size - tile]
            assert len(st) == len(full), (size, tile)  # never more tiles than the requested length needs
            assert ln <= tile and ln % div == 0 and st[0] == 0 and st[-1] + ln == size
            assert all(s % div == 0 for s in st[:-1])
            assert all(a + ln - b >= overlap for a, b in zip(st, st[1:])), (size, tile, st, ln)
