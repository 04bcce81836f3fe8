"""Plate runner: run the ArtSeg engine (or a CellProfiler pipeline) over a whole plate.

Resumable (append-only journal), parallel (local worker processes or Dask distributed), with one results
table, a per-well summary and a static HTML report. ``artseg batch`` and ``artseg report`` call
:func:`run_batch` and :func:`write_report`.
"""
from __future__ import annotations

__all__ = ["run_batch", "BatchSummary", "write_report", "build_manifest", "parse_name", "run_pipeline_sharded"]


def __getattr__(name):  # lazy: keep ``import artseg_core.batch`` cheap (no torch, no matplotlib, no dask)
    if name in ("run_batch", "BatchSummary"):
        from artseg_core.batch import runner

        return getattr(runner, name)
    if name == "write_report":
        from artseg_core.batch.report import write_report

        return write_report
    if name == "build_manifest":
        from artseg_core.batch.manifest import build_manifest

        return build_manifest
    if name == "parse_name":
        from artseg_core.batch.platenames import parse_name

        return parse_name
    if name == "run_pipeline_sharded":
        from artseg_core.batch.cpshard import run_pipeline_sharded

        return run_pipeline_sharded
    raise AttributeError(f"module 'artseg_core.batch' has no attribute {name!r}")
