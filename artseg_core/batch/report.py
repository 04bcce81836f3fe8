"""Static HTML plate report (``OUT/report.html`` + PNGs in ``OUT/report_files/``); no server, no scripts.

Contents: counts (images, flagged, failed, QC flags), plate heatmaps of the mean artifact area fraction and of
the flagged fields per well, the distributions of the classifier probability and of the QC scores with the
model's thresholds, the 12 worst fields as thumbnails with artifact outlines, failed images, a per-well table,
and the model and run details. Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no
global state).

One page for both kinds of plate run: the engine's (``artseg batch -m MODEL``) and a CellProfiler pipeline's
(``artseg batch --pipeline``, whose per-image table :mod:`.cpresults` reads as the same rows). A section whose
data a run lacks (a pipeline without the MaskArtifacts module measures no artifacts) is replaced by a sentence
saying why.
"""
from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from artseg_core.batch.cpresults import is_pipeline_run, read_pipeline_run
from artseg_core.batch.layout import (JOURNAL, LOG, PIPELINE_SETTINGS, PIPELINE_WORK, REPORT, REPORT_FILES, RESULTS,
                                      SETTINGS, WELLS)
from artseg_core.batch.tables import as_float, finalize, read_csv_rows, truthy, well_rows

__all__ = ["write_report", "plate_shape", "distribution_figure", "heatmap_figure", "REPORT", "REPORT_FILES"]

#: standard plate formats (rows, cols), smallest first
PLATE_FORMATS = [(2, 3), (3, 4), (4, 6), (6, 8), (8, 12), (16, 24), (32, 48)]
N_WORST = 12


def plate_shape(max_row: int, max_col: int) -> tuple[int, int]:
    """The grid a plate is drawn on: the smallest standard plate format holding row ``max_row`` and column
    ``max_col``, unless the imaged wells fill at most half of that format's rows or columns (a 2 x 6 plate is
    drawn 2 x 6, not as a 24-well plate with two empty rows); then exactly ``max_row`` x ``max_col``."""
    for r, c in PLATE_FORMATS:
        if max_row <= r and max_col <= c:
            if (max_row <= r // 2 and r > 2) or (max_col <= c // 2 and c > 3):
                return max_row, max_col
            return r, c
    return max_row, max_col


def _fig(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    from artseg_core.io.files import atomic_write

    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", bbox_inches="tight")
    return path


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "plate"


def _heatmap(wells: list[dict], value, title: str, label: str, path: Path, vmax: float | None = None,
             cmap: str = "magma", counts: bool = False) -> Path:
    return _save(heatmap_figure(wells, value, title, label, vmax=vmax, cmap=cmap, counts=counts), path)


def heatmap_figure(wells: list[dict], value, title: str, label: str, vmax: float | None = None,
                   cmap: str = "magma", counts: bool = False):
    """One value per well on the plate grid (:func:`plate_shape`); ``counts`` gives the colour bar integer
    ticks (numbers of fields)."""
    from artseg_core.batch.platenames import row_letters

    rows = [int(w["row"]) for w in wells]
    cols = [int(w["col"]) for w in wells]
    nr, nc = plate_shape(max(rows), max(cols))
    grid = np.full((nr, nc), np.nan)
    for w, r, c in zip(wells, rows, cols):
        grid[r - 1, c - 1] = value(w)
    fig = _fig(min(2.0 + 0.45 * nc, 16), min(1.5 + 0.45 * nr, 12))
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="#d9d9d9")
    finite = grid[np.isfinite(grid)]
    top = vmax if vmax is not None else (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cm, vmin=0, vmax=top, interpolation="nearest")
    step = 1 if nc <= 24 else 2
    ax.set_xticks(range(0, nc, step), [str(c + 1) for c in range(0, nc, step)], fontsize=7)
    ax.set_yticks(range(0, nr, step), [row_letters(r + 1) for r in range(0, nr, step)], fontsize=7)
    ax.tick_params(top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.set_title(title, fontsize=10)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label(label, fontsize=8)
    if counts:  # whole numbers of fields: integer ticks only
        from matplotlib.ticker import MaxNLocator

        cb.locator = MaxNLocator(integer=True, nbins=min(6, int(top) + 1))
        cb.update_ticks()
    if nr * nc <= 96:
        for r in range(nr):
            for c in range(nc):
                if np.isfinite(grid[r, c]):
                    v = grid[r, c]
                    txt = f"{v:.0f}" if float(v).is_integer() else f"{v:.3g}"
                    ax.text(c, r, txt, ha="center", va="center", fontsize=6,
                            color="white" if v < 0.6 * top else "black")
    return fig


def _distributions(rows: list[dict], settings: dict, path: Path) -> Path | None:
    fig = distribution_figure(rows, settings)
    return None if fig is None else _save(fig, path)


def distribution_figure(rows: list[dict], settings: dict):
    """The four score histograms (classifier, focus, illumination, saturation) with the model's thresholds.

    Each threshold lies inside its axis and is named in a legend under it; the focus axis (log) labels a few
    ticks only; a score that is the same for every field (e.g. no saturated pixel anywhere) is drawn as one bar
    with the sentence "all N fields = v". A score no field has (a pipeline that records no QC, a run where every
    image failed) gets no panel; None when no score has a value.
    """
    mt = settings.get("model_thresholds") or {}
    qt = settings.get("quality_thresholds") or {}
    panels = [("p_artifact", "classifier P(artifact)", [("flag", mt.get("classifier"))], False),
              ("focus", "focus score", [("focus_min", qt.get("focus_min"))], True),
              ("illumination", "illumination score", [("illumination_max", qt.get("illumination_max"))], False),
              ("saturation", "saturation score", [("saturation_max", qt.get("saturation_max"))], False)]
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    values = {}
    for key, _, _, logx in panels:
        v = np.array([as_float(r.get(key)) for r in rows if r.get("status") == "ok"], float)
        v = v[np.isfinite(v)]
        values[key] = v[v > 0] if logx else v
    panels = [p for p in panels if values[p[0]].size]
    if not panels:
        return None
    fig = _fig(3.0 * len(panels), 3.0)
    for i, (key, title, lines, logx) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        v = values[key]
        limits = [float(t) for _, t in lines if t is not None and math.isfinite(float(t)) and (not logx or t > 0)]
        if float(v.max()) > float(v.min()):
            if logx:
                bins = np.logspace(np.log10(v.min()), np.log10(v.max()), 30)
                ax.set_xscale("log")
            else:
                bins = 30
            ax.hist(v, bins=bins, color="#4c72b0")
        else:  # every field has the same value (e.g. no saturated pixel anywhere): say so
            width = max(abs(float(v[0])) * 0.05, 1e-3)
            ax.bar([float(v[0])], [v.size], width=width, color="#4c72b0")
            if logx:
                ax.set_xscale("log")
            ax.text(0.5, 0.55, f"all {v.size} fields = {float(v[0]):.3g}", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9)
        # the thresholds always lie inside the axis, with their names in a legend (never cut off at the edge)
        pts = list(v) + limits
        lo, hi = min(pts), max(pts)
        if logx:
            ax.set_xlim(lo / 1.3, hi * 1.3)
        else:
            pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 0.05)
            ax.set_xlim(lo - pad, hi + pad)
        colours = ("#c44e52", "#dd8452")
        for k, (name, t) in enumerate(lines):
            if t is not None and math.isfinite(float(t)) and (not logx or float(t) > 0):
                ax.axvline(float(t), color=colours[k % 2], ls="--", lw=1.2, label=f"{name} {float(t):.3g}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
        if logx:  # a few labelled decades (or 1-2-5 steps) only: minor labels overlapped
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=4))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("images" if i == 0 else "", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.subplots_adjust(wspace=0.3, bottom=0.3)
    return fig


def _thumbnail(row: dict, out: Path, path: Path, plane: int | None = None, size: int = 256) -> tuple[Path, str]:
    """Image (display-normalised) with artifact outlines in red; returns the PNG and a note."""
    from scipy import ndimage

    from artseg_core.imgproc.normalize import normalize
    from artseg_core.io.images import read_image
    from artseg_core.io.files import write_png

    img = read_image(row["path"], plane=plane)
    note = ""
    mask = np.zeros(img.shape, bool)
    mrel = row.get("mask") or ""
    if mrel and (out / mrel).is_file():
        mask = read_image(out / mrel, allow_constant=True) > 0
    else:
        note = " (no mask file written: outlines not shown)"
    step = max(1, int(math.ceil(max(img.shape) / size)))
    g = normalize(img)[::step, ::step]
    m = mask[::step, ::step] if mask.shape == img.shape else np.zeros(g.shape, bool)
    edge = m & ~ndimage.binary_erosion(m, iterations=1, border_value=0)
    edge = ndimage.binary_dilation(edge) if step < 4 else edge
    rgb = np.repeat((np.clip(g, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    rgb[edge] = (255, 32, 32)
    return write_png(path, rgb), note


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(v, nd=3) -> str:
    f = as_float(v)
    return "" if math.isnan(f) else f"{f:.{nd}f}"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1300px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.counts{display:flex;gap:12px;flex-wrap:wrap}.count{background:#f3f5f8;border-radius:6px;padding:8px 14px}
.count b{display:block;font-size:20px}.bad b{color:#b3261e}img{max-width:100%}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px}
figure{margin:0}figcaption{font-size:12px;color:#444}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}.muted{color:#666;font-size:12px}
td pre{margin:0;font-size:11px;white-space:pre-wrap;max-width:700px}summary{cursor:pointer;margin:4px 0}"""


@dataclass
class _Run:
    """What the page is drawn from: one plate run of either kind, as rows of ``results.csv``."""

    kind: str                      # "artseg" (the engine's plate run) or "pipeline" (artseg batch --pipeline)
    rows: list[dict]
    wells: list[dict]
    settings: dict
    n_plate: int
    links: list[tuple[str, str]]   # (href, what) of the run's tables and logs
    shards: list[dict] = field(default_factory=list)
    experiment: dict = field(default_factory=dict)
    no_table: str = ""             # why a pipeline run has no per-image rows
    table: str = RESULTS           # the table that has one row per image


def _load(out: Path, run: str | None) -> _Run:
    engine = ((out / RESULTS).is_file() and (out / WELLS).is_file()) or (out / JOURNAL).is_file()
    if run is None:
        run = "artseg" if engine or not is_pipeline_run(out) else "pipeline"
    if run == "pipeline":
        p = read_pipeline_run(out)
        links = [(t, "one row per image set" if t == p.image_table else "") for t in p.tables]
        links += [(f"{PIPELINE_WORK}/{s['key']}/cellprofiler.log", f"shard {s['key']}") for s in p.shards
                  if (out / PIPELINE_WORK / s["key"] / "cellprofiler.log").is_file()]
        no_table = "" if p.image_table else (
            "the pipeline exported no per-image table (ExportToSpreadsheet's Image.csv) into the output folder"
            if p.tables else "the run has no merged CellProfiler tables (no finished shards, or an export that is "
                             "not ExportToSpreadsheet)")
        return _Run("pipeline", p.rows, well_rows(p.rows), p.settings, p.n_image_sets or len(p.rows), links,
                    p.shards, p.experiment, no_table, p.image_table or "")
    if run != "artseg":
        raise ValueError(f"run must be 'artseg' or 'pipeline', got {run!r}")
    if not ((out / RESULTS).is_file() and (out / WELLS).is_file()):
        if not (out / JOURNAL).is_file():
            raise FileNotFoundError(f"{out}: not a plate run folder (no {RESULTS}, no {JOURNAL} and no "
                                    f"{PIPELINE_WORK}/{PIPELINE_SETTINGS})")
        finalize(out)
    rows = read_csv_rows(out / RESULTS)
    settings = json.loads((out / SETTINGS).read_text()) if (out / SETTINGS).is_file() else {}
    return _Run("artseg", rows, read_csv_rows(out / WELLS), settings, settings.get("n_images") or len(rows),
                [(RESULTS, "one row per image"), (WELLS, "one row per well"), (LOG, "log")])


def _has(rows: list[dict], *keys: str) -> bool:
    """Whether any processed row has a value in one of ``keys``."""
    return any(str(r.get(k, "")).strip() != "" for r in rows if r.get("status") == "ok" for k in keys)


def _why_no_scores(run: _Run) -> str:
    """Why a run has no artifact measurements, as the end of a sentence."""
    if run.no_table:
        return run.no_table
    if not any(r.get("status") == "ok" for r in run.rows):
        return "no image was processed successfully"
    if run.kind == "pipeline" and run.settings.get("maskartifacts", "") is None:
        return "the pipeline has no MaskArtifacts module, so it measured no artifacts"
    return "the per-image table has no MaskArtifacts measurements (MaskArtifacts_Probability, ...)"


def _wells_table(run: _Run, has_flag: bool, has_area: bool, has_qc: bool) -> str:
    """The per-well table: fields, failures, the artifact summary (when measured) and, for a pipeline run, the mean
    of each of its object counts per field."""
    counts = sorted({k for r in run.rows for k in (r.get("counts") or {})})
    per_well: dict[tuple[str, str], list[dict]] = {}
    for r in run.rows:
        if r.get("status") == "ok":
            per_well.setdefault((str(r.get("plate", "")), str(r.get("well", ""))), []).append(r)
    head = ["plate", "well", "fields", "failed"]
    head += ["flagged fields"] if has_flag else []
    head += ["mean artifact area %"] if has_area else []
    head += ["QC-flagged fields"] if has_qc else []
    head += [f"{c} per field" for c in counts]
    lines = ["<table class=\"wells\"><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for w in run.wells:
        cells = [w.get("plate"), w.get("well") or "-", w.get("fields"), w.get("failed")]
        cells += [w.get("flagged_fields")] if has_flag else []
        cells += [_fmt(as_float(w.get("mean_area_fraction")) * 100, 2)] if has_area else []
        cells += [w.get("qc_flagged_fields")] if has_qc else []
        ok = per_well.get((str(w.get("plate", "")), str(w.get("well", ""))), [])
        for c in counts:
            v = [as_float((r.get("counts") or {}).get(c)) for r in ok]
            v = [x for x in v if not math.isnan(x)]
            cells.append(f"{sum(v) / len(v):.1f}" if v else "")
        lines.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "".join(lines)


def write_report(out_dir, run: str | None = None) -> Path:
    """Write ``OUT/report.html`` for a plate run in ``out_dir`` (``artseg report OUT``).

    Two kinds of run folder: the engine's plate run (``artseg batch -m MODEL``: ``results.csv``, ``wells.csv`` and
    ``batch.json``, the two tables rebuilt from the journal when they are missing), and a CellProfiler pipeline
    run (``artseg batch --pipeline``: its merged per-image table and ``cp_shards/``, read by
    :func:`~artseg_core.batch.cpresults.read_pipeline_run`). A section whose data the run does not have (no
    MaskArtifacts measurements, no well positions) is left out with a sentence saying why. Writes the PNGs to
    ``OUT/report_files/`` and the page atomically.

    Parameters
    ----------
    out_dir : path-like
        The run folder.
    run : {None, "artseg", "pipeline"}
        The kind of run; None tells from the folder (the engine's run when the folder holds both).

    Returns
    -------
    pathlib.Path
        The report file.

    Raises
    ------
    FileNotFoundError
        ``out_dir`` holds no plate run (no journal, no results table and no pipeline run).
    """
    from artseg_core.io.files import write_text

    out = Path(out_dir)
    src = _load(out, run)
    rows, wells, settings, pipe = src.rows, src.wells, src.settings, src.kind == "pipeline"
    files = out / REPORT_FILES
    files.mkdir(exist_ok=True)
    for old in files.glob("*.png"):
        old.unlink()

    ok = [r for r in rows if r.get("status") == "ok"]
    failed = [r for r in rows if r.get("status") != "ok"]
    has_flag, has_area = _has(rows, "flagged"), _has(rows, "area_fraction")
    has_scores, has_qc = _has(rows, "p_artifact", "area_fraction"), _has(rows, "defocus", "bad_illumination",
                                                                           "saturated")
    flagged = [r for r in ok if truthy(r.get("flagged"))]
    qc = [r for r in ok if any(truthy(r.get(k)) for k in ("defocus", "bad_illumination", "saturated"))]
    n_plate = src.n_plate
    what = "image sets" if pipe else "images"
    plate_name = Path(str(settings.get("plate", out))).name
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ArtSeg plate report - "
             f"{_e(plate_name)}</title><style>{_CSS}</style></head><body>",
             "<h1>ArtSeg plate report</h1><div class=\"muted\">"
             + (f"CellProfiler pipeline {_e(Path(str(settings.get('pipeline') or '')).name)} (artseg batch "
                f"--pipeline) &middot; " if pipe else "")
             + f"plate input {_e(settings.get('plate', ''))} &middot; output {_e(out.resolve())}</div>",
             "<h2>Counts</h2><div class=\"counts\">"]
    counts = [(f"{what} in plate", n_plate, ""), ("processed", len(rows), "")]
    counts += [("flagged (artifacts)", len(flagged), "")] if has_flag else []
    counts += [("QC flagged", len(qc), "")] if has_qc else []
    counts += [("failed", len(failed), " bad" if failed else ""),
               ("not yet processed", max(0, int(n_plate) - len(rows)), "")]
    for label, n, cls in counts:
        parts.append(f"<div class=\"count{cls}\"><b id=\"count-{_slug(label)}\">{n}</b>{_e(label)}</div>")
    parts.append("</div>")
    if src.no_table:
        parts.append(f"<p class=\"muted\">No per-image results: {_e(src.no_table)}.</p>")

    # heatmaps, one pair per plate
    parts.append("<h2>Plate heatmaps</h2>")
    by_plate: dict[str, list[dict]] = {}
    for w in wells:
        if str(w.get("row", "")).isdigit() and str(w.get("col", "")).isdigit():
            by_plate.setdefault(w["plate"], []).append(w)
    if not by_plate:
        parts.append("<p class=\"muted\">No well positions in the "
                     + ("pipeline's metadata (Metadata_Well) or the " if pipe else "")
                     + "image names: no heatmap" + (" (use --name-regex)" if not pipe else "") + ".</p>")
    elif not (has_area or has_flag):
        parts.append(f"<p class=\"muted\">No artifact heatmaps: {_e(_why_no_scores(src))}. The wells are listed "
                     f"below.</p>")
    for k, (plate, ws) in enumerate(sorted(by_plate.items()) if (has_area or has_flag) else []):
        s = f"{k:02d}_{_slug(plate)}"
        imgs = []
        if has_area:
            a = _heatmap(ws, lambda w: as_float(w.get("mean_area_fraction")) * 100,
                         f"{plate}: mean artifact area (% of field)", "% of field area",
                         files / f"heatmap_area_{s}.png")
            imgs.append(f"<img class=\"heatmap\" src=\"{REPORT_FILES}/{a.name}\" alt=\"artifact area heatmap "
                        f"{_e(plate)}\">")
        if has_flag:
            f = _heatmap(ws, lambda w: as_float(w.get("flagged_fields")), f"{plate}: flagged fields per well",
                         "flagged fields", files / f"heatmap_flagged_{s}.png",
                         vmax=max(1.0, max(as_float(w.get("fields")) for w in ws)), cmap="viridis", counts=True)
            imgs.append(f"<img class=\"heatmap\" src=\"{REPORT_FILES}/{f.name}\" alt=\"flagged fields heatmap "
                        f"{_e(plate)}\">")
        parts.append(f"<div class=\"grid\" style=\"grid-template-columns:1fr 1fr\">{''.join(imgs)}</div>")

    parts.append("<h2>Score distributions and the model's thresholds</h2>")
    d = _distributions(rows, settings, files / "distributions.png")
    if d is None:
        parts.append(f"<p class=\"muted\">No score distributions: {_e(_why_no_scores(src))}.</p>")
    else:
        parts.append(f"<img src=\"{REPORT_FILES}/{d.name}\" alt=\"classifier and QC score distributions\">")
        if settings.get("model_thresholds") or settings.get("quality_thresholds"):
            parts.append("<p class=\"muted\">Dashed lines: the model's classifier flag threshold (a field at or "
                         "above it is flagged and segmented; below it the field is clean, with an empty mask) and "
                         "its QC thresholds (learned from clean training images); a field is QC-flagged when its "
                         "focus is below focus_min, or its illumination or saturation score is above the maximum."
                         "</p>")
        else:
            parts.append("<p class=\"muted\">No threshold lines: the run did not record the model's thresholds "
                         "(the model file was not found where the pipeline's MaskArtifacts module reads it when "
                         "the run started).</p>")

    parts.append(f"<h2>The {N_WORST} worst fields</h2>")
    ranked = sorted(ok, key=lambda r: (-as_float(r.get("area_fraction")) if not math.isnan(
        as_float(r.get("area_fraction"))) else 0, -as_float(r.get("p_artifact")) if not math.isnan(
        as_float(r.get("p_artifact"))) else 0))[:N_WORST]
    plane = (settings.get("options") or {}).get("plane")
    if ranked and has_scores:
        parts.append("<div class=\"grid\">")
        for i, r in enumerate(ranked):
            cap = (f"{_e(r.get('plate'))} {_e(r.get('well') or '')} field {_e(r.get('field') or '-')}: "
                   f"{as_float(r.get('area_fraction')) * 100:.2f}% artifact, P={_fmt(r.get('p_artifact'), 2)}")
            try:
                png, note = _thumbnail(r, out, files / f"worst_{i:02d}.png", plane=plane)
                parts.append(f"<figure><img class=\"thumb\" src=\"{REPORT_FILES}/{png.name}\" "
                             f"alt=\"{_e(r.get('image'))}\"><figcaption>{cap}{_e(note)}<br>"
                             f"<span class=\"muted\">{_e(r.get('image'))}</span></figcaption></figure>")
            except Exception as e:  # an image that went away since the run: say so, keep the report
                parts.append(f"<figure><figcaption>{cap}<br>thumbnail unavailable: {_e(e)}</figcaption></figure>")
        parts.append("</div>")
    else:
        parts.append(f"<p class=\"muted\">No worst fields: {_e(_why_no_scores(src))}.</p>")

    if failed:
        parts.append(f"<h2>Failed {what} ({len(failed)})</h2><table><tr><th>image</th><th>error</th></tr>")
        for r in failed[:100]:
            parts.append(f"<tr><td>{_e(r.get('image'))}</td><td>{_e(r.get('error'))}</td></tr>")
        parts.append("</table>" + (f"<p class=\"muted\">first 100 shown; all in {_e(src.table)}</p>"
                                   if len(failed) > 100 else ""))

    if wells:
        n_fields = sum(int(v) for v in (as_float(w.get("fields")) for w in wells) if not math.isnan(v))
        parts.append(f"<h2>Wells</h2><details{' open' if len(wells) <= 96 else ''}><summary>{len(wells)} wells, "
                     f"{n_fields} fields</summary>{_wells_table(src, has_flag, has_area, has_qc)}</details>")

    parts.append("<h2>Model and run</h2><table>")
    details: list[tuple[str, object]] = []
    if pipe:
        ma = settings.get("maskartifacts")
        details += [("pipeline", settings.get("pipeline")), ("pipeline sha256", settings.get("pipeline_sha256")),
                    ("CellProfiler", src.experiment.get("CellProfiler_Version")),
                    ("plugins folder", settings.get("plugins_directory")),
                    ("Default Input Folder", settings.get("input_dir")),
                    ("MaskArtifacts", f"image {ma.get('image')}, objects {ma.get('objects')}" if ma else
                     ("not in the pipeline" if "maskartifacts" in settings else None))]
    if not pipe or settings.get("model"):
        details += [("model", settings.get("model")), ("model sha256", settings.get("model_sha256")),
                    ("model profile", settings.get("model_profile")),
                    ("model thresholds", json.dumps(settings.get("model_thresholds", {}))),
                    ("QC thresholds", json.dumps({k: v for k, v in (settings.get("quality_thresholds") or {}).items()
                                                  if k.endswith(("_min", "_max"))}))]
    if not pipe:
        opts = settings.get("options") or {}
        details += [("options", ", ".join(f"{k}={v}" for k, v in opts.items())), ("channel", settings.get("channel"))]
    details += [("plate root", settings.get("plate_root")), ("ArtSeg", settings.get("artseg_version"))]
    for k, v in details:
        if not (pipe and v is None):
            parts.append(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>")
    parts.append("</table>")
    if settings.get("runs") or not pipe:
        parts.append(f"<table style=\"margin-top:8px\"><tr><th>run started</th><th>finished</th><th>backend</th>"
                     f"<th>{'image sets run' if pipe else 'processed'}</th><th>{'failed shards' if pipe else 'failed'}"
                     f"</th><th>{what}/s</th><th>host</th></tr>")
        for r in settings.get("runs", []):
            parts.append("<tr>" + "".join(f"<td>{_e(r.get(k, ''))}</td>" for k in
                                          ("started", "finished", "backend", "processed", "failed", "images_per_s",
                                           "host")) + "</tr>")
        parts.append("</table>")
    if src.shards:  # a failed shard's last lines of CellProfiler output say why
        tails = any(s.get("tail") for s in src.shards)
        parts.append("<table style=\"margin-top:8px\"><tr><th>shard (image sets)</th><th>status</th>"
                     "<th>exit code</th><th>seconds</th>" + ("<th>CellProfiler's last lines</th>" if tails else "")
                     + "</tr>")
        for s in src.shards:
            parts.append("<tr>" + "".join(f"<td>{_e(s.get(k, ''))}</td>" for k in
                                          ("key", "status", "returncode", "seconds"))
                         + (f"<td><pre>{_e(s.get('tail', ''))}</pre></td>" if tails else "") + "</tr>")
        parts.append("</table>")
    links = [(h, w) for h, w in src.links if (out / h).is_file()]
    if links:
        intro = "CellProfiler's tables (merged) and logs: " if pipe else "Tables and log: "
        parts.append("<p class=\"muted\">" + intro
                     + ", ".join(f"<a href=\"{_e(h)}\">{_e(h)}</a>" + (f" ({_e(w)})" if w else "")
                                 for h, w in links) + ".</p>")
    parts.append("</body></html>\n")
    return write_text(out / REPORT, "\n".join(parts))
