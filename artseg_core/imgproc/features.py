"""Per-pixel filter-bank features of a normalised field, for the pixel-evidence and normality models.

At each scale sigma in :data:`SCALES` (pixels): Gaussian-smoothed intensity, gradient magnitude, the two
eigenvalues of the Hessian (ridge and blob responses) and the local standard deviation, scale-normalised
(Lindeberg's sigma^k factors) so that a structure gives similar values at its own scale. Two more channels
measure the deviation from a smooth background (as the non-learned detector does: median of a 4x down-sampled
field). The intensity is taken relative to the field's median, so a field's overall brightness does not enter.
The same filter bank is what ilastik's pixel classifier starts from (Berg et al., Nat Methods 2019).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Gaussian scales in pixels (full-resolution pixels of the field)
SCALES: tuple[int, ...] = (1, 2, 4, 8, 16)
PER_SCALE = ("smooth", "gradient", "hessian_hi", "hessian_lo", "local_std")
FEATURE_NAMES: tuple[str, ...] = tuple(f"{n}_s{s}" for s in SCALES for n in PER_SCALE) + (
    "background_deviation", "abs_background_deviation_s2")
N_FEATURES = len(FEATURE_NAMES)


def _background(x: np.ndarray) -> np.ndarray:
    """Smooth background: median (15 px) of the 4x down-sampled field, interpolated back."""
    step = 4 if min(x.shape) >= 64 else 1
    bg = ndi.median_filter(x[::step, ::step], size=15, mode="reflect")
    zoom = (x.shape[0] / bg.shape[0], x.shape[1] / bg.shape[1])
    out = ndi.zoom(bg, zoom, order=1, mode="nearest", grid_mode=True)
    return out[: x.shape[0], : x.shape[1]]


def pixel_features(image: np.ndarray) -> np.ndarray:
    """(N_FEATURES, H, W) float32 features of a normalised 2-D field (see the module docstring)."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"pixel_features expects a 2-D image, got shape {x.shape}")
    x = x - np.float32(np.median(x))
    out = np.empty((N_FEATURES,) + x.shape, np.float32)
    k = 0
    f1 = ndi.gaussian_filter1d
    for s in SCALES:
        # the six Gaussian derivatives share their first (axis 0) passes: the same 1-D passes, in the same order and
        # precision, as ndi.gaussian_filter(x, s, order=(o0, o1)) does for each, so the values are identical
        along0 = [f1(x, s, axis=0, order=o, mode="reflect") for o in (0, 1, 2)]
        g = f1(along0[0], s, axis=1, order=0, mode="reflect")
        gx = f1(along0[0], s, axis=1, order=1, mode="reflect")
        hxx = f1(along0[0], s, axis=1, order=2, mode="reflect")
        gy = f1(along0[1], s, axis=1, order=0, mode="reflect")
        hxy = f1(along0[1], s, axis=1, order=1, mode="reflect")
        hyy = f1(along0[2], s, axis=1, order=0, mode="reflect")
        half_trace = (hxx + hyy) / 2
        d = np.sqrt(((hxx - hyy) / 2) ** 2 + hxy ** 2)
        var = ndi.gaussian_filter(x * x, s, mode="reflect") - g * g
        out[k] = g
        out[k + 1] = s * np.hypot(gx, gy)
        out[k + 2] = s * s * (half_trace + d)
        out[k + 3] = s * s * (half_trace - d)
        out[k + 4] = np.sqrt(np.maximum(var, 0))
        k += len(PER_SCALE)
    dev = x - _background(x)
    out[k] = dev
    out[k + 1] = ndi.gaussian_filter(np.abs(dev), 2, mode="reflect")
    return out


def deviation_z(features: np.ndarray) -> np.ndarray:
    """Robust z-score (median / MAD over the field) of the smoothed background deviation: how unusual a pixel
    is within its own field, the non-learned detector's score. (H, W) float32."""
    dev = features[-1]
    med = float(np.median(dev))
    mad = float(np.median(np.abs(dev - med))) * 1.4826 + 1e-6
    return ((dev - med) / mad).astype(np.float32)


def sample_pixels(features: np.ndarray, n: int, rng: np.random.Generator, candidate_share: float = 2 / 3,
                  ) -> np.ndarray:
    """(n, N_FEATURES) feature rows of one field: ``1 - candidate_share`` of them uniform over the field, the rest
    drawn with weight (clipped deviation z)^2, so that rare unusual pixels (small debris, thin fibres) are seen
    often enough. The same rule applies to clean and artifact fields, so the two classes stay comparable."""
    flat = features.reshape(features.shape[0], -1)
    npx = flat.shape[1]
    n_uni = int(round(n * (1 - candidate_share)))
    w = np.clip(deviation_z(features).ravel(), 0, 8).astype(np.float64) ** 2 + 1e-9
    idx = np.concatenate([rng.choice(npx, min(n_uni, npx), replace=False),
                          rng.choice(npx, n - min(n_uni, npx), replace=True, p=w / w.sum())])
    return flat[:, idx].T.copy()


__all__ = ["SCALES", "FEATURE_NAMES", "N_FEATURES", "pixel_features", "deviation_z", "sample_pixels"]
