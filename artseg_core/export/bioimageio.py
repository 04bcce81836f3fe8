"""A bioimage.io model package (format 0.5) of an ArtSeg model's segmentation network.

The package holds the U-Net with a probability output in three weight formats (ONNX, TorchScript and a PyTorch
state dict whose architecture is :class:`artseg_core.export.networks.ArtSegUNetProbability`), the pre-processing
written with the spec's own operations, a test input/output pair, a cover image, the documentation with the
thresholds and the training summary, and the ArtSeg citation. Fiji's deepImageJ, ilastik, napari and the BioImage
Model Zoo tools read such a package; :func:`validate_package` runs ``bioimageio.core``'s own test on it.

ArtSeg's percentile normalisation is exactly ``scale_range`` (percentiles 1 and 99.8 over y and x, eps 1e-6)
followed by ``clip`` to [0, 1]; its quartile normalisation (the default route's) is ``scale_range`` (percentiles 25
and 75, eps 1e-6), ``scale_linear`` (gain 1/6, offset 2.5/6) and ``clip`` to [0, 1]. The differences: ArtSeg
estimates the percentiles of images above 4 Mpx on a strided subsample, and scales a field whose quartiles are
equal by its percentiles 1 and 99.8 (README "Export to bioimage.io / deepImageJ"). What the package does not
contain: the classifier gate, the threshold, the minimum object size and the object labelling of ``artseg
predict``; their calibrated values are in the documentation and in ``config.artseg``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from artseg_core._version import __version__
from artseg_core.export.onnx_export import export_unet_onnx, normalization_spec
from artseg_core.imgproc.normalize import normalize

__all__ = ["export_bioimageio", "validate_package", "ARTSEG_CITATION", "ExportError"]

ARTSEG_CITATION = {
    "text": "Ali MAS, Misko O, Salumaa S-O, Papkov M, Palo K, Fishman D, Parts L. ArtSeg - Artifact segmentation and "
            "removal in brightfield cell microscopy images without manual pixel-level annotations. "
            "Sci Rep 12, 11404 (2022).",
    "doi": "10.1038/s41598-022-14703-y",
}


class ExportError(RuntimeError):
    """An export that cannot be written (bad arguments or an image that does not fit the network)."""


def _test_image(divisor: int, test_image: np.ndarray | None) -> np.ndarray:
    """The raw test input: the given image cropped to a multiple of ``divisor``, or a phantom field with debris."""
    if test_image is None:
        from artseg_core.data.phantoms import make_field

        side = max(256, divisor)
        return make_field(shape=(side, side), seed=3, artifacts=["debris", "fibre"]).image
    img = np.asarray(test_image)
    if img.ndim != 2:
        raise ExportError(f"the test image must be 2-D, got shape {img.shape}")
    h, w = (img.shape[0] // divisor) * divisor, (img.shape[1] // divisor) * divisor
    if h == 0 or w == 0:
        raise ExportError(f"the test image {img.shape} is smaller than the network's divisor {divisor}")
    return img[:h, :w]


def _cover(image: np.ndarray, prob: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the normalised input beside the probability map (magenta), 8-bit."""
    from PIL import Image

    grey = (normalize(image) * 255).astype(np.uint8)
    left = np.stack([grey] * 3, -1)
    p = np.clip(prob, 0, 1)
    right = (np.stack([grey * (1 - 0.7 * p), grey * (1 - 0.7 * p), grey * (1 - 0.7 * p)], -1)
             + np.stack([255 * 0.7 * p, 0 * p, 255 * 0.7 * p], -1)).astype(np.uint8)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(path)


def _preprocessing_text(method: str) -> str:
    """The package documentation's paragraph on the input normalisation of a model (``profile.normalization``)."""
    tail = ("ArtSeg estimates the percentiles of images above 4 Mpx on a strided subsample of about 4 Mpx; "
            "consumers use every pixel, a difference far below one grey level.")
    if method == "quartile":
        n = normalization_spec(method)
        f = n["fence"]
        return ("ArtSeg's quartile normalisation (Tukey's fences), written with the specification's operations: "
                f"`scale_range` over y and x with percentiles {n['pmin']:g} and {n['pmax']:g} and eps {n['eps']:g}, "
                f"then `scale_linear` with gain {n['gain']:.6g} and offset {n['offset']:.6g}, then `clip` to [0, 1]: "
                f"p25 - {f:g} IQR maps to 0 and p75 + {f:g} IQR to 1. An artifact barely moves the quartiles, so "
                f"the rest of a field keeps its values. {tail} A field whose quartiles are equal (more than half "
                "of its pixels one value) is scaled by its percentiles 1 and 99.8 in ArtSeg.")
    return ("ArtSeg's percentile normalisation, written with the specification's operations: `scale_range` over y "
            f"and x with percentiles 1 and 99.8 and eps 1e-6, then `clip` to [0, 1]. {tail}")


def _preprocessing(bio, method: str) -> list:
    """The bioimage.io pre-processing operations of a model's normalisation (after the cast to float32)."""
    n = normalization_spec(method)
    axes = [bio.AxisId("y"), bio.AxisId("x")]
    ops = [bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(axes=axes, min_percentile=n["pmin"],
                                                           max_percentile=n["pmax"], eps=n["eps"]))]
    if method == "quartile":
        ops.append(bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=n["gain"], offset=n["offset"])))
    return ops + [bio.ClipDescr(kwargs=bio.ClipKwargs(min=0.0, max=1.0))]


def _documentation(model, divisor: int, path: Path) -> None:
    t, p = model.thresholds, model.profile
    summary = json.dumps(model.summary, indent=2, default=str)
    path.write_text(f"""# ArtSeg artifact segmentation (profile `{p.name}`)

Finds artifacts (debris, fibres, bubbles, clumps, out-of-focus and stained blotches) in 2-D brightfield
microscopy images: the output is, for every pixel, the probability that it belongs to an artifact. Exported by
ArtSeg {__version__} (`artseg export --format bioimageio`).

## Input
One grey channel (`raw`), axes batch, channel, y, x; height and width multiples of {divisor} (pad at the bottom
and right with reflection otherwise; ArtSeg crops the padding off again). Large images are best run in tiles of
{p.predict_tile} px overlapping by {p.predict_overlap} px.

## Pre-processing
{_preprocessing_text(p.normalization)}

## Output and post-processing
`probability` (batch, channel, y, x), float32 in [0, 1]. `artseg predict` then does what this package does not:
it skips the segmentation when the image classifier's p(artifact) is below the gate, thresholds the map, removes
objects below the minimum size, fills holes and labels the objects. The calibrated values:

| setting | value |
|---|---|
| pixel threshold | {t["unet"]} |
| minimum object size (px) | {t["min_size"]} |
| classifier flag threshold | {t["classifier"]} |
| classifier gate | {t["gate"]} |

## Use in Fiji (deepImageJ), ilastik or napari
Install the zip with deepImageJ's *Install Model* (it runs the TorchScript or ONNX weights) and threshold the
output at {t["unet"]}. The `pytorch_state_dict` weights need the `artseg` Python package
(`artseg_core.export.networks.ArtSegUNetProbability`); the TorchScript and ONNX weights need nothing else.

## Training summary
```json
{summary}
```

## Validation
The test output was computed by ArtSeg's own pipeline on the test input (a synthetic phantom field unless another
image was given); `bioimageio test` reproduces it with each weight format. ArtSeg validates the segmentation on
held-out fields during training (see the summary above).

## Citation
{ARTSEG_CITATION["text"]} doi:{ARTSEG_CITATION["doi"]}
""")


def export_bioimageio(model, out, test_image: np.ndarray | None = None, name: str | None = None,
                      authors: list[str] | None = None) -> Path:
    """Write a bioimage.io model package (format 0.5) of the model's U-Net.

    Parameters
    ----------
    model : ArtifactModel
        A loaded model (:func:`artseg_core.load_model`).
    out : path-like
        ``.zip`` file, or a folder (the unpacked package) for any other name.
    test_image : ndarray (H, W), optional
        Raw image for the test tensors, cropped to a multiple of the U-Net's divisor; default: a 256 x 256 phantom
        field with debris and a fibre.
    name : str, optional
        Model name (default ``ArtSeg artifact segmentation (<profile>)``).
    authors : list of str, optional
        Names of whoever trained the model (default ``["ArtSeg"]``).

    Returns
    -------
    Path
        The zip file or folder written.
    """
    model._require_networks("export bioimageio")
    import torch
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder
    from bioimageio.spec.model import v0_5 as bio

    from artseg_core.export.networks import unet_for_export

    out = Path(out)
    net = unet_for_export(model.unet)
    d = int(net.divisor)
    raw = _test_image(d, test_image)
    x_raw = raw.astype(np.float32)[None, None]
    with torch.inference_mode():
        prob = net(torch.from_numpy(model.normalize(raw)[None, None])).numpy().astype(np.float32)
    torch_version = bio.Version(torch.__version__.split("+")[0])

    with tempfile.TemporaryDirectory(prefix="artseg-bioimageio-") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "test_input.npy", x_raw)
        np.save(tmp / "test_output.npy", prob)
        _cover(raw, prob[0, 0], tmp / "cover.png")
        _documentation(model, d, tmp / "README.md")
        (tmp / "artseg_config.json").write_text(json.dumps(
            {"thresholds": model.thresholds, "quality_thresholds": model.quality_thresholds,
             "profile": model.profile.to_dict(),
             "normalization": normalization_spec(model.profile.normalization)}, indent=2, default=str) + "\n")
        torch.save(net.state_dict(), tmp / "weights.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, torch.rand(1, 1, 2 * d, 3 * d))
        traced.save(str(tmp / "weights_torchscript.pt"))
        opset = export_unet_onnx(model.unet, tmp / "weights.onnx")

        space = dict(size=bio.ParameterizedSize(min=d, step=d))
        inp = bio.InputTensorDescr(
            id=bio.TensorId("raw"),
            description="2-D brightfield image, one grey channel, any real dtype (cast to float32)",
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("brightfield")]),
                  bio.SpaceInputAxis(id=bio.AxisId("y"), **space), bio.SpaceInputAxis(id=bio.AxisId("x"), **space)],
            test_tensor=bio.FileDescr(source=tmp / "test_input.npy"),
            preprocessing=[bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="float32")),
                           *_preprocessing(bio, model.profile.normalization)])
        ref = dict(tensor_id=bio.TensorId("raw"))
        outp = bio.OutputTensorDescr(
            id=bio.TensorId("probability"),
            description=f"artifact probability per pixel; ArtSeg's calibrated threshold is {model.thresholds['unet']}",
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("artifact")]),
                  bio.SpaceOutputAxis(id=bio.AxisId("y"), size=bio.SizeReference(axis_id=bio.AxisId("y"), **ref)),
                  bio.SpaceOutputAxis(id=bio.AxisId("x"), size=bio.SizeReference(axis_id=bio.AxisId("x"), **ref))],
            test_tensor=bio.FileDescr(source=tmp / "test_output.npy"),
            data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))
        weights = bio.WeightsDescr(
            pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
                source=tmp / "weights.pt", pytorch_version=torch_version,
                architecture=bio.ArchitectureFromLibraryDescr(
                    import_from="artseg_core.export.networks", callable=bio.Identifier("ArtSegUNetProbability"),
                    kwargs=net.config())),
            torchscript=bio.TorchscriptWeightsDescr(source=tmp / "weights_torchscript.pt",
                                                    pytorch_version=torch_version, parent="pytorch_state_dict"),
            onnx=bio.OnnxWeightsDescr(source=tmp / "weights.onnx", opset_version=opset, parent="pytorch_state_dict"))
        descr = bio.ModelDescr(
            name=name or f"ArtSeg artifact segmentation ({model.profile.name})",
            description="Pixel probability of artifacts (debris, fibres, bubbles, clumps, blotches, defocus) in "
                        "2-D brightfield microscopy images; ArtSeg U-Net trained from image-level labels.",
            authors=[bio.Author(name=a) for a in (authors or ["ArtSeg"])],
            cite=[bio.CiteEntry(text=ARTSEG_CITATION["text"], doi=bio.Doi(ARTSEG_CITATION["doi"]))],
            license=bio.LicenseId("BSD-3-Clause"),
            tags=["brightfield", "artifact-detection", "semantic-segmentation", "2d", "pytorch", "onnx", "artseg"],
            documentation=bio.FileDescr(source=tmp / "README.md"),
            covers=[bio.FileDescr(source=tmp / "cover.png")],
            attachments=[bio.FileDescr(source=tmp / "artseg_config.json")],
            inputs=[inp], outputs=[outp], weights=weights,
            version=bio.Version(__version__) if __version__[0].isdigit() else None,
            config=bio.Config(artseg={"version": __version__, "thresholds": dict(model.thresholds),
                                      "normalization": normalization_spec(model.profile.normalization),
                                      "training_summary": json.loads(json.dumps(model.summary, default=str))}),
        )
        if out.suffix.lower() == ".zip":
            out.parent.mkdir(parents=True, exist_ok=True)
            return Path(save_bioimageio_package(descr, output_path=out))
        if out.exists():
            shutil.rmtree(out)
        return Path(save_bioimageio_package_as_folder(descr, output_path=out))


def validate_package(path, weight_format: str | None = None) -> tuple[bool, str]:
    """Run bioimage.io's own model test (``bioimageio test``) on a package.

    Parameters
    ----------
    path : path-like
        ``.zip`` package, a package folder or its ``rdf.yaml``.
    weight_format : str, optional
        Test one weight format (``onnx``, ``torchscript``, ``pytorch_state_dict``); default: all.

    Returns
    -------
    passed : bool
    summary : str
        The validation summary (what failed, and why).
    """
    from bioimageio.core import test_model

    p = Path(path)
    if p.is_dir():
        p = p / "rdf.yaml"
    summary = test_model(str(p), weight_format=weight_format)
    return summary.status == "passed", summary.format()
