"""Synthetic brightfield fields of view with exact artifact and nuclei ground truth.

A phantom is rendered in three stages, so that the ground truth is exact by construction:

1. **Clean sample.** Cells are drawn as a height map (thin lamella, thicker centre, nucleus bump, refractile
   vesicles, membrane grooves between touching cells) and an absorbance map (faint cytoplasm, stained cells,
   dark granules concentrated around the nucleus, slightly darker textured nuclei with nucleoli). Unstained
   brightfield contrast is formed the way a slightly defocused microscope forms it (transport-of-intensity
   approximation): ``T = exp(-absorbance) * (1 - k * s^2 * LoG_s(height))``. This gives faint textured bodies,
   thin bright/dark halos at membranes and nuclear envelopes, and dark granules *inside* cells, so that "dark
   spot" alone does not mean "artifact". The nuclear (DAPI-like) channel is rendered from the same nuclei.
2. **Artifacts.** Each artifact object computes, in a padded bounding box, a new transmission patch (and a new
   nuclear-channel patch) and its pixel mask; the patch replaces the image **only inside the mask**. Pixels
   outside the union of the masks are therefore bit-identical to the same field rendered with
   ``artifacts=[]`` (the cell scene, the illumination and the camera noise come from random streams that do not
   depend on the artifacts). Each object's mask is one connected region.
3. **Camera.** Smooth uneven illumination (off-centre vignetting and a linear gradient), then Poisson-Gaussian
   noise in its normal approximation ``signal + sqrt(gain * signal + read^2) * z`` (accurate at the several
   thousand photo-electrons per pixel of a brightfield background; Foi et al., IEEE TIP 2008), with one fixed
   standard-normal draw ``z`` per pixel, then rounding to 8 or 16 bits. 16-bit backgrounds lie at
   15000-45000 DN with about 1-1.5 % noise, like the real uint16 Operetta images; 8-bit backgrounds at 120-180.

Artifact kinds (:data:`ARTIFACT_KINDS`) and what the mask covers:

``debris``
    Irregular specks 5-30 px across, sometimes multi-lobed: mostly dark (opacity 35-90 %) with a thin bright
    halo; some bright refractile crystals with a dark rim; some low-contrast blurred dust. Mask: the speck plus
    its halo.
``fibre``
    Thin (1-3.5 px) long smoothly curved lines, 60 px up to longer than the field: dark, bright-centred, or
    blurred, wider (up to 6 px) and faint. Mask: the line widened by its blur.
``bubble``
    Round air bubbles with a dark ring, a bright inner rim, interference fringes near the rim and a bright,
    low-contrast interior in which the cells are only faintly seen. Mask: the disc and its ring.
``clump``
    Aggregates of 3-25 round refractile dead cells (bright centres, dark rims, some dark granular members) with
    a diffuse halo. Mask: the aggregate and halo.
``defocus``
    An irregular region (placed on cells) where the sample is rendered with a larger defocus: blurred content
    with strong halos, and a faint brightness ring at the edge of the region. Mask: where the defocused
    rendering has non-zero weight.
``blotch``
    A smooth irregular stain/illumination region, darker (70 %, 6-35 %) or brighter (5-15 %), mottled, sometimes
    with a darker tide mark. Mask: where the multiplicative change is non-zero.

Sizes run from a few dozen pixels (debris) to about half of the field (bubble, defocus, blotch).

Nuclear channel: artifacts that sit physically on the sample also change it, so that nuclei counting is
polluted. Debris autofluoresces in 70 % of cases (a bright blob of nucleus-like intensity, which
IdentifyPrimaryObjects counts as a nucleus) and obscures otherwise; fibres glow faintly (50 %) or obscure;
dead-cell clumps show bright condensed (pyknotic) nuclei and a haze; bubbles attenuate and blur the nuclei inside
and darken the ring; defocus blurs the nuclei in its region; a blotch (an illumination/stain effect of the
transmitted light) does not touch the nuclear channel.

Determinism: everything is drawn from ``numpy.random.default_rng`` generators seeded with ``[seed, stream]``
(scene, artifact kinds, one per artifact object, noise); no global random state is used. Output is identical
for a seed within one environment; numpy 1.26 and numpy 2 may differ by 1 grey level in a handful of pixels
(NEP 50 scalar promotion changes the last bits of some float32 products).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field as _dc_field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["ARTIFACT_KINDS", "Field", "make_field", "make_plate", "well_name_0based"]

ARTIFACT_KINDS: tuple[str, ...] = ("debris", "fibre", "bubble", "clump", "defocus", "blotch")

# Order in which artifact effects are applied (physical stacking: sample plane first, illumination last).
_APPLY_ORDER = {"defocus": 0, "clump": 1, "debris": 2, "fibre": 3, "bubble": 4, "blotch": 5}

_STREAM_SCENE, _STREAM_KINDS, _STREAM_NOISE, _STREAM_OBJECT = 0, 1, 2, 3


@dataclass(eq=False)
class Field:
    """One synthetic field of view and its exact ground truth.

    Attributes
    ----------
    image : numpy.ndarray
        Brightfield image, uint8 or uint16, shape (H, W).
    nuclei_image : numpy.ndarray
        Nuclear (DAPI-like fluorescence) channel of the same field, same dtype and shape.
    artifact_labels : numpy.ndarray
        int32 (H, W): 0 = no artifact, 1..n = artifact objects (each one connected region).
    artifact_types : dict[int, str]
        Artifact label -> kind (one of :data:`ARTIFACT_KINDS`).
    nuclei_labels : numpy.ndarray
        int32 (H, W): true nuclei, 0 = background. Not changed by artifacts.
    density : float
        Cell density parameter used (about the fraction of the field covered by cells).
    pixel_size : float
        Micrometres per pixel used to size the cells.
    info : dict
        Rendering parameters (background level, noise, focus sign, ...), for reports and debugging.
    """

    image: np.ndarray
    nuclei_image: np.ndarray
    artifact_labels: np.ndarray
    artifact_types: dict[int, str]
    nuclei_labels: np.ndarray
    density: float = 0.0
    pixel_size: float = 0.65
    info: dict = _dc_field(default_factory=dict)

    @property
    def artifact_mask(self) -> np.ndarray:
        """Boolean (H, W) union of all artifact objects."""
        return self.artifact_labels > 0

    @property
    def has_artifact(self) -> bool:
        """True when at least one artifact pixel is present."""
        return bool(np.any(self.artifact_labels))


# ----------------------------------------------------------------------------------------------- helpers


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _lowpass(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing; for large sigma computed on a block-averaged grid and interpolated back (fast)."""
    if sigma <= 4.0:
        return ndi.gaussian_filter(x, sigma)
    f = int(sigma // 2)
    H, W = x.shape
    ph, pw = -H % f, -W % f
    xp = np.pad(x, ((0, ph), (0, pw)), mode="reflect") if ph or pw else x
    small = xp.reshape(xp.shape[0] // f, f, xp.shape[1] // f, f).mean(axis=(1, 3))
    small = ndi.gaussian_filter(small, math.sqrt(max(sigma ** 2 - f * f / 12.0, 0.25)) / f)
    return ndi.zoom(small, f, order=1, mode="nearest", grid_mode=True)[:H, :W].astype(x.dtype, copy=False)


def _bandpass(rng: np.random.Generator, shape: tuple[int, int], s_lo: float, s_hi: float) -> np.ndarray:
    """Unit-variance band-pass Gaussian noise (difference of two Gaussian-smoothed white noises)."""
    n = rng.standard_normal(shape, dtype=np.float32)
    b = _lowpass(n, s_lo) - _lowpass(n, s_hi) if s_hi > 0 else _lowpass(n, s_lo)
    sd = float(b.std())
    return b / sd if sd > 0 else b


def _shape_rho(dy, dx, angle, radius, elong=1.0, amps=(), phases=(), taper=0.0):
    """Normalised radius of an irregular star-shaped outline: < 1 inside, 1 on the outline.

    The outline is an ellipse of area ``pi * radius^2`` (axis ratio ``elong``), optionally tapered at the ends
    of the long axis (spindle), with radial harmonics ``1 + sum a_k cos(k phi + p_k)``, k = 2, 3, ...
    """
    c, s = math.cos(angle), math.sin(angle)
    se = math.sqrt(elong)
    u = (dx * c + dy * s) / (radius * se)
    v = (dy * c - dx * s) / (radius / se)
    if taper:
        v = v * (1.0 + taper * u * u)
    r = np.hypot(u, v)
    if len(amps):
        phi = np.arctan2(v, u)
        mod = np.ones_like(r)
        for k, (a, p) in enumerate(zip(amps, phases), start=2):
            mod += a * np.cos(k * phi + p)
        r = r / mod
    return r


def _bbox(cy: float, cx: float, half: float, shape: tuple[int, int],
          half_x: float | None = None) -> tuple[slice, slice] | None:
    """Bounding box (slices) of half-size ``half`` (rows) and ``half_x`` (columns, default ``half``) around
    (cy, cx), clipped to the field; None when it lies outside."""
    hx = half if half_x is None else half_x
    y0, y1 = max(int(math.floor(cy - half)), 0), min(int(math.ceil(cy + half)) + 1, shape[0])
    x0, x1 = max(int(math.floor(cx - hx)), 0), min(int(math.ceil(cx + hx)) + 1, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _local_grid(bb: tuple[slice, slice], cy: float, cx: float) -> tuple[np.ndarray, np.ndarray]:
    yy = np.arange(bb[0].start, bb[0].stop, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(bb[1].start, bb[1].stop, dtype=np.float32)[None, :] - np.float32(cx)
    return yy, xx


def _harmonics(rng: np.random.Generator, n: int, amp: float) -> tuple[np.ndarray, np.ndarray]:
    """Random radial harmonic amplitudes (decaying with order) and phases; sum of |a| < 0.6."""
    a = rng.uniform(0.0, amp, n) / np.arange(1, n + 1) ** 0.7
    total = float(np.abs(a).sum())
    if total > 0.55:
        a *= 0.55 / total
    return a, rng.uniform(0.0, 2 * math.pi, n)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(max(hi, lo * 1.0001)))))


# ----------------------------------------------------------------------------------------------- clean scene


@dataclass
class _Scene:
    height: np.ndarray  # float32, optical path (arbitrary units)
    absorb: np.ndarray  # float32, absorbance
    fluor: np.ndarray  # float32, nuclear dye concentration (before optics)
    owner: np.ndarray  # int32, cell id per pixel (0 = background)
    nuclei: np.ndarray  # int32, nuclei labels
    params: dict


def _render_cells(shape: tuple[int, int], density: float, pixel_size: float, rng: np.random.Generator) -> _Scene:
    """Render the cell layer: height, absorbance, nuclear dye and labels (all vectorised per cell box)."""
    H, W = shape
    um = 1.0 / pixel_size  # pixels per micrometre
    morph = rng.choice(["epithelial", "mesenchymal", "mixed"])
    p_spindle = {"epithelial": 0.05, "mesenchymal": 0.9, "mixed": 0.5}[str(morph)]
    p_round = float(rng.uniform(0.0, 0.05))
    p_stained = float(rng.choice([0.0, rng.uniform(0.05, 0.4)]))
    granularity = float(rng.uniform(0.2, 1.0))

    warp = _bandpass(rng, shape, 3.0 * um, 0)  # smooth field for ruffled outlines
    cyto_tex = _bandpass(rng, shape, max(0.8 * um, 0.8), 4.0 * um)
    chrom_tex = _bandpass(rng, shape, max(0.4 * um, 0.6), 1.5 * um)

    mean_r = 14.0 * um
    n_target = int(round(density * H * W / (math.pi * mean_r ** 2) * 1.3))

    # --- candidate cells, drawn in bulk; accepted greedily with a spacing that keeps nuclei apart ---
    M = 6 * n_target + 20
    u = rng.random(M)
    kind = np.where(u < p_round, 0, np.where(rng.random(M) < p_spindle, 1, 2))  # 0 round, 1 spindle, 2 flat
    lo_hi = np.array([[6.0, 9.0], [11.0, 20.0], [10.0, 17.0]])
    R = rng.uniform(lo_hi[kind, 0], lo_hi[kind, 1]) * um
    elong = np.choose(kind, [np.ones(M), rng.uniform(2.0, 5.5, M), rng.uniform(1.0, 1.8, M)])
    taper = np.where(kind == 1, rng.uniform(0.3, 2.0, M), 0.0)
    n_harm = np.array([3, 4, 5])[kind]
    amps = rng.uniform(0.0, 1.0, (M, 5)) * np.array([0.05, 0.25, 0.35])[kind][:, None] / np.arange(1, 6) ** 0.7
    amps *= np.arange(5)[None, :] < n_harm[:, None]
    amps *= np.minimum(1.0, 0.55 / np.maximum(amps.sum(1), 1e-9))[:, None]
    phases = rng.uniform(0.0, 2 * math.pi, (M, 5))
    Rn = np.choose(kind, [0.55 * R, rng.uniform(4.5, 6.5, M) * um, rng.uniform(4.5, 7.0, M) * um])
    en = np.choose(kind, [rng.uniform(1.0, 1.2, M), rng.uniform(1.2, 1.9, M), rng.uniform(1.0, 1.5, M)])
    cy = rng.uniform(-0.5, 0.5, M) * R + rng.uniform(0, H, M)
    cx = rng.uniform(-0.5, 0.5, M) * R + rng.uniform(0, W, M)
    angle = rng.uniform(0, math.pi, M)
    nang = angle + rng.normal(0, 0.25, M)
    off = rng.uniform(0, 0.25, M) * R
    ncy = cy + off * np.sin(angle) * rng.choice([-1, 1], M)
    ncx = cx + off * np.cos(angle) * rng.choice([-1, 1], M)
    reach = Rn * np.sqrt(en) * 1.05  # nucleus half-length
    stained = (kind != 0) & (rng.random(M) < p_stained)
    Hc_c = np.where(kind == 0, rng.uniform(2.0, 3.0, M), rng.uniform(0.7, 1.3, M))
    Hn_c = rng.uniform(0.15, 0.5, M)
    a_cell_c = np.where(stained, rng.uniform(0.03, 0.12, M), rng.uniform(0.0, 0.015, M))
    g_rel_c = np.where(stained, rng.uniform(0.7, 1.0, M), rng.uniform(0.05, 0.5, M) * granularity)
    a_nuc_c = rng.uniform(0.01, 0.05, M)
    i_nuc_c = np.exp(rng.normal(0.0, 0.25, M)) * np.where(kind == 0, 1.6, 1.0)
    n_nucleoli = rng.integers(1, 4, M)
    nucleoli_off = rng.uniform(-0.45, 0.45, (M, 3, 2))

    acc: list[int] = []
    acc_y = np.empty(max(n_target, 1))
    acc_x = np.empty_like(acc_y)
    acc_r = np.empty_like(acc_y)
    for j in range(M):
        if len(acc) >= n_target:
            break
        k = len(acc)
        if k and np.any(np.hypot(acc_y[:k] - ncy[j], acc_x[:k] - ncx[j]) < acc_r[:k] + reach[j] + 3.0):
            continue
        acc_y[k], acc_x[k], acc_r[k] = ncy[j], ncx[j], reach[j]
        acc.append(j)
    sel = np.array(acc, dtype=int)
    n = len(sel)

    def per_cell(v):  # index 0 = background
        return np.concatenate([[0.0], v[sel]]).astype(np.float32)

    Hc, Hn, a_cell, g_rel = per_cell(Hc_c), per_cell(Hn_c), per_cell(a_cell_c), per_cell(g_rel_c)
    a_nuc, i_nuc = per_cell(a_nuc_c), per_cell(i_nuc_c)

    owner = np.zeros(shape, np.int32)
    best = np.full(shape, 1.0, np.float32)  # normalised radius of the current owner (1 = outline)
    best_rn = np.full(shape, 9.0, np.float32)  # normalised radius to the nearest nucleus
    nuclei = np.zeros(shape, np.int32)
    for i, j in enumerate(sel, start=1):
        nh = int(n_harm[j])
        grow = (1.0 + float(amps[j].sum())) * 1.25  # harmonics and ruffles push the outline out at most this
        a_l, a_s = R[j] * math.sqrt(elong[j]) * grow, R[j] / math.sqrt(elong[j]) * grow
        sa, ca = math.sin(angle[j]), math.cos(angle[j])
        bb = _bbox(cy[j], cx[j], math.hypot(a_l * sa, a_s * ca) + 3, shape, math.hypot(a_l * ca, a_s * sa) + 3)
        if bb is not None:
            dy, dx = _local_grid(bb, cy[j], cx[j])
            rho = _shape_rho(dy, dx, angle[j], R[j], elong[j], amps[j, :nh], phases[j, :nh], taper[j])
            rho *= 1.0 + 0.05 * warp[bb]
            sub_b, sub_o = best[bb], owner[bb]
            take = rho < sub_b
            sub_b[take] = rho[take]
            sub_o[take] = i
        # nucleus in its own (small) box: pure ellipse slightly ruffled; the cell always contains it
        nbb = _bbox(ncy[j], ncx[j], 1.5 * reach[j] + 2, shape)
        if nbb is None:
            continue
        ndy, ndx = _local_grid(nbb, ncy[j], ncx[j])
        rn = _shape_rho(ndy, ndx, nang[j], Rn[j], en[j])
        rn *= 1.0 + 0.03 * warp[nbb]
        nb, no = best[nbb], owner[nbb]
        take = 0.7 * rn < nb
        nb[take] = 0.7 * rn[take]
        no[take] = i
        nmask = rn < 1.0
        nuclei[nbb][nmask] = i
        np.minimum(best_rn[nbb], rn, out=best_rn[nbb])

    nucleoli = [(ncy[j] + oy * Rn[j], ncx[j] + ox * Rn[j]) for j in sel for oy, ox in nucleoli_off[j, :n_nucleoli[j]]]

    nuc_in = nuclei > 0
    owner[nuc_in] = nuclei[nuc_in]  # a nucleus always belongs to its own cell
    inside = owner > 0
    rho_o = np.where(inside, best, 1.0)
    # lamella edge height varies along the outline (some edges crisp, some fading out)
    lip = (0.14 + 0.1 * np.tanh(warp)).astype(np.float32)
    height = np.where(inside, Hc[owner] * (lip + (1 - lip) * np.clip(1.0 - rho_o, 0, 1) ** 1.3), 0).astype(np.float32)
    nuc_prof = np.sqrt(np.clip(1.0 - best_rn ** 2, 0.0, 1.0))
    height += np.where(nuc_in, Hn[nuclei] * nuc_prof ** 0.6, 0).astype(np.float32)
    height += (0.05 * cyto_tex * Hc[owner]).astype(np.float32) * inside
    # membrane grooves where two cells touch
    edge = np.zeros(shape, bool)
    edge[1:, :] |= (owner[1:, :] != owner[:-1, :]) & (owner[1:, :] > 0) & (owner[:-1, :] > 0)
    edge[:, 1:] |= (owner[:, 1:] != owner[:, :-1]) & (owner[:, 1:] > 0) & (owner[:, :-1] > 0)
    height -= 0.3 * edge

    # granules (dark, absorbing; concentrated around the nucleus) and refractile vesicles (bright, in height);
    # sizes in micrometres, weights chosen for a given peak absorbance / height whatever the pixel size
    n_cand = int(H * W * pixel_size ** 2 * 0.15)
    py = rng.integers(0, H, n_cand)
    px = rng.integers(0, W, n_cand)
    o = owner[py, px]
    rr = best_rn[py, px]
    p = g_rel[o] * np.exp(-(((rr - 1.7) / 1.3) ** 2)) * (o > 0) * (rr > 1.08)
    keep = rng.random(n_cand) < p
    big = rng.random(n_cand) < 0.25
    s_small, s_big = max(0.4 * um, 0.6), max(0.7 * um, 0.9)
    peak = rng.uniform(0.06, 0.35, n_cand) * keep
    flat = py * W + px
    g_small = np.bincount(flat, weights=peak * ~big * (2 * math.pi * s_small ** 2), minlength=H * W).reshape(shape)
    g_big = np.bincount(flat, weights=peak * big * (2 * math.pi * s_big ** 2), minlength=H * W).reshape(shape)
    ves = (rng.random(n_cand) < 0.05 * (o > 0) * (rr > 1.1)) & ~keep
    s_ves = max(0.6 * um, 0.8)
    v_img = np.bincount(flat, weights=ves * rng.uniform(0.1, 0.4, n_cand) * (2 * math.pi * s_ves ** 2),
                        minlength=H * W).reshape(shape)
    height += ndi.gaussian_filter(v_img.astype(np.float32), s_ves)

    absorb = np.where(inside, a_cell[owner], 0).astype(np.float32)
    absorb *= (1.0 + 0.4 * cyto_tex).clip(0.2)
    absorb += ndi.gaussian_filter(g_small.astype(np.float32), s_small)
    absorb += ndi.gaussian_filter(g_big.astype(np.float32), s_big)
    nuc_soft = _smoothstep((1.0 - best_rn) / 0.15) * nuc_in
    absorb += (a_nuc[nuclei] * (1.0 + 0.8 * chrom_tex).clip(0) * nuc_soft).astype(np.float32)
    if nucleoli:
        ny = np.clip(np.round([q[0] for q in nucleoli]).astype(int), 0, H - 1)
        nx = np.clip(np.round([q[1] for q in nucleoli]).astype(int), 0, W - 1)
        s_no = max(0.8 * um, 1.0)
        wn = rng.uniform(0.05, 0.15, len(ny)) * (2 * math.pi * s_no ** 2)
        nimg = np.bincount(ny * W + nx, weights=wn, minlength=H * W).reshape(shape)
        absorb += ndi.gaussian_filter(nimg.astype(np.float32), s_no) * nuc_in

    fluor = np.where(nuc_in, i_nuc[nuclei] * nuc_prof ** 0.3 * (1.0 + 0.3 * chrom_tex), 0).astype(np.float32)
    fluor += 0.03 * inside
    params = dict(morphology=str(morph), n_cells=n, p_round=p_round, p_stained=p_stained)
    return _Scene(height, absorb.astype(np.float32), fluor.astype(np.float32), owner, nuclei, params)


def _brightfield(height: np.ndarray, absorb: np.ndarray, focus: float, sigma: float) -> np.ndarray:
    """Brightfield transmission of a thin sample a little out of focus (transport-of-intensity approximation)."""
    phase = sigma ** 2 * ndi.gaussian_laplace(height, sigma)
    t = np.exp(-ndi.gaussian_filter(absorb, 0.7)) * (1.0 - focus * phase)
    return np.clip(t, 0.02, 3.0).astype(np.float32)


def _fluorescence(fluor: np.ndarray) -> np.ndarray:
    haze = ndi.uniform_filter(ndi.uniform_filter(fluor, 29), 29)  # ~ Gaussian sigma 12 px, out-of-focus glow
    return (ndi.gaussian_filter(fluor, 1.0) + 0.05 * haze).astype(np.float32)


# ----------------------------------------------------------------------------------------------- artifacts


@dataclass
class _Ctx:
    shape: tuple[int, int]
    T: np.ndarray  # current brightfield transmission
    N: np.ndarray  # current nuclear-channel intensity (1 ~ a typical nucleus)
    scene: _Scene
    focus: float
    psf: float
    um: float
    occupied: np.ndarray  # bool, union of the masks placed so far


@dataclass
class _Patch:
    bb: tuple[slice, slice]
    mask: np.ndarray
    T: np.ndarray
    N: np.ndarray | None


def _place(rng: np.random.Generator, ctx: _Ctx, radius: float, tries: int = 25,
           weight: np.ndarray | None = None) -> tuple[float, float]:
    """A centre inside the field whose neighbourhood avoids earlier artifacts (and, with weight, scores high)."""
    H, W = ctx.shape
    best, best_score = None, -np.inf
    r = max(radius, 2.0)
    for _ in range(tries):
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        bb = _bbox(cy, cx, r, ctx.shape)
        overlap = float(ctx.occupied[bb].mean()) if bb is not None else 0.0
        score = -overlap + (float(weight[bb].mean()) if weight is not None and bb is not None else 0.0)
        if score > best_score:
            best, best_score = (cy, cx), score
        if weight is None and overlap == 0.0:
            break
    return best


def _support(core: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within ``radius`` of the non-zero part of ``core`` (where a blurred effect is not negligible)."""
    if not core.any():
        return core > 0
    return ndi.distance_transform_edt(~(core > 0)) <= radius


def _art_debris(rng: np.random.Generator, ctx: _Ctx) -> _Patch:
    d = _log_uniform(rng, 5.0, 30.0)
    variant = rng.choice(["dark", "crystal", "dust"], p=[0.6, 0.2, 0.2])
    if variant == "dust":
        d = max(d, rng.uniform(10.0, 30.0))
    blur = rng.uniform(1.5, 4.0) if variant == "dust" else 0.7
    halo = 3.0 * blur + 4.0
    r = d / 2
    amps, phases = _harmonics(rng, 4, 0.45)
    elong, angle = rng.uniform(1.0, 2.0), rng.uniform(0, math.pi)
    n_sat = int(rng.integers(1, 4)) if rng.random() < 0.4 else 0
    sats = [(rng.uniform(0, 2 * math.pi), r * rng.uniform(0.3, 0.6), *_harmonics(rng, 3, 0.3)) for _ in range(n_sat)]
    reach = r * math.sqrt(elong) * (1 + float(np.abs(amps).sum()))
    reach = max([reach] + [0.85 * r + rr * (1 + float(np.abs(sa).sum())) for _, rr, sa, _ in sats])
    cy, cx = _place(rng, ctx, reach + halo)
    bb = _bbox(cy, cx, reach + halo + 3, ctx.shape)
    dy, dx = _local_grid(bb, cy, cx)
    lobes = [_shape_rho(dy, dx, angle, r, elong, amps, phases)]
    for a, rr, sa, sp in sats:  # satellites touching the main speck
        oy, ox = math.sin(a) * r * 0.85, math.cos(a) * r * 0.85
        lobes.append(_shape_rho(dy - oy, dx - ox, 0.0, rr, 1.0, sa, sp))
    rho = np.minimum.reduce(lobes)
    core = _smoothstep((1.0 - rho) * r / 1.2)  # ~1 px anti-aliased edge
    lab, nlab = ndi.label(core > 0)
    if nlab > 1:
        core = core * (lab == 1 + int(np.argmax(ndi.sum(np.ones_like(core), lab, range(1, nlab + 1)))))
    T0, N0 = ctx.T[bb], ctx.N[bb]
    cb = ndi.gaussian_filter(core, blur)
    if variant == "dark":
        op = rng.uniform(0.35, 0.92)
        ring = np.clip(ndi.gaussian_filter(core, 2.5) - cb, 0, None)
        T = T0 * (1.0 - op * cb) * (1.0 + rng.uniform(0.0, 0.6) * ring)
    elif variant == "crystal":
        inner = ndi.gaussian_filter(_smoothstep((0.7 - rho) * r / 1.2), 0.7)
        rim = np.clip(cb - inner, 0, None)
        T = T0 * (1.0 + rng.uniform(0.25, 0.6) * inner) * (1.0 - rng.uniform(0.3, 0.7) * rim)
    else:
        T = T0 * (1.0 - rng.uniform(0.12, 0.3) * cb)
    if rng.random() < 0.7:  # autofluorescent: a bright nucleus-like blob in the nuclear channel
        N = N0 + rng.uniform(0.35, 1.5) * ndi.gaussian_filter(core, max(blur, 1.0))
    else:
        N = N0 * (1.0 - 0.8 * cb)
    return _Patch(bb, _support(core, 3.0 * blur + 2.0), T, N)


def _art_fibre(rng: np.random.Generator, ctx: _Ctx) -> _Patch:
    H, W = ctx.shape
    diag = math.hypot(H, W)
    L = _log_uniform(rng, 60.0, 1.2 * diag)
    variant = rng.choice(["dark", "bright", "blurred"], p=[0.55, 0.25, 0.2])
    width = rng.uniform(1.0, 3.5) if variant != "blurred" else rng.uniform(2.0, 6.0)
    blur = rng.uniform(1.5, 3.0) if variant == "blurred" else 0.6
    n = int(L / 0.5) + 2
    s = np.linspace(-L / 2, L / 2, n)
    theta = rng.uniform(0, 2 * math.pi) + np.zeros(n)
    for _ in range(3):  # smooth curvature: a few slow sinusoids along the arc
        lam = rng.uniform(0.4, 2.0) * L
        theta += rng.uniform(0.0, 0.9) * np.sin(2 * math.pi * s / lam + rng.uniform(0, 2 * math.pi))
    ys = np.cumsum(np.sin(theta)) * 0.5
    xs = np.cumsum(np.cos(theta)) * 0.5
    cy, cx = _place(rng, ctx, 10.0)
    ys += cy - ys[n // 2]
    xs += cx - xs[n // 2]
    pad = width / 2 + 3.0 * blur + 3.0
    y0, y1 = max(int(ys.min() - pad), 0), min(int(ys.max() + pad) + 2, H)
    x0, x1 = max(int(xs.min() - pad), 0), min(int(xs.max() + pad) + 2, W)
    bb = (slice(y0, y1), slice(x0, x1))
    line = np.zeros((y1 - y0, x1 - x0), bool)
    iy, ix = np.round(ys).astype(int) - y0, np.round(xs).astype(int) - x0
    ok = (iy >= 0) & (iy < y1 - y0) & (ix >= 0) & (ix < x1 - x0)
    line[iy[ok], ix[ok]] = True
    dist = ndi.distance_transform_edt(~line).astype(np.float32)
    core = np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)
    cb = ndi.gaussian_filter(core, blur)
    T0, N0 = ctx.T[bb], ctx.N[bb]
    if variant == "dark":
        T = T0 * (1.0 - rng.uniform(0.3, 0.8) * cb)
    elif variant == "bright":
        centre = ndi.gaussian_filter(np.clip(width / 4 + 0.5 - dist, 0.0, 1.0), 0.6)
        T = T0 * (1.0 + rng.uniform(0.2, 0.5) * centre) * (1.0 - rng.uniform(0.2, 0.5) * np.clip(cb - centre, 0, None))
    else:
        T = T0 * (1.0 - rng.uniform(0.1, 0.25) * cb)
    if rng.random() < 0.5:
        N = N0 + rng.uniform(0.15, 0.5) * ndi.gaussian_filter(core, max(blur, 1.0))
    else:
        N = N0 * (1.0 - 0.6 * cb)
    return _Patch(bb, dist <= width / 2 + 3.0 * blur + 1.5, T, N)


def _art_bubble(rng: np.random.Generator, ctx: _Ctx) -> _Patch:
    H, W = ctx.shape
    R = _log_uniform(rng, 15.0, max(0.3 * min(H, W), 16.0))
    wr_px = float(np.clip(rng.uniform(0.06, 0.14) * R, 2.0, 12.0))
    wr = wr_px / R
    cy, cx = _place(rng, ctx, R)
    ext = R * 1.15 * (1 + 3 * wr) + 8
    bb = _bbox(cy, cx, ext, ctx.shape)
    dy, dx = _local_grid(bb, cy, cx)
    rho = _shape_rho(dy, dx, rng.uniform(0, math.pi), R, rng.uniform(1.0, 1.12))
    low = rng.random() < 0.25
    band = np.exp(-(((rho - 1.0) / wr) ** 2))
    bright_rim = np.exp(-(((rho - (1.0 - 1.8 * wr)) / (0.6 * wr)) ** 2))
    period = rng.uniform(3.0, 7.0)
    nf = R / (2 * period)
    fringes = np.cos(2 * math.pi * nf * rho ** 2) * np.exp(-(1.0 - rho) / rng.uniform(0.08, 0.25)) * (rho < 1)
    wi = _smoothstep((1.0 - rho) / (1.5 * wr))
    T0, N0 = ctx.T[bb], ctx.N[bb]
    keep = rng.uniform(0.4, 0.9)
    level = rng.uniform(0.97, 1.1)
    T_in = level + keep * (ndi.gaussian_filter(T0, 1.5) - 1.0)
    dark = rng.uniform(0.1, 0.2) if low else rng.uniform(0.2, 0.6)
    T = (T0 * (1 - wi) + T_in * wi) * (1.0 - dark * band) * (1.0 + rng.uniform(0.05, 0.25) * bright_rim
                                                            + rng.uniform(0.03, 0.12) * fringes)
    kf = rng.uniform(0.2, 0.6)
    N = (N0 * (1 - wi) + kf * ndi.gaussian_filter(N0, 2.0) * wi) * (1.0 - 0.85 * band)
    return _Patch(bb, rho < 1.0 + 2.5 * wr, T, N)


def _art_clump(rng: np.random.Generator, ctx: _Ctx) -> _Patch:
    n = int(round(_log_uniform(rng, 3.0, 25.0)))
    rc = rng.uniform(3.5, 7.0, n) * ctx.um
    pos = np.zeros((n, 2))
    for i in range(1, n):  # grow the aggregate: each cell touches a random earlier one
        for _ in range(30):
            j = int(rng.integers(0, i))
            a = rng.uniform(0, 2 * math.pi)
            dd = (rc[i] + rc[j]) * rng.uniform(0.75, 0.95)
            p = pos[j] + dd * np.array([math.sin(a), math.cos(a)])
            if np.all(np.hypot(*(pos[:i] - p).T) > 0.7 * (rc[:i] + rc[i])):
                break
        pos[i] = p
    extent = float(np.max(np.hypot(*pos.T) + rc))
    cy, cx = _place(rng, ctx, extent + 6)
    bb = _bbox(cy, cx, extent + 14, ctx.shape)
    dy, dx = _local_grid(bb, cy, cx)
    occ = np.zeros(dy.shape[0:1] + dx.shape[1:2], np.float32)
    bright = np.zeros_like(occ)
    rim = np.zeros_like(occ)
    pyk = np.zeros_like(occ)
    for i in range(n):
        d = np.hypot(dy - pos[i, 0], dx - pos[i, 1]) / rc[i]
        occ = np.maximum(occ, _smoothstep((1.05 - d) * rc[i] / 1.5))
        b = rng.uniform(0.05, 0.3) if rng.random() > 0.3 else -rng.uniform(0.1, 0.3)  # some dark granular
        bright += b * np.exp(-((d / 0.6) ** 2))
        rim = np.maximum(rim, rng.uniform(0.12, 0.4) * np.exp(-(((d - 1.0) / 0.2) ** 2)))
        pyk += rng.uniform(0.8, 2.5) * np.exp(-((d / 0.4) ** 2))
    T0, N0 = ctx.T[bb], ctx.N[bb]
    cover = rng.uniform(0.3, 0.7) * occ
    grain = _bandpass(rng, occ.shape, 0.8, 2.0)
    T = (T0 * (1.0 - cover) + cover) * (1.0 + bright) * (1.0 - rim) * (1.0 + 0.12 * grain * occ)
    T = T * (1.0 + rng.uniform(0.0, 0.2) * np.clip(ndi.gaussian_filter(occ, 3.0) - occ, 0, None))
    T = np.maximum(ndi.gaussian_filter(T, rng.uniform(0.6, 1.2)), 0.02)
    N = N0 * (1.0 - 0.5 * occ) + ndi.gaussian_filter(pyk, 0.8) + 0.1 * occ
    return _Patch(bb, _support(occ, 9.0), T, N)


def _art_defocus(rng: np.random.Generator, ctx: _Ctx) -> _Patch:
    H, W = ctx.shape
    R = _log_uniform(rng, 40.0, max(0.45 * min(H, W), 41.0))
    low = rng.random() < 0.3
    sd = rng.uniform(1.5, 2.5) if low else rng.uniform(2.5, 7.0)
    amps, phases = _harmonics(rng, 4, 0.25)
    elong = rng.uniform(1.0, 1.6)
    cover = ndi.uniform_filter((ctx.scene.owner > 0).astype(np.float32), 15)
    cy, cx = _place(rng, ctx, R * 0.6, tries=20, weight=cover)
    ext = R * math.sqrt(elong) * (1 + float(np.abs(amps).sum())) + 4 * sd + 6
    bb = _bbox(cy, cx, ext, ctx.shape)
    dy, dx = _local_grid(bb, cy, cx)
    rho = _shape_rho(dy, dx, rng.uniform(0, math.pi), R, elong, amps, phases)
    ramp = float(np.clip(0.35 * R, 8.0, 60.0)) / R
    w = _smoothstep((1.0 - rho) / ramp)
    s = ctx.scene
    focus = rng.choice([-1, 1]) * (rng.uniform(0.1, 0.25) if low else rng.uniform(0.2, 0.5))
    T_def = _brightfield(ndi.gaussian_filter(s.height[bb], sd * 0.5), _lowpass(s.absorb[bb], sd),
                         focus, max(sd * 0.8, ctx.psf))
    ring = 4.0 * w * (1.0 - w)
    T = (ctx.T[bb] * (1 - w) + T_def * w) * (1.0 + rng.choice([-1, 1]) * rng.uniform(0.01, 0.035) * ring)
    N = ctx.N[bb] * (1 - w) + _lowpass(ctx.N[bb], sd) * w
    return _Patch(bb, rho < 1.0, T, N)


def _art_blotch(rng: np.random.Generator, ctx: _Ctx) -> _Patch:
    H, W = ctx.shape
    R = _log_uniform(rng, 50.0, max(0.5 * min(H, W), 51.0))
    amps, phases = _harmonics(rng, 5, 0.45)
    elong = rng.uniform(1.0, 1.8)
    cy, cx = _place(rng, ctx, R * 0.6)
    ext = R * math.sqrt(elong) * (1 + float(np.abs(amps).sum())) * 1.35 + 4  # mottle moves the edge <= 1/(1-0.24)
    bb = _bbox(cy, cx, ext, ctx.shape)
    dy, dx = _local_grid(bb, cy, cx)
    rho = _shape_rho(dy, dx, rng.uniform(0, math.pi), R, elong, amps, phases)
    mottle = _bandpass(rng, rho.shape, max(R / 8, 3.0), 0)
    rho = rho * (1.0 + 0.06 * mottle)
    w = _smoothstep((1.0 - rho) / rng.uniform(0.3, 0.7)) * (1.0 + 0.15 * _bandpass(rng, rho.shape, max(R / 6, 3.0), 0))
    a = -rng.uniform(0.06, 0.35) if rng.random() < 0.7 else rng.uniform(0.05, 0.15)
    f = 1.0 + a * w
    if rng.random() < 0.3:  # dried tide mark at the edge
        f = f - rng.uniform(0.03, 0.08) * np.exp(-(((rho - 0.93) / 0.04) ** 2)) * (rho < 1)
    return _Patch(bb, rho < 1.0, ctx.T[bb] * f, None)


_ARTIFACT_FUNCS = {"debris": _art_debris, "fibre": _art_fibre, "bubble": _art_bubble, "clump": _art_clump,
                   "defocus": _art_defocus, "blotch": _art_blotch}


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest connected region of ``mask`` (one object = one region, e.g. a fibre that leaves the field)."""
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    return lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))


def _render_object(kind: str, rng: np.random.Generator, ctx: _Ctx, attempts: int = 6) -> tuple[_Patch, np.ndarray]:
    """Render one artifact object, re-drawing it (up to ``attempts`` times) while it overlaps earlier ones."""
    best = None
    for _ in range(attempts):
        patch = _ARTIFACT_FUNCS[kind](rng, ctx)
        m = _largest_region(patch.mask)
        overlap = int(np.count_nonzero(ctx.occupied[patch.bb] & m))
        if best is None or overlap < best[2]:
            best = (patch, m, overlap)
        if overlap == 0:
            break
    return best[0], best[1]


def _apply(ctx: _Ctx, patch: _Patch, m: np.ndarray) -> None:
    """Write a patch into the images inside its mask ``m`` only."""
    T = ctx.T[patch.bb]
    T[m] = np.maximum(patch.T[m], 0.01)
    if patch.N is not None:
        N = ctx.N[patch.bb]
        N[m] = np.maximum(patch.N[m], 0.0)
    ctx.occupied[patch.bb] |= m


# ----------------------------------------------------------------------------------------------- camera


def _illumination(rng: np.random.Generator, shape: tuple[int, int], vmax: float) -> np.ndarray:
    H, W = shape
    y = (np.arange(H, dtype=np.float32)[:, None] - H / 2) / max(H, W)
    x = (np.arange(W, dtype=np.float32)[None, :] - W / 2) / max(H, W)
    cy, cx = rng.uniform(-0.3, 0.3, 2)
    v = rng.uniform(0.02, vmax)
    g = rng.uniform(0.0, 0.05)
    a = rng.uniform(0, 2 * math.pi)
    illum = (1.0 - v * ((y - cy) ** 2 + (x - cx) ** 2) / 0.5) * (1.0 + g * (math.sin(a) * y + math.cos(a) * x))
    return illum.astype(np.float32)


def _camera(signal: np.ndarray, gain: float, read: float, z: np.ndarray, bit_depth: int) -> np.ndarray:
    noisy = signal + np.sqrt(gain * np.maximum(signal, 0.0) + read * read) * z
    top = 255 if bit_depth == 8 else 65535
    return np.clip(np.rint(noisy), 0, top).astype(np.uint8 if bit_depth == 8 else np.uint16)


# ----------------------------------------------------------------------------------------------- public API


def _check_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width), got {shape!r}") from None
    if h < 32 or w < 32:
        raise ValueError(f"shape must be at least (32, 32), got {shape!r}")
    return h, w


def _resolve_kinds(artifacts, n_artifacts, rng: np.random.Generator) -> list[str]:
    if n_artifacts is not None and (int(n_artifacts) != n_artifacts or n_artifacts < 0):
        raise ValueError(f"n_artifacts must be a non-negative integer, got {n_artifacts!r}")
    if artifacts is None:
        n = int(rng.integers(1, 4)) if n_artifacts is None else int(n_artifacts)
        return [ARTIFACT_KINDS[i] for i in rng.integers(0, len(ARTIFACT_KINDS), n)]
    kinds = [artifacts] if isinstance(artifacts, str) else list(artifacts)
    bad = [k for k in kinds if k not in ARTIFACT_KINDS]
    if bad:
        raise ValueError(f"unknown artifact kind(s) {bad}; known kinds: {', '.join(ARTIFACT_KINDS)}")
    if n_artifacts is not None:
        if not kinds and n_artifacts:
            raise ValueError("n_artifacts > 0 needs at least one kind in artifacts (or artifacts=None)")
        kinds = [kinds[i % len(kinds)] for i in range(int(n_artifacts))]
    return kinds


def make_field(shape=(512, 512), seed=0, artifacts=None, n_artifacts=None, density=None, bit_depth=16,
               pixel_size=0.65) -> Field:
    """Render one synthetic brightfield field of view, its nuclear channel and exact ground truth.

    Parameters
    ----------
    shape : (int, int)
        Image height and width in pixels (at least 32 x 32).
    seed : int
        Non-negative seed; the same arguments always give identical output.
    artifacts : None, list of str or str
        ``None``: 1-3 objects of random kinds (``n_artifacts`` objects when given). ``[]``: a clean field.
        A list of kinds (from :data:`ARTIFACT_KINDS`): one object of each, in that order; with ``n_artifacts``
        the list is cycled to that many objects.
    n_artifacts : int, optional
        Number of artifact objects (see ``artifacts``).
    density : float in [0, 1], optional
        Cell density, about the fraction of the field covered by cells (0.05 sparse ... 0.9 confluent).
        ``None`` draws one in [0.08, 0.9] from the seed.
    bit_depth : {8, 16}
        Output dtype uint8 or uint16.
    pixel_size : float
        Micrometres per pixel; cells are sized in micrometres (0.65 = a 20x objective on a typical camera).

    Returns
    -------
    Field
        Brightfield ``image``, ``nuclei_image``, ``artifact_labels`` / ``artifact_types``, ``nuclei_labels``.
        Outside ``artifact_mask`` both images are identical to ``make_field(..., artifacts=[])`` with the same
        other arguments.
    """
    shape = _check_shape(shape)
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    if not (pixel_size > 0 and math.isfinite(pixel_size)):
        raise ValueError(f"pixel_size must be a positive number of micrometres, got {pixel_size!r}")
    if density is not None and not (0.0 <= float(density) <= 1.0):
        raise ValueError(f"density must be in [0, 1], got {density!r}")
    kinds = _resolve_kinds(artifacts, n_artifacts, np.random.default_rng([seed, _STREAM_KINDS]))

    rng = np.random.default_rng([seed, _STREAM_SCENE])
    dens = float(rng.uniform(0.08, 0.9))
    if density is not None:
        dens = float(density)
    focus = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2))
    psf = float(rng.uniform(0.8, 1.3))  # px: blur scale of the slightly defocused image (higher NA at higher mag.)
    rel_noise = float(rng.uniform(0.009, 0.015))
    if bit_depth == 16:
        bg, offset, fl_off, fl_peak = rng.uniform(15000, 45000), 100.0, rng.uniform(300, 700), rng.uniform(8000, 26000)
        read, fl_read = 8.0, 6.0
    else:
        bg, offset, fl_off, fl_peak = rng.uniform(120, 180), 2.0, rng.uniform(12, 24), rng.uniform(110, 200)
        read, fl_read = 0.8, 0.7
    illum = _illumination(rng, shape, 0.08)
    illum_fl = _illumination(rng, shape, 0.2)
    scene = _render_cells(shape, dens, pixel_size, rng)

    T = _brightfield(scene.height, scene.absorb, focus, psf)
    N = _fluorescence(scene.fluor)
    ctx = _Ctx(shape, T, N, scene, focus, psf, 1.0 / pixel_size, np.zeros(shape, bool))

    placed: list[tuple[str, tuple[slice, slice], np.ndarray]] = []
    order = sorted(range(len(kinds)), key=lambda i: (_APPLY_ORDER[kinds[i]], i))
    for i in order:
        patch, m = _render_object(kinds[i], np.random.default_rng([seed, _STREAM_OBJECT, i]), ctx)
        _apply(ctx, patch, m)
        placed.append((kinds[i], patch.bb, m))

    # labels: larger objects first so that small ones stay visible where they overlap
    labels = np.zeros(shape, np.int32)
    for k, (kind, bb, m) in enumerate(sorted(placed, key=lambda t: -int(t[2].sum())), start=1):
        labels[bb][m] = k
    kinds_by_label = {k: kind for k, (kind, _, _) in enumerate(sorted(placed, key=lambda t: -int(t[2].sum())), 1)}
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=len(placed) + 1)[1:]) + 1
    relabel = np.zeros(len(placed) + 1, np.int32)
    relabel[present] = np.arange(1, len(present) + 1)
    labels = relabel[labels]
    types = {int(relabel[k]): kinds_by_label[int(k)] for k in present}

    nrng = np.random.default_rng([seed, _STREAM_NOISE])
    z_bf = nrng.standard_normal(shape, dtype=np.float32)
    z_fl = nrng.standard_normal(shape, dtype=np.float32)
    electrons = 1.0 / rel_noise ** 2  # photo-electrons at the background level
    gain = bg / electrons
    image = _camera(offset + bg * illum * ctx.T, gain, read, z_bf, bit_depth)
    fl_gain = fl_peak / 1500.0
    nuclei_image = _camera(fl_off + fl_peak * illum_fl * ctx.N, fl_gain, fl_read, z_fl, bit_depth)
    info = dict(scene.params, focus=focus, psf=psf, background=float(offset + bg), rel_noise=rel_noise,
                nuclear_peak=float(fl_off + fl_peak), kinds=list(kinds), seed=seed)
    nl = scene.nuclei
    keep = np.flatnonzero(np.bincount(nl.ravel())[1:]) + 1  # nuclei inside the field, numbered 1..n
    renum = np.zeros(int(nl.max()) + 1, np.int32)
    renum[keep] = np.arange(1, len(keep) + 1)
    return Field(image=image, nuclei_image=nuclei_image, artifact_labels=labels, artifact_types=types,
                 nuclei_labels=renum[nl], density=dens, pixel_size=float(pixel_size), info=info)


def well_name_0based(row: int, col: int) -> str:
    """Well name from 0-based row and column: (0, 0) -> "A01", (1, 11) -> "B12" (the plate runner's
    :func:`artseg_core.batch.platenames.well_name` takes 1-based numbers)."""
    if not 0 <= row < 26:
        raise ValueError(f"row index must be in 0..25 (A..Z), got {row}")
    if not 0 <= col < 99:
        raise ValueError(f"column index must be in 0..98, got {col}")
    return f"{chr(ord('A') + row)}{col + 1:02d}"


def _csv_text(header: Sequence[str], rows: list[Sequence]) -> str:
    """The ground-truth tables through the project's one CSV writer (formula cells neutralised)."""
    from artseg_core.io.results import csv_text

    return csv_text([dict(zip(header, r)) for r in rows], list(header), extra=False)


def make_plate(out_dir, rows=2, cols=3, fields=2, prevalence=0.5, seed=0, shape=(512, 512), bit_depth=16,
               kinds=None, plate="phantom") -> Path:
    """Write a synthetic plate: images, nuclear channel, masks and CSV ground truth.

    Layout under ``out_dir`` (ImageXpress-style names, wells ``A01`` ..., fields ``s1`` ...)::

        images/<plate>_<Well>_s<field>_w1.tif        brightfield
        nuclei/<plate>_<Well>_s<field>_w2.tif        nuclear channel
        masks/<image stem>.tif                       artifact labels (uint16)
        nuclei_masks/<image stem>.tif                nuclei labels (uint16)
        labels.csv     image,label                   (label = clean | artifact)
        artifacts.csv  image,object,type,area,bbox_min_row,bbox_min_col,bbox_max_row,bbox_max_col
        nuclei.csv     image,n_nuclei,n_nuclei_overlapping_artifacts

    ``image`` columns hold file names relative to ``images/``. Bounding boxes follow scikit-image's regionprops
    (max row/col exclusive). Exactly ``round(prevalence * n)`` of the ``n = rows * cols * fields`` images have
    artifacts (1-3 objects of kinds drawn from ``kinds``, default all of :data:`ARTIFACT_KINDS`); which ones, the
    per-image seeds and densities come from ``seed``. Files are written atomically.

    Returns
    -------
    pathlib.Path
        Path of ``labels.csv``.
    """
    from artseg_core.io.files import write_text, write_tiff

    for name, v, lo, hi in (("rows", rows, 1, 26), ("cols", cols, 1, 99), ("fields", fields, 1, 9999)):
        if isinstance(v, bool) or int(v) != v or not lo <= v <= hi:
            raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
    if not 0.0 <= float(prevalence) <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence!r}")
    if not plate or any(c in str(plate) for c in "/\\:*?\"<>|") or str(plate).strip() != str(plate):
        raise ValueError(f"plate name {plate!r} cannot be used in file names")
    kinds = list(ARTIFACT_KINDS) if kinds is None else ([kinds] if isinstance(kinds, str) else list(kinds))
    _resolve_kinds(kinds, None, np.random.default_rng(0))  # validates the names
    if not kinds and prevalence > 0:
        raise ValueError("kinds is empty but prevalence > 0")

    out = Path(out_dir)
    dirs = {k: out / k for k in ("images", "nuclei", "masks", "nuclei_masks")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    n = int(rows) * int(cols) * int(fields)
    rng = np.random.default_rng(seed)
    n_art = int(round(float(prevalence) * n))
    with_art = np.zeros(n, bool)
    with_art[rng.choice(n, n_art, replace=False)] = True
    seeds = rng.integers(0, 2 ** 31 - 1, n)
    lab_rows, art_rows, nuc_rows = [], [], []
    k = 0
    for r in range(int(rows)):
        for c in range(int(cols)):
            for s in range(1, int(fields) + 1):
                stem = f"{plate}_{well_name_0based(r, c)}_s{s}"
                kk = [kinds[j] for j in rng.integers(0, len(kinds), int(rng.integers(1, 4)))] if with_art[k] else []
                f = make_field(shape, seed=int(seeds[k]), artifacts=kk, bit_depth=bit_depth)
                name = f"{stem}_w1.tif"
                write_tiff(dirs["images"] / name, f.image)
                write_tiff(dirs["nuclei"] / f"{stem}_w2.tif", f.nuclei_image)
                write_tiff(dirs["masks"] / f"{stem}_w1.tif", f.artifact_labels.astype(np.uint16))
                write_tiff(dirs["nuclei_masks"] / f"{stem}_w1.tif", f.nuclei_labels.astype(np.uint16))
                lab_rows.append((name, "artifact" if f.has_artifact else "clean"))
                for lab, sl in enumerate(ndi.find_objects(f.artifact_labels), start=1):
                    if sl is None:
                        continue
                    area = int((f.artifact_labels[sl] == lab).sum())
                    art_rows.append((name, lab, f.artifact_types[lab], area, sl[0].start, sl[1].start,
                                     sl[0].stop, sl[1].stop))
                nl = f.nuclei_labels
                hit = np.unique(nl[f.artifact_mask & (nl > 0)])
                nuc_rows.append((name, int(len(np.unique(nl)) - (1 if (nl == 0).any() else 0)), int(len(hit))))
                k += 1
    write_text(out / "artifacts.csv", _csv_text(("image", "object", "type", "area", "bbox_min_row", "bbox_min_col",
                                                   "bbox_max_row", "bbox_max_col"), art_rows))
    write_text(out / "nuclei.csv", _csv_text(("image", "n_nuclei", "n_nuclei_overlapping_artifacts"), nuc_rows))
    labels_csv = out / "labels.csv"
    write_text(labels_csv, _csv_text(("image", "label"), lab_rows))
    return labels_csv
