"""Static HTML plate report (``OUT/report.html`` + PNGs in ``OUT/report_files/``); no server, no scripts.

Contents: counts (images, flagged, failed, QC flags), plate heatmaps of the mean artifact area fraction and of
the flagged fields per well, the distributions of the classifier probability and of the QC scores with the
model's thresholds, the 12 worst fields as thumbnails with artifact outlines, failed images, and the model and
run details. Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state).
"""
from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np

from artseg_core.batch.layout import JOURNAL, REPORT, REPORT_FILES, RESULTS, SETTINGS, WELLS
from artseg_core.batch.tables import as_float, finalize, read_csv_rows, truthy

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


def _distributions(rows: list[dict], settings: dict, path: Path) -> Path:
    return _save(distribution_figure(rows, settings), path)


def distribution_figure(rows: list[dict], settings: dict):
    """The four score histograms (classifier, focus, illumination, saturation) with the model's thresholds.

    Each threshold lies inside its axis and is named in a legend under it; the focus axis (log) labels a few
    ticks only; a score that is the same for every field (e.g. no saturated pixel anywhere) is drawn as one bar
    with the sentence "all N fields = v".
    """
    mt = settings.get("model_thresholds") or {}
    qt = settings.get("quality_thresholds") or {}
    panels = [("p_artifact", "classifier P(artifact)", [("flag", mt.get("classifier"))], False),
              ("focus", "focus score", [("focus_min", qt.get("focus_min"))], True),
              ("illumination", "illumination score", [("illumination_max", qt.get("illumination_max"))], False),
              ("saturation", "saturation score", [("saturation_max", qt.get("saturation_max"))], False)]
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = _fig(12, 3.0)
    for i, (key, title, lines, logx) in enumerate(panels):
        ax = fig.add_subplot(1, 4, i + 1)
        v = np.array([as_float(r.get(key)) for r in rows if r.get("status") == "ok"], float)
        v = v[np.isfinite(v)]
        if logx:
            v = v[v > 0]
        limits = [float(t) for _, t in lines if t is not None and math.isfinite(float(t)) and (not logx or t > 0)]
        if v.size and float(v.max()) > float(v.min()):
            if logx:
                bins = np.logspace(np.log10(v.min()), np.log10(v.max()), 30)
                ax.set_xscale("log")
            else:
                bins = 30
            ax.hist(v, bins=bins, color="#4c72b0")
        elif v.size:  # every field has the same value (e.g. no saturated pixel anywhere): say so
            width = max(abs(float(v[0])) * 0.05, 1e-3)
            ax.bar([float(v[0])], [v.size], width=width, color="#4c72b0")
            if logx:
                ax.set_xscale("log")
            ax.text(0.5, 0.55, f"all {v.size} fields = {float(v[0]):.3g}", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        # the thresholds always lie inside the axis, with their names in a legend (never cut off at the edge)
        if v.size or limits:
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
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}.muted{color:#666;font-size:12px}"""


def write_report(out_dir) -> Path:
    """Write ``OUT/report.html`` for a plate run in ``out_dir`` (``artseg report OUT``).

    Reads ``results.csv``, ``wells.csv`` and ``batch.json`` (rebuilding the two tables from the journal when
    they are missing); writes the PNGs to ``OUT/report_files/`` and the page atomically.

    Returns
    -------
    pathlib.Path
        The report file.

    Raises
    ------
    FileNotFoundError
        ``out_dir`` holds no plate run (no journal and no results table).
    """
    from artseg_core.io.files import write_text

    out = Path(out_dir)
    if not (out / RESULTS).is_file() or not (out / WELLS).is_file():
        if not (out / JOURNAL).is_file():
            raise FileNotFoundError(f"{out}: not a plate run folder (no {RESULTS} and no {JOURNAL})")
        finalize(out)
    rows = read_csv_rows(out / RESULTS)
    wells = read_csv_rows(out / WELLS)
    settings = json.loads((out / SETTINGS).read_text()) if (out / SETTINGS).is_file() else {}
    files = out / REPORT_FILES
    files.mkdir(exist_ok=True)
    for old in files.glob("*.png"):
        old.unlink()

    ok = [r for r in rows if r.get("status") == "ok"]
    failed = [r for r in rows if r.get("status") != "ok"]
    flagged = [r for r in ok if truthy(r.get("flagged"))]
    qc = [r for r in ok if any(truthy(r.get(k)) for k in ("defocus", "bad_illumination", "saturated"))]
    n_plate = settings.get("n_images") or len(rows)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ArtSeg plate report - "
             f"{_e(Path(str(settings.get('plate', out))).name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>ArtSeg plate report</h1><div class=\"muted\">plate input {_e(settings.get('plate', ''))}"
             f" &middot; output {_e(out.resolve())}</div>",
             "<h2>Counts</h2><div class=\"counts\">"]
    for label, n, cls in (("images in plate", n_plate, ""), ("processed", len(rows), ""),
                          ("flagged (artifacts)", len(flagged), ""), ("QC flagged", len(qc), ""),
                          ("failed", len(failed), " bad" if failed else ""),
                          ("not yet processed", max(0, int(n_plate) - len(rows)), "")):
        parts.append(f"<div class=\"count{cls}\"><b id=\"count-{_slug(label)}\">{n}</b>{_e(label)}</div>")
    parts.append("</div>")

    # heatmaps, one pair per plate
    parts.append("<h2>Plate heatmaps</h2>")
    by_plate: dict[str, list[dict]] = {}
    for w in wells:
        if str(w.get("row", "")).isdigit() and str(w.get("col", "")).isdigit():
            by_plate.setdefault(w["plate"], []).append(w)
    if not by_plate:
        parts.append("<p class=\"muted\">No well positions in the image names: no heatmap (use --name-regex).</p>")
    for k, (plate, ws) in enumerate(sorted(by_plate.items())):
        s = f"{k:02d}_{_slug(plate)}"
        a = _heatmap(ws, lambda w: as_float(w.get("mean_area_fraction")) * 100,
                     f"{plate}: mean artifact area (% of field)", "% of field area", files / f"heatmap_area_{s}.png")
        f = _heatmap(ws, lambda w: as_float(w.get("flagged_fields")), f"{plate}: flagged fields per well",
                     "flagged fields", files / f"heatmap_flagged_{s}.png",
                     vmax=max(1.0, max(as_float(w.get("fields")) for w in ws)), cmap="viridis", counts=True)
        parts.append(f"<div class=\"grid\" style=\"grid-template-columns:1fr 1fr\"><img class=\"heatmap\" "
                     f"src=\"{REPORT_FILES}/{a.name}\" alt=\"artifact area heatmap {_e(plate)}\">"
                     f"<img class=\"heatmap\" src=\"{REPORT_FILES}/{f.name}\" alt=\"flagged fields heatmap "
                     f"{_e(plate)}\"></div>")

    parts.append("<h2>Score distributions and the model's thresholds</h2>")
    d = _distributions(rows, settings, files / "distributions.png")
    parts.append(f"<img src=\"{REPORT_FILES}/{d.name}\" alt=\"classifier and QC score distributions\">")
    parts.append("<p class=\"muted\">Dashed lines: the model's classifier flag threshold (a field at or above it is "
                 "flagged and segmented; below it the field is clean, with an empty mask) and its QC thresholds "
                 "(learned from clean training images); a field is QC-flagged when its focus is below "
                 "focus_min, or its illumination or saturation score is above the maximum.</p>")

    parts.append(f"<h2>The {N_WORST} worst fields</h2>")
    ranked = sorted(ok, key=lambda r: (-as_float(r.get("area_fraction")) if not math.isnan(
        as_float(r.get("area_fraction"))) else 0, -as_float(r.get("p_artifact")) if not math.isnan(
        as_float(r.get("p_artifact"))) else 0))[:N_WORST]
    plane = (settings.get("options") or {}).get("plane")
    if ranked:
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
        parts.append("<p class=\"muted\">No processed fields.</p>")

    if failed:
        parts.append(f"<h2>Failed images ({len(failed)})</h2><table><tr><th>image</th><th>error</th></tr>")
        for r in failed[:100]:
            parts.append(f"<tr><td>{_e(r.get('image'))}</td><td>{_e(r.get('error'))}</td></tr>")
        parts.append("</table>" + ("<p class=\"muted\">first 100 shown; all in results.csv</p>"
                                   if len(failed) > 100 else ""))

    parts.append("<h2>Model and run</h2><table>")
    opts = settings.get("options") or {}
    for k, v in (("model", settings.get("model")), ("model sha256", settings.get("model_sha256")),
                 ("model profile", settings.get("model_profile")),
                 ("model thresholds", json.dumps(settings.get("model_thresholds", {}))),
                 ("QC thresholds", json.dumps({k: v for k, v in (settings.get("quality_thresholds") or {}).items()
                                               if k.endswith(("_min", "_max"))})),
                 ("options", ", ".join(f"{k}={v}" for k, v in opts.items())),
                 ("channel", settings.get("channel")), ("plate root", settings.get("plate_root")),
                 ("ArtSeg", settings.get("artseg_version"))):
        parts.append(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>")
    parts.append("</table><table style=\"margin-top:8px\"><tr><th>run started</th><th>finished</th><th>backend</th>"
                 "<th>processed</th><th>failed</th><th>images/s</th><th>host</th></tr>")
    for run in settings.get("runs", []):
        parts.append("<tr>" + "".join(f"<td>{_e(run.get(k, ''))}</td>" for k in
                                      ("started", "finished", "backend", "processed", "failed", "images_per_s",
                                       "host")) + "</tr>")
    parts.append("</table><p class=\"muted\">Tables: <a href=\"results.csv\">results.csv</a> (one row per image), "
                 "<a href=\"wells.csv\">wells.csv</a> (one row per well); log: <a href=\"batch.log\">batch.log"
                 "</a>.</p></body></html>\n")
    return write_text(out / REPORT, "\n".join(parts))
