"""Plain ONNX export of an ArtSeg model, and running such an export with onnxruntime.

``export_onnx`` writes ``unet.onnx`` (normalised image -> artifact probability, any batch and any height and width
that are multiples of the U-Net's divisor), ``classifier.onnx`` (normalised image resized to S x S -> p(artifact))
and ``artseg_onnx.json``: the normalisation, tiling and thresholds a program needs to reproduce ``artseg predict``.
:class:`OnnxArtSeg` reads that folder and computes the probability map and p(artifact) exactly as
:meth:`artseg_core.predict.model.ArtifactModel.predict` does, with onnxruntime in place of torch.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from artseg_core._version import __version__
from artseg_core.imgproc.normalize import apply_normalization, normalize_range
from artseg_core.imgproc.tiling import predict_tiled

__all__ = ["export_onnx", "export_unet_onnx", "export_classifier_onnx", "OnnxArtSeg", "ONNX_CONFIG",
           "NORMALIZATION", "normalization_spec"]

#: Name of the JSON written beside the ONNX files.
ONNX_CONFIG = "artseg_onnx.json"

#: ArtSeg's percentile normalisation (:func:`artseg_core.imgproc.normalize.normalize`), as written into the exports.
NORMALIZATION = {"method": "percentile", "pmin": 1.0, "pmax": 99.8, "eps": 1e-6, "clip": [0.0, 1.0],
                 "formula": "clip((x - p1) / (p99.8 - p1 + 1e-6), 0, 1), percentiles over the whole 2-D image "
                            "(numpy linear interpolation; a strided ~4 Mpx subsample above 4 Mpx)"}


def normalization_spec(method: str) -> dict:
    """How a model's images are normalised (``profile.normalization``), as written into the exports."""
    from artseg_core.imgproc.normalize import NORMALIZATIONS, QUARTILE_FENCE

    if method == "percentile":
        return dict(NORMALIZATION)
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {method!r}")
    f = QUARTILE_FENCE
    return {"method": "quartile", "pmin": 25.0, "pmax": 75.0, "eps": 1e-6, "fence": f,
            "gain": 1 / (2 * f + 1), "offset": f / (2 * f + 1), "clip": [0.0, 1.0],
            "formula": f"d = p75 - p25 + 1e-6; clip((x - (p25 - {f:g} d)) / ({2 * f + 1:g} d), 0, 1), percentiles "
                       "over the whole 2-D image (numpy linear interpolation; a strided ~4 Mpx subsample above "
                       "4 Mpx); when p75 == p25 the percentile method (p1, p99.8) instead"}


def _onnx_export(module, example, path: Path, dynamic_shapes: dict) -> int:
    """``torch.onnx.export`` with the dynamo exporter, weights inside the file; returns the opset version."""
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # external_data=False: the dynamo exporter otherwise writes the weights to <file>.onnx.data
        torch.onnx.export(module, (example,), str(path), dynamo=True, external_data=False,
                          dynamic_shapes=dynamic_shapes, input_names=["x"], verbose=False)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    return int(next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")))


def export_unet_onnx(unet, path, example_size: int = 2) -> int:
    """Write the U-Net (probability output) as ONNX with dynamic batch, height and width.

    Parameters
    ----------
    unet : ArtSegUNet
        The trained U-Net (any device/precision; a float32 CPU copy is exported).
    path : path-like
        ``.onnx`` file to write.
    example_size : int
        Height and width of the tracing example, in units of ``unet.divisor``.

    Returns
    -------
    int
        The ONNX opset version written.

    Notes
    -----
    Input ``x`` (N, 1, H, W), float32, normalised like ArtSeg (see :data:`NORMALIZATION`), H and W multiples of
    ``unet.divisor``; output (N, 1, H, W) probabilities.
    """
    import torch
    from torch.export import Dim

    from artseg_core.export.networks import unet_for_export

    net = unet_for_export(unet)
    d = net.divisor
    x = torch.rand(1, net.in_channels, d * example_size, d * (example_size + 1))
    shapes = {"x": {0: Dim("batch"), 2: d * Dim("y_blocks"), 3: d * Dim("x_blocks")}}
    return _onnx_export(net, x, Path(path), shapes)


def export_classifier_onnx(classifier, size: int, path) -> int:
    """Write the classifier (p(artifact) output, shape (N, 1)) as ONNX for (N, 1, size, size) inputs.

    Parameters
    ----------
    classifier : torch.nn.Module
        The trained ResNet.
    size : int
        The profile's ``cls_size``: the normalised image is resized to size x size by area averaging first
        (``torch.nn.functional.interpolate(mode="area")``, i.e. adaptive average pooling).
    path : path-like
        ``.onnx`` file to write.

    Returns
    -------
    int
        The ONNX opset version written.
    """
    import torch
    from torch.export import Dim

    from artseg_core.export.networks import classifier_for_export

    net = classifier_for_export(classifier)
    return _onnx_export(net, torch.rand(2, 1, size, size), Path(path), {"x": {0: Dim("batch")}})


def export_onnx(model, out_dir) -> dict[str, Path]:
    """Write an ArtSeg model as plain ONNX files plus a JSON of its normalisation, tiling and thresholds.

    Parameters
    ----------
    model : ArtifactModel
        A loaded model (:func:`artseg_core.load_model`).
    out_dir : path-like
        Folder to write into (created).

    Returns
    -------
    dict
        ``unet``, ``classifier`` and ``config``: the paths written.
    """
    model._require_networks("export onnx")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"unet": out / "unet.onnx", "classifier": out / "classifier.onnx", "config": out / ONNX_CONFIG}
    opset_u = export_unet_onnx(model.unet, paths["unet"])
    opset_c = export_classifier_onnx(model.classifier, model.profile.cls_size, paths["classifier"])
    p = model.profile
    config = {
        "artseg_version": __version__,
        "unet": {"file": paths["unet"].name, "opset": opset_u, "input": "x (N, 1, H, W) float32, normalised",
                 "output": "(N, 1, H, W) artifact probability", "divisor": int(model.unet.divisor),
                 "tile": int(p.predict_tile), "overlap": int(p.predict_overlap)},
        "classifier": {"file": paths["classifier"].name, "opset": opset_c, "size": int(p.cls_size),
                       "input": f"x (N, 1, {p.cls_size}, {p.cls_size}) float32: the normalised image resized by "
                                "area averaging", "output": "(N, 1) p(artifact)"},
        "normalization": normalization_spec(p.normalization),
        "thresholds": dict(model.thresholds),
        "quality_thresholds": dict(model.quality_thresholds),
        "profile": p.to_dict(),
    }
    paths["config"].write_text(json.dumps(config, indent=2) + "\n")
    return paths


class OnnxArtSeg:
    """An ONNX export (:func:`export_onnx`) run with onnxruntime, the way ArtSeg runs the model.

    Parameters
    ----------
    folder : path-like
        Folder holding ``artseg_onnx.json`` and the ONNX files.

    Attributes
    ----------
    config : dict
        The JSON (thresholds, normalisation, tiling).
    """

    def __init__(self, folder):
        import onnxruntime as ort

        folder = Path(folder)
        self.config = json.loads((folder / ONNX_CONFIG).read_text())
        self._method = self.config.get("normalization", {}).get("method", "percentile")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self._unet = ort.InferenceSession(str(folder / self.config["unet"]["file"]), opts,
                                          providers=["CPUExecutionProvider"])
        self._cls = ort.InferenceSession(str(folder / self.config["classifier"]["file"]), opts,
                                         providers=["CPUExecutionProvider"])

    def probability(self, image: np.ndarray) -> np.ndarray:
        """Artifact probability map of a raw 2-D image (normalised, tiled and blended as ArtSeg does).

        Parameters
        ----------
        image : ndarray (H, W)
            Raw image, any real dtype and size.

        Returns
        -------
        ndarray
            float32 (H, W).
        """
        u = self.config["unet"]
        lo, scale = normalize_range(image, method=self._method)

        def fn(batch: np.ndarray) -> np.ndarray:
            return self._unet.run(None, {"x": np.ascontiguousarray(batch, np.float32)})[0]

        return predict_tiled(fn, np.asarray(image), tile=u["tile"], overlap=u["overlap"], divisor=u["divisor"],
                             transform=lambda t: apply_normalization(t, lo, scale))

    def p_artifact(self, image: np.ndarray) -> float:
        """Probability that a raw 2-D image contains an artifact (ArtSeg's classifier).

        Parameters
        ----------
        image : ndarray (H, W)

        Returns
        -------
        float
        """
        from artseg_core.nets.resnet import resize_for_classifier

        norm = apply_normalization(image, *normalize_range(image, method=self._method))
        x = resize_for_classifier(norm, self.config["classifier"]["size"]).numpy()
        return float(self._cls.run(None, {"x": x})[0][0, 0])
