"""Exports of a trained ArtSeg model for other tools: a bioimage.io model package and plain ONNX files.

``artseg export MODEL --format bioimageio --out model.zip`` (:func:`export_bioimageio`) and
``--format onnx --out DIR`` (:func:`export_onnx`). Needs the ``export`` extra (onnx, onnxruntime, onnxscript,
bioimageio.core).
"""
from __future__ import annotations

from artseg_core.export.bioimageio import ARTSEG_CITATION, ExportError, export_bioimageio, validate_package
from artseg_core.export.onnx_export import OnnxArtSeg, export_onnx

__all__ = ["export_bioimageio", "validate_package", "export_onnx", "OnnxArtSeg", "ExportError", "ARTSEG_CITATION"]
