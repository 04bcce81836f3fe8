"""The layout of a plate run's output folder: the names of the files the runner, the report and resume share
(and of the work folder a CellProfiler pipeline run, ``artseg batch --pipeline``, keeps its shards in)."""
from __future__ import annotations

__all__ = ["JOURNAL", "SETTINGS", "RESULTS", "WELLS", "LOG", "OUTPUTS", "REPORT", "REPORT_FILES", "PIPELINE_WORK",
           "PIPELINE_SETTINGS"]

JOURNAL = "journal.jsonl"   #: one JSON line per finished image (the source of truth for resume)
SETTINGS = "batch.json"     #: what the run was made from (model, options, inputs)
RESULTS = "results.csv"     #: one row per image, rebuilt from the journal
WELLS = "wells.csv"         #: one row per well
LOG = "batch.log"           #: the run's log
OUTPUTS = "outputs"         #: per-image files (masks, probabilities, ROIs, overlays), one folder per well
REPORT = "report.html"      #: the plate report
REPORT_FILES = "report_files"  #: the report's pictures
PIPELINE_WORK = "cp_shards"   #: a pipeline run's shards, with their journal (JOURNAL) and settings, in OUT
PIPELINE_SETTINGS = "settings.json"  #: what a pipeline run was made from, inside PIPELINE_WORK
