"""The plugin's dock widgets: *Mask artifacts* and *Training data*.

They only move data between napari layers and the engine: the image of a layer (or its current plane) goes to
:meth:`artseg_core.predict.model.ArtifactModel.predict`, whose labels and probability map come back as layers; a
Labels layer goes to :func:`artseg_core.io.outputs.write_mask_tiff`; training is ``artseg train`` in a subprocess.
Long work runs in napari worker threads so that the viewer stays responsive.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, ProgressBar,
                              PushButton)

__all__ = ["MaskArtifactsWidget", "TrainingDataWidget", "layer_plane", "describe_result"]

def _load_model(path: Path):
    """The model in ``path`` from the engine's one model cache (:mod:`artseg_core.predict.cache`)."""
    from artseg_core.predict.cache import load_model_cached

    return load_model_cached(path, device="auto")


def layer_plane(layer, viewer) -> tuple[np.ndarray, tuple[int, ...]]:
    """The 2-D image a layer shows now: the whole layer when it is 2-D, else its current plane.

    Parameters
    ----------
    layer : napari.layers.Image or napari.layers.Labels
        A grey (not RGB) layer; for a multiscale layer the full-resolution level is used.
    viewer : napari.viewer.Viewer
        Its viewer, whose dims give the current plane.

    Returns
    -------
    plane : ndarray (H, W)
    index : tuple of int
        Index of the plane in the layer's leading axes (empty for a 2-D layer).
    """
    if getattr(layer, "rgb", False):
        raise ValueError(f"layer {layer.name!r} is RGB; ArtSeg needs a grey image (convert it to one channel)")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    nd = data.ndim
    if nd < 2:
        raise ValueError(f"layer {layer.name!r} has {nd} dimension(s); ArtSeg needs a 2-D image or a stack")
    index: tuple[int, ...] = ()
    if nd > 2:
        pos = layer.world_to_data(np.asarray(viewer.dims.point)[-nd:])
        index = tuple(int(np.clip(round(float(p)), 0, s - 1)) for p, s in zip(pos[:-2], data.shape[:-2]))
    return np.asarray(data[index] if index else data), index


def describe_result(res, thresholds: dict) -> tuple[str, str, str]:
    """The widget's three lines for one :class:`~artseg_core.predict.model.Result`: p(artifact), objects, QC."""
    verdict = "flagged as artifact" if res.flagged else "clean"
    lines = [f"p(artifact) = {res.p_artifact:.3f}: {verdict} (threshold {thresholds['classifier']:.2f})"]
    if res.segmented:
        lines.append(f"{res.n_objects} artifact object(s), {100 * res.area_fraction:.2f}% of the image")
    else:
        lines.append(f"segmentation skipped: p(artifact) below the gate {thresholds['gate']:.2f}")
    q = res.quality
    scores = ", ".join(f"{k} {q[k]:.3f}" for k in ("focus", "illumination", "saturation") if k in q)
    flags = [k.replace("_", " ") for k in ("defocus", "bad_illumination", "saturated") if q.get(k)]
    lines.append(f"{scores}; flags: {', '.join(flags) if flags else 'none'}")
    return lines[0], lines[1], lines[2]


def _predict_steps(path: Path, image: np.ndarray, gate: bool, threshold: float | None):
    """Worker body: load (cached) and predict, yielding the step reached.

    Returns ``(model, result)``, or ``(None, message)`` for a model file or image the engine refuses (shown in the
    widget rather than raised in napari's event loop).
    """
    from artseg_core.io.modelfile import ModelFileError

    yield 1
    try:
        model = _load_model(path)
        yield 2
        res = model.predict(image, gate=gate, threshold=threshold)
    except (ModelFileError, ValueError, OSError) as e:
        return None, str(e)
    yield 3
    return model, res


class MaskArtifactsWidget(Container):
    """Run an ArtSeg model on the selected image layer (2-D, or the current plane of a stack).

    Adds (or updates) a Labels layer ``<image> artifacts`` equal to ``model.predict(plane).labels`` and an Image
    layer ``<image> p(artifact)`` with the probability map, and shows p(artifact), the objects and the QC flags.
    The prediction runs in a worker thread.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer

    Attributes
    ----------
    result : Result or None
        The last prediction.
    worker : napari.qt.threading.GeneratorWorker or None
        The running or last worker.
    """

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self.model_file = FileEdit(label="model", mode="r", filter="*.artseg")
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.gate = CheckBox(text="skip images the classifier finds clean", value=True)
        self.threshold = FloatSpinBox(label="pixel threshold", min=0.0, max=1.0, step=0.05, value=0.0,
                                      tooltip="0 = the model's calibrated threshold")
        self.run_button = PushButton(text="Mask artifacts")
        self.progress = ProgressBar(label="progress", min=0, max=3, value=0)
        self.status = Label(label="result", value="choose a model file and an image layer")
        self.objects = Label(label="objects", value="")
        self.qc = Label(label="quality", value="")
        self.extend([self.model_file, self.image, self.gate, self.threshold, self.run_button, self.progress,
                     self.status, self.objects, self.qc])
        for w in (self.status, self.objects, self.qc):  # long lines wrap instead of widening the dock
            getattr(w.native, "setWordWrap", lambda _: None)(True)
        self.run_button.changed.connect(self.run)
        napari_viewer.layers.events.inserted.connect(self.reset_choices)
        napari_viewer.layers.events.removed.connect(self.reset_choices)
        self.result = None
        self.worker = None

    def _image_layers(self, _widget=None):
        from napari.layers import Image

        return [(ly.name, ly) for ly in self._viewer.layers if isinstance(ly, Image)]

    def run(self):
        """Start the prediction on the selected layer (returns at once; the worker adds the layers)."""
        layer = self.image.value
        path = Path(self.model_file.value)
        if layer is None:
            self.status.value = "no image layer selected"
            return None
        if not path.is_file():
            self.status.value = f"model file not found: {path}"
            return None
        try:
            plane, index = layer_plane(layer, self._viewer)
        except ValueError as e:
            self.status.value = str(e)
            return None
        from napari.qt.threading import create_worker

        thr = float(self.threshold.value) or None
        self.progress.value = 0
        self.objects.value = self.qc.value = ""
        self.status.value = f"running {path.name} on {layer.name}" + (f" plane {index}" if index else "") + " ..."
        self.run_button.enabled = False
        worker = create_worker(_predict_steps, path, plane, bool(self.gate.value), thr,
                               _progress={"total": 3, "desc": "ArtSeg"})
        worker.yielded.connect(self._on_step)
        worker.returned.connect(lambda out: self._on_result(layer, out))
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.worker = worker
        worker.start()
        return worker

    def _on_step(self, step: int):
        self.progress.value = step

    def _on_error(self, exc):
        self.progress.value = 0
        self.status.value = f"error: {exc}"

    def _upsert(self, name: str, data: np.ndarray, kind: str, source, **kwargs):
        if name in self._viewer.layers:
            ly = self._viewer.layers[name]
            ly.data = data
            return ly
        add = self._viewer.add_labels if kind == "labels" else self._viewer.add_image
        return add(data, name=name, scale=tuple(source.scale[-2:]), translate=tuple(source.translate[-2:]),
                   **kwargs)

    def _on_result(self, layer, out):
        model, res = out
        if model is None:
            self._on_error(res)
            return
        self.result = res
        self.progress.value = self.progress.max
        pname = f"{layer.name} p(artifact)"
        if res.prob is not None:
            self._upsert(pname, res.prob, "image", layer, colormap="magma", blending="additive",
                         contrast_limits=(0.0, 1.0), opacity=0.6, visible=False)
        elif pname in self._viewer.layers:
            self._viewer.layers.remove(pname)
        self._upsert(f"{layer.name} artifacts", res.labels, "labels", layer, opacity=0.6)
        self.status.value, self.objects.value, self.qc.value = describe_result(res, model.thresholds)


def _chosen(value) -> bool:
    """Whether a FileEdit holds a path (an empty one reads as ``.``)."""
    return str(value) not in ("", ".")


_PERCENT = re.compile(r"(\d{1,3})%\|")


class TrainingDataWidget(Container):
    """Save a Labels layer as a training mask, and train a model with ``artseg train`` in the background.

    *Save mask* writes ``<masks folder>/<stem>_mask.tif`` (uint8 0/255, the file ``artseg train --masks`` pairs with
    the image ``<stem>.*``). *Train* runs ``artseg train IMAGES --labels labels.csv [--masks FOLDER] -o MODEL`` in a
    subprocess; its progress bars drive the widget's.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer

    Attributes
    ----------
    worker : napari.qt.threading.GeneratorWorker or None
        The running or last training worker; it returns the exit code.
    log : list of str
        The training's output lines.
    """

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self.labels_layer = ComboBox(label="labels layer", choices=self._labels_layers)
        self.stem = LineEdit(label="image stem", tooltip="file name of the image without its suffix")
        self.mask_folder = FileEdit(label="masks folder", mode="d")
        self.save_button = PushButton(text="Save mask")
        self.images = FileEdit(label="images folder", mode="d")
        self.labels_csv = FileEdit(label="labels.csv", mode="r", filter="*.csv",
                                   tooltip="columns image,label (clean|artifact); "
                                           "default: labels.csv in the images folder or beside it")
        self.model_out = FileEdit(label="model to write", mode="w", filter="*.artseg")
        self.profile = ComboBox(label="profile", choices=["fast", "paper", "tiny"], value="fast")
        self.train_options = LineEdit(label="more options", tooltip="extra artseg train options, e.g. --epochs 20")
        self.train_button = PushButton(text="Train")
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = Label(label="status", value="")
        self.extend([self.labels_layer, self.stem, self.mask_folder, self.save_button, self.images, self.labels_csv,
                     self.model_out, self.profile, self.train_options, self.train_button, self.progress, self.status])
        self.labels_layer.changed.connect(self._default_stem)
        self.save_button.changed.connect(self.save_mask)
        self.train_button.changed.connect(self.train)
        napari_viewer.layers.events.inserted.connect(self.reset_choices)
        napari_viewer.layers.events.removed.connect(self.reset_choices)
        self.worker = None
        self.log: list[str] = []
        self._default_stem()

    def _labels_layers(self, _widget=None):
        from napari.layers import Labels

        return [(ly.name, ly) for ly in self._viewer.layers if isinstance(ly, Labels)]

    def _default_stem(self, *_):
        ly = self.labels_layer.value
        if ly is not None and not self.stem.value:
            self.stem.value = ly.name[: -len(" artifacts")] if ly.name.endswith(" artifacts") else ly.name

    def save_mask(self) -> Path | None:
        """Write the selected Labels layer (its current plane) as ``<masks folder>/<stem>_mask.tif``."""
        from artseg_core.io.outputs import write_mask_tiff

        layer, stem = self.labels_layer.value, self.stem.value.strip()
        folder = Path(self.mask_folder.value)
        if layer is None or not stem:
            self.status.value = "choose a labels layer and the image's file stem"
            return None
        if not _chosen(self.mask_folder.value) or not folder.is_dir():
            self.status.value = f"choose an existing masks folder (got {self.mask_folder.value})"
            return None
        plane, _ = layer_plane(layer, self._viewer)
        path = write_mask_tiff(folder / f"{stem}_mask.tif", plane > 0)
        self.status.value = f"wrote {path} ({int((plane > 0).sum())} artifact pixels)"
        return path

    def command(self) -> list[str]:
        """The ``artseg train`` command line the *Train* button runs."""
        cmd = [sys.executable, "-m", "artseg_core.cli", "train", str(self.images.value),
               "-o", str(self.model_out.value), "--profile", self.profile.value]
        if _chosen(self.labels_csv.value):  # else artseg train finds IMAGES/labels.csv or IMAGES/../labels.csv
            cmd += ["--labels", str(self.labels_csv.value)]
        masks = Path(self.mask_folder.value)
        if _chosen(self.mask_folder.value) and masks.is_dir() and any(masks.glob("*_mask.tif")):
            cmd += ["--masks", str(masks)]
        return cmd + shlex.split(self.train_options.value)

    def train(self):
        """Start ``artseg train`` in a subprocess, read by a worker thread (returns at once)."""
        if not _chosen(self.images.value) or not Path(self.images.value).is_dir():
            self.status.value = "choose the folder of training images"
            return None
        if not _chosen(self.model_out.value):
            self.status.value = "choose the model file to write"
            return None
        from napari.qt.threading import create_worker

        self.log = []
        self.progress.value = 0
        self.train_button.enabled = False
        self.status.value = "training ..."
        worker = create_worker(_run_lines, self.command())
        worker.yielded.connect(self._on_line)
        worker.returned.connect(self._on_done)
        worker.finished.connect(lambda: setattr(self.train_button, "enabled", True))
        self.worker = worker
        worker.start()
        return worker

    def _on_line(self, line: str):
        self.log.append(line)
        m = _PERCENT.search(line)
        if m:
            self.progress.value = min(100, int(m.group(1)))
        self.status.value = line[-120:]

    def _on_done(self, code: int):
        if code == 0:
            self.progress.value = 100
            self.status.value = f"model written: {self.model_out.value}"
        else:
            tail = " | ".join(self.log[-3:])
            self.status.value = f"artseg train failed (exit {code}): {tail[-300:]}"


def _run_lines(cmd: list[str]):
    """Worker body: run ``cmd``, yield its output line by line (tqdm's carriage returns split lines too)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    buf, done = b"", False
    try:
        while True:
            chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
            if not chunk:
                break
            buf += chunk
            parts = re.split(rb"[\r\n]", buf)
            buf = parts.pop()
            for p in parts:
                if p.strip():
                    yield p.decode(errors="replace").strip()
        if buf.strip():
            yield buf.decode(errors="replace").strip()
        done = True
    finally:
        if not done and proc.poll() is None:  # the worker was quit: stop the training too
            proc.terminate()
    return proc.wait()
