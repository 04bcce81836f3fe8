"""The state behind ``artseg label``: the fields of a folder, their labels (kept in ``labels.csv``), their order,
previews and masks. No HTTP here; :mod:`artseg_core.label.server` serves a :class:`LabelSession`.

Every change of a label rewrites ``labels.csv`` at once, atomically, in the ``image,label`` format that
``artseg train --labels`` reads, so a killed server or a closed browser loses nothing.
"""
from __future__ import annotations

import csv
import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from artseg_core.imgproc.normalize import normalize
from artseg_core.io.files import atomic_write, write_tiff
from artseg_core.io.images import ImageReadError, list_images, read_image
from artseg_core.io.labels import find_mask, iter_label_rows, parse_label, read_mask

log = logging.getLogger(__name__)

__all__ = ["LabelSession", "FieldNotFound", "default_labels_path", "MASK_MAX_SIDE"]

#: Largest side of the image (and of the mask drawn on it) sent to the mask editor; larger fields are
#: down-sampled for the page and the mask is scaled back up (nearest neighbour) when saved.
MASK_MAX_SIDE = 4096
LABEL_WORDS = ("clean", "artifact")


class FieldNotFound(KeyError):
    """A field name that is not one of the session's images (also any path outside the image folder)."""


def default_labels_path(images_dir: Path) -> Path:
    """Where ``artseg train IMAGES`` looks for labels: ``IMAGES/labels.csv``, else ``IMAGES/../labels.csv``.

    Parameters
    ----------
    images_dir : pathlib.Path
        The image folder.

    Returns
    -------
    pathlib.Path
        The first of the two that exists, or ``IMAGES/labels.csv`` when neither does.
    """
    for cand in (images_dir / "labels.csv", images_dir.parent / "labels.csv"):
        if cand.is_file():
            return cand
    return images_dir / "labels.csv"


def _read_existing(csv_path: Path, images_dir: Path, names) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Labels already in ``csv_path``: {field name: clean|artifact} for fields of the folder, and the other rows
    (kept as they are so that rewriting the file never drops them)."""
    known: dict[str, str] = {}
    other: list[tuple[str, str]] = []
    if not csv_path.is_file() or csv_path.stat().st_size == 0:
        return known, other
    for _n, name, label in iter_label_rows(csv_path):
        lbl = LABEL_WORDS[label]
        p = Path(name)
        full = p if p.is_absolute() else images_dir / p
        try:
            rel = full.resolve().relative_to(images_dir.resolve()).as_posix()
        except ValueError:
            rel = None
        if rel in names:
            known[rel] = lbl
        else:
            other.append((name, lbl))
    return known, other


class LabelSession:
    """The fields of one image folder with their labels, order, previews and masks.

    Parameters
    ----------
    images_dir : path
        Folder of images (not searched recursively).
    labels_path : path
        ``labels.csv`` to read (when present) and rewrite; image names in it are relative to ``images_dir``.
    masks_dir : path, optional
        Folder where the mask editor writes ``<stem>_mask.tif`` (0/255) and reads existing masks.
    model : object, optional
        An :class:`artseg_core.predict.model.ArtifactModel`; its classifier orders the fields (least certain
        first) and its prediction is the starting mask in the mask editor.
    order : {"file", "random"}
        Order without a model.
    seed : int
        Seed of the random order.
    plane : int, optional
        Plane of multi-page TIFFs.
    progress : callable, optional
        Called as ``progress(i, n)`` while the model scores the fields.
    """

    def __init__(self, images_dir, labels_path, masks_dir=None, model=None, order: str = "file", seed: int = 0,
                 plane: int | None = None, progress=None):
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"{self.images_dir}: image folder not found")
        self.labels_path = Path(labels_path)
        self.masks_dir = Path(masks_dir) if masks_dir is not None else None
        if self.masks_dir is not None:  # exists from the start, so that artseg train --masks DIR accepts it
            self.masks_dir.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.plane = plane
        self._lock = threading.RLock()
        self._model_lock = threading.Lock()
        self._raw: OrderedDict = OrderedDict()   # the last few images read (a 10000x10000 uint16 is 200 MB)
        self._png: OrderedDict = OrderedDict()   # previews and thumbnails already encoded
        paths = list_images(self.images_dir)
        if not paths:
            raise FileNotFoundError(f"{self.images_dir}: no images (TIFF, PNG or JPEG) in this folder")
        self._paths = {p.relative_to(self.images_dir).as_posix(): p for p in paths}
        self._file_order = list(self._paths)
        self.labels, self._other_rows = _read_existing(self.labels_path, self.images_dir, self._paths)
        self.p_artifact: dict[str, float] = {}
        self.threshold: float | None = None
        if model is not None:
            self.threshold = float(model.thresholds["classifier"])
            for i, name in enumerate(self._file_order):
                self.p_artifact[name] = self._classify(name)
                if progress is not None:
                    progress(i + 1, len(self._file_order))
            self.order = sorted(self._file_order, key=lambda n: (abs(self.p_artifact[n] - self.threshold), n))
        elif order == "random":
            rng = np.random.default_rng(seed)
            self.order = [self._file_order[i] for i in rng.permutation(len(self._file_order))]
        elif order == "file":
            self.order = list(self._file_order)
        else:
            raise ValueError(f"order must be 'file' or 'random', got {order!r}")

    # ------------------------------------------------------------------ fields
    def path(self, name: str) -> Path:
        """The image file of a field name; :class:`FieldNotFound` for anything else (``../x`` included)."""
        try:
            return self._paths[name]
        except (KeyError, TypeError):
            raise FieldNotFound(name) from None

    def _read(self, name: str) -> np.ndarray:
        with self._lock:
            if name in self._raw:
                self._raw.move_to_end(name)
                return self._raw[name]
        img = read_image(self.path(name), self.plane)
        with self._lock:
            self._raw[name] = img
            while len(self._raw) > 3:
                self._raw.popitem(last=False)
        return img

    def _classify(self, name: str) -> float:
        with self._model_lock:
            return float(self.model.classify(self.model.normalize(self._read(name))))

    def state(self) -> dict:
        """Everything the page needs: the fields in order with their labels and the model's guesses."""
        with self._lock:
            fields = []
            for name in self.order:
                f = {"name": name, "label": self.labels.get(name)}
                if name in self.p_artifact:
                    f["p_artifact"] = round(self.p_artifact[name], 4)
                    f["guess"] = "artifact" if self.p_artifact[name] >= self.threshold else "clean"
                fields.append(f)
            return {"fields": fields, "n_labelled": sum(1 for n in self.order if n in self.labels),
                    "labels_path": str(self.labels_path), "masks_dir": str(self.masks_dir) if self.masks_dir else None,
                    "model": self.model is not None, "threshold": self.threshold, "mask_max_side": MASK_MAX_SIDE}

    # ------------------------------------------------------------------ labels
    def set_label(self, name: str, label: str | None) -> None:
        """Set (``clean``/``artifact``) or clear (None) a field's label and rewrite ``labels.csv`` at once.

        Raises
        ------
        FieldNotFound
            ``name`` is not a field of the folder.
        ValueError
            Unknown label.
        """
        self.path(name)
        if label is not None:
            label = LABEL_WORDS[parse_label(label)]
        with self._lock:
            if label is None:
                self.labels.pop(name, None)
            else:
                self.labels[name] = label
            self._write_labels()

    def _write_labels(self) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(("image", "label"))
        for name in self._file_order:
            if name in self.labels:
                w.writerow((name, self.labels[name]))
        for row in self._other_rows:
            w.writerow(row)
        self.labels_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.labels_path, "w") as fh:
            fh.write(buf.getvalue())

    # ------------------------------------------------------------------ pictures
    def preview(self, name: str, max_side: int) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
        """The field, contrast-stretched with the project's normalisation, as 8-bit PNG bytes.

        Parameters
        ----------
        name : str
            Field name.
        max_side : int
            Largest side of the picture; larger images are down-sampled (area average).

        Returns
        -------
        png : bytes
        size : (height, width) of the picture
        full : (height, width) of the image
        """
        from PIL import Image

        max_side = int(np.clip(max_side, 16, MASK_MAX_SIDE))
        key = (name, max_side)
        with self._lock:
            if key in self._png:
                self._png.move_to_end(key)
                return self._png[key]
        img = self._read(name)
        a = (normalize(img) * 255.0 + 0.5).astype(np.uint8)
        pic = Image.fromarray(a)
        size = preview_size(img.shape, max_side)
        if size != img.shape:
            pic = pic.resize((size[1], size[0]), Image.BOX)
        buf = io.BytesIO()
        pic.save(buf, format="PNG", compress_level=1)
        out = (buf.getvalue(), size, tuple(img.shape))
        with self._lock:
            self._png[key] = out
            while sum(len(v[0]) for v in self._png.values()) > 256 * 2 ** 20:
                self._png.popitem(last=False)
        return out

    def mask_path(self, name: str) -> Path | None:
        """Where the editor saves the mask of ``name``: ``MASKS/<stem>_mask.tif`` (None without a masks folder)."""
        if self.masks_dir is None:
            return None
        return self.masks_dir / (Path(name).stem + "_mask.tif")

    def start_mask(self, name: str) -> tuple[np.ndarray, str]:
        """The mask the editor starts from, at full size: a mask already in the masks folder, else the model's
        prediction, else empty.

        Returns
        -------
        mask : numpy.ndarray of bool
        source : {"saved", "model", "empty"}
        """
        img = self._read(name)
        if self.masks_dir is not None:
            saved = find_mask(self.masks_dir, self.path(name), rois=True)
            if saved is not None:
                try:
                    return read_mask(saved, img.shape), "saved"
                except ImageReadError as e:
                    log.warning("%s; ignored", e)
        if self.model is not None:
            with self._model_lock:
                res = self.model.predict(img)
            return np.asarray(res.mask, bool), "model"
        return np.zeros(img.shape, bool), "empty"

    def mask_png(self, name: str, max_side: int) -> tuple[bytes, str]:
        """:meth:`start_mask` as an RGBA PNG (red, opaque where masked, transparent elsewhere) of the preview size."""
        from PIL import Image

        m, source = self.start_mask(name)
        size = preview_size(m.shape, int(np.clip(max_side, 16, MASK_MAX_SIDE)))
        pic = Image.fromarray(m.astype(np.uint8) * 255)
        if size != m.shape:
            pic = pic.resize((size[1], size[0]), Image.NEAREST)
        a = np.asarray(pic) > 127
        rgba = np.zeros(a.shape + (4,), np.uint8)
        rgba[a] = (255, 0, 0, 255)
        buf = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), source

    def save_mask(self, name: str, png: bytes) -> Path:
        """Write the mask drawn in the page (a PNG; masked where alpha >= 128) as ``<stem>_mask.tif``, 0/255
        uint8 at the image's full size (scaled up with nearest neighbour when the page had a preview).

        Raises
        ------
        FieldNotFound, ValueError
            Unknown field, no masks folder, or a picture that is not a PNG of the preview's aspect.
        """
        from PIL import Image

        self.path(name)
        dest = self.mask_path(name)
        if dest is None:
            raise ValueError("no masks folder: start artseg label with --masks DIR")
        try:
            pic = Image.open(io.BytesIO(png))
            pic.load()
        except Exception as e:  # PIL raises many kinds
            raise ValueError(f"mask is not a readable PNG: {e}") from None
        full = self._read(name).shape
        expect = preview_size(full, MASK_MAX_SIDE)
        if (pic.height, pic.width) != expect:
            raise ValueError(f"mask is {pic.height}x{pic.width}, expected {expect[0]}x{expect[1]}")
        alpha = np.asarray(pic.convert("RGBA"))[..., 3]
        m = Image.fromarray(((alpha >= 128) * 255).astype(np.uint8))
        if expect != full:
            m = m.resize((full[1], full[0]), Image.NEAREST)
        out = (np.asarray(m) > 127).astype(np.uint8) * 255
        self.masks_dir.mkdir(parents=True, exist_ok=True)
        write_tiff(dest, out)
        return dest


def preview_size(shape, max_side: int) -> tuple[int, int]:
    """(height, width) of ``shape`` scaled so that its larger side is at most ``max_side``."""
    h, w = int(shape[0]), int(shape[1])
    s = min(1.0, max_side / max(h, w))
    return (max(1, round(h * s)), max(1, round(w * s))) if s < 1.0 else (h, w)
