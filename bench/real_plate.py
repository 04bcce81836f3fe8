"""A plate on real transmitted-light backgrounds with composited artifacts (``accuracy.py --backgrounds``).

Fields are crops (default 512 x 512, random position, flip and 90-degree turn) of the real images in
``../shared/data/real`` (see each folder's ``SOURCE.md``). Only regions that SOURCE.md does not report as carrying
real artifacts are cropped from, so that every artifact pixel of a field is a composited one with an exact mask:

* ``usiigaci_t98g_phase``  phase contrast, T98G cells: rows 512-1022, columns 150-1024 (left of it the channel
  wall; the scratch and the out-of-focus blob are in the upper right). That region is 510 rows high, so it gives
  crops of 256 px (``--quick``) but not of 512: the full-size plates hold the other three sources. The small dark
  debris specks SOURCE.md reports over the whole background cannot be avoided: they stay unlabelled, so a detector
  that marks them loses a little.
* ``pie_yeast_brightfield``  SL_180519 (2_AT and 2_GR; the cleanest sets, rows from 64 to skip the dark dot at the
  top edge) and EP_170202 xy0735 / xy0737 (rows 200-1960, columns 0-2300: away from the top band, the dust dot at
  the right edge and the large blob of xy0736). SL_170619 (dust blob, fibres, pad edge in most fields) is left out.
* ``sephace_zstacks``  the two in-focus planes of set 1 (the off-focus planes are genuine defocus), whole field.
  Its dust cannot be cropped around: SOURCE.md reports small specks, and the fields also carry out-of-focus dust
  discs (soft dark discs of about 50-70 px, seen where trained models masked "clean" sephace fields). They stay
  unlabelled, so its clean fields are not all clean (see :data:`OWN_ARTIFACT_SOURCES`).
* ``wound_healing_phase``  the t = 0 h image only (t = 24 h has floating dead cells): upper half for training,
  lower half for testing.
* ``ebony_watson`` is left out: SOURCE.md reports real artifacts in most of its images and there are no masks.

Images of a source alternate between the training and the test plate, so test fields come from other images (other
time points, positions or regions) than the training fields.

Artifacts: the kinds of :mod:`artseg_core.data.phantoms` are rendered on an empty phantom field (no cells) and
transferred as a transmission ratio (with-artifact / without-artifact field), multiplied into the real crop inside
the object's mask only. ``defocus`` (a blur of what lies below, not an object) blurs the real crop inside its mask.
So the texture under and around every artifact is real; only the artifact's own appearance comes from the phantom
generator, and the clean fields are entirely real.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"


@dataclass(frozen=True)
class Source:
    pattern: str                              # glob under the real-data root
    region: tuple | None = None               # (row0, row1, col0, col1) allowed for crops; None: whole image
    split_by_region: bool = False              # one image: upper half trains, lower half tests
    own_artifacts: bool = False                # its crops carry unlabelled real artifacts that cannot be avoided


SOURCES = (
    Source("usiigaci_t98g_phase/*.tif", (512, 1022, 150, 1024), own_artifacts=True),
    Source("pie_yeast_brightfield/SL_180519_2_*/*.tif", (64, 1080, 0, 1280)),
    Source("pie_yeast_brightfield/EP_170202_2_GR/t*xy073[57].jpg", (200, 1960, 0, 2300)),
    Source("sephace_zstacks/set1/fine_*Z1352.25.tif", own_artifacts=True),
    Source("sephace_zstacks/set1/init_*Z1351.60.tif", own_artifacts=True),
    Source("wound_healing_phase/DMSO_B5_t0.JPG", split_by_region=True),
)


def _source_name(s: Source) -> str:
    """The folder a source's images lie in (``sephace_zstacks``, ...): how ``sources.csv`` names it."""
    return s.pattern.split("/", 1)[0]


#: folders whose crops carry real artifacts of their own (``Source.own_artifacts``): a mask on one of their "clean"
#: fields is not always a false positive; ``accuracy.py`` also scores clean fields without them
OWN_ARTIFACT_SOURCES = tuple(sorted({_source_name(s) for s in SOURCES if s.own_artifacts}))


def _pools(root: Path, split: str, size: int):
    """Per source: (folder name, list of (image as float32 in uint16 units, allowed region)) for this split."""
    from artseg_core.io.images import read_image

    pools = []
    single = [s for s in SOURCES if s.pattern.startswith("sephace")]  # two one-image sources: one each
    for s in SOURCES:
        files = sorted(root.glob(s.pattern))
        if not files:
            continue
        if s in single:
            if (split == "train") != (s is single[0]):
                continue
        elif not s.split_by_region:
            files = files[0::2] if split == "train" else files[1::2]
        items = []
        for p in files:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = read_image(p)
            a = a.astype(np.float32) * (256.0 if a.dtype == np.uint8 else 1.0)
            r0, r1, c0, c1 = s.region or (0, a.shape[0], 0, a.shape[1])
            if s.split_by_region:
                mid = (r0 + r1) // 2
                r0, r1 = (r0, mid) if split == "train" else (mid, r1)
            if r1 - r0 >= size and c1 - c0 >= size:
                items.append((a, (r0, r1, c0, c1)))
        if items:
            pools.append((_source_name(s), items))
    if not pools:
        raise FileNotFoundError(f"no real background images under {root}")
    return pools


def _crop(rng, a, region, size):
    r0, r1, c0, c1 = region
    top = int(rng.integers(r0, r1 - size + 1))
    left = int(rng.integers(c0, c1 - size + 1))
    c = a[top:top + size, left:left + size].copy()
    if rng.random() < 0.5:
        c = c[:, ::-1]
    return np.ascontiguousarray(np.rot90(c, int(rng.integers(4))))


def _composite(bg: np.ndarray, seed: int, kinds: list[str]):
    """Artifacts of ``kinds`` composited onto ``bg``: (image, label image, {label: kind})."""
    from artseg_core.data.phantoms import make_field

    shape = bg.shape
    art = make_field(shape, seed=seed, artifacts=kinds, density=0.0)
    clean = make_field(shape, seed=seed, artifacts=[], density=0.0)
    lab, types = art.artifact_labels, art.artifact_types
    ratio = art.image.astype(np.float32) / np.maximum(clean.image.astype(np.float32), 1.0)
    ratio = np.where(lab > 0, ratio, 1.0)
    out = bg * ratio
    for k, kind in types.items():
        if kind == "defocus":
            m = lab == k
            w = np.clip(ndi.gaussian_filter(m.astype(np.float32), 1.0) * 2, 0, 1) * m
            blurred = ndi.gaussian_filter(bg, float(np.random.default_rng(seed).uniform(3, 7)))
            out = np.where(m, bg * (1 - w) + blurred * w, out)
    return np.clip(out, 0, 65535), lab, types


def make_real_plate(out_dir, n_fields: int, split: str, prevalence: float = 0.5, seed: int = 0, size: int = 512,
                    root: Path | None = None, kinds=None) -> Path:
    """Write a plate in :func:`artseg_core.data.phantoms.make_plate`'s layout (images/, masks/, labels.csv,
    artifacts.csv) from real backgrounds, plus ``sources.csv`` (image, source folder: which real images a field was
    cropped from); returns the path of labels.csv."""
    from artseg_core.data.phantoms import ARTIFACT_KINDS
    from artseg_core.io.files import write_tiff

    root = Path(root or REAL).resolve()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    pools = _pools(root, split, size)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    kinds = tuple(kinds or ARTIFACT_KINDS)
    n_art = int(round(prevalence * n_fields))
    is_art = np.zeros(n_fields, bool)
    is_art[rng.permutation(n_fields)[:n_art]] = True
    rows, arts, origin = [], [], []
    for i in range(n_fields):
        source, pool = pools[i % len(pools)]
        a, region = pool[int(rng.integers(len(pool)))]
        bg = _crop(rng, a, region, size)
        name = f"{split}_f{i:04d}"
        if is_art[i]:
            k = [kinds[int(j)] for j in rng.integers(0, len(kinds), int(rng.integers(1, 4)))]
            img, lab, types = _composite(bg, int(rng.integers(2**31)), k)
        else:
            img, lab, types = bg, np.zeros(bg.shape, np.int32), {}
        write_tiff(out / "images" / f"{name}.tif", np.rint(img).astype(np.uint16))
        write_tiff(out / "masks" / f"{name}.tif", lab.astype(np.uint16))
        rows.append((f"{name}.tif", "artifact" if types else "clean"))
        origin.append((f"{name}.tif", source))
        for obj, kind in sorted(types.items()):
            arts.append((f"{name}.tif", obj, kind, int((lab == obj).sum())))
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        w.writerows(rows)
    with open(out / "artifacts.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "object", "type", "area"])
        w.writerows(arts)
    with open(out / "sources.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "source"])
        w.writerows(origin)
    return out / "labels.csv"
