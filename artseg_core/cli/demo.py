"""``artseg demo``: a phantom plate, the fast profile trained on it, prediction and evaluation on a held-apart plate,
and an HTML page with overlays (predicted outlines in red, true outlines in green)."""
from __future__ import annotations

import html
import json
import shlex
import shutil
import time
from pathlib import Path

import numpy as np

from artseg_core.io.images import read_image
from artseg_core.io.files import write_png, write_text


def _composite(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Grey image with the predicted mask outline in red and the true outline in green."""
    from skimage.segmentation import find_boundaries

    from artseg_core.imgproc.normalize import normalize
    from artseg_core.io.outputs import overlay_rgb

    rgb = overlay_rgb(image, pred).copy() if pred.any() else np.repeat(
        (normalize(image) * 255).astype(np.uint8)[..., None], 3, axis=2)
    tb = find_boundaries(truth > 0, mode="outer")
    rgb[tb] = (40, 220, 40)
    return rgb


#: the source checkout's folders with the CellProfiler pipelines and the plugin (absent in an installed wheel)
_SOURCE = Path(__file__).resolve().parents[2]
CP_PIPELINES = ("mask_artifacts_nuclei", "flag_artifact_images", "intensity_outside_artifacts")


def _q(path) -> str:
    return shlex.quote(str(path))


def cellprofiler_folder(out, plate, model_path, progress: bool = False) -> tuple[Path, list[str]]:
    """A folder CellProfiler can read, plus the commands that run each shipped pipeline on it.

    Parameters
    ----------
    out : path-like
        The demo folder; ``out/cellprofiler/input`` receives both channels of ``plate`` (``*_w1.tif``
        brightfield, ``*_w2.tif`` nuclei) and the model as ``model.artseg``: the layout the pipelines expect as
        their Default Input Folder (``-i``). ``out/cellprofiler/artseg`` receives an ``artseg batch`` run of the
        same folder with ``loaddata.csv``, for the pipeline that needs no plugin.
    plate : path-like
        A phantom plate (``images/`` and ``nuclei/``).
    model_path : path-like
        The model file.

    Returns
    -------
    (Path, list of str)
        The input folder and one shell command per pipeline (results go to ``out/cellprofiler/results/<name>``).
    """
    from artseg_core.batch.loaddata import write_loaddata
    from artseg_core.batch.runner import run_batch

    out, plate = Path(out), Path(plate)
    root = out / "cellprofiler"
    inp = root / "input"
    inp.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "nuclei"):
        for f in sorted((plate / sub).glob("*.tif")):
            shutil.copy2(f, inp / f.name)
    shutil.copy2(model_path, inp / "model.artseg")
    run = root / "artseg"
    # the demo's own batch folder, from an earlier demo's model: the batch runner rightly refuses to mix results
    # of two models, so a rerun of the demo replaces it
    shutil.rmtree(run, ignore_errors=True)
    s = run_batch(inp, inp / "model.artseg", run, channel="1", progress=progress, report=False)
    if s.exit_code != 0:
        raise RuntimeError(f"artseg batch on {inp} failed (exit {s.exit_code}); see {run / 'batch.log'}")
    write_loaddata(run, inp, channel="1", names={"Brightfield": "1", "Nuclei": "2"})
    pipelines, plugins = _SOURCE / "pipelines", _SOURCE / "plugins"
    if not pipelines.is_dir():  # installed from a wheel: the pipelines live in the source checkout
        pipelines, plugins = Path("pipelines"), Path("plugins")
    results = root / "results"
    commands = [f"cellprofiler -c -r -p {_q(pipelines / (name + '.cppipe'))} --plugins-directory {_q(plugins)} "
                f"-i {_q(inp)} -o {_q(results / name)}" for name in CP_PIPELINES]
    commands.append(f"cellprofiler -c -r -p {_q(pipelines / 'loaddata_mask_nuclei.cppipe')} -i {_q(run)} "
                    f"-o {_q(results / 'loaddata_mask_nuclei')}")
    return inp, commands


def _cell(v, nd: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return html.escape(str(v if v is not None else "-"))
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def metrics_tables(report: dict) -> str:
    """The evaluation report as HTML tables: image level, pixel level, object level and per artifact kind."""
    parts = [f"<p>{int(report.get('n_images', 0))} held-apart fields evaluated.</p>"]
    im = report.get("image")
    if im:
        parts.append("<h3>Is the field contaminated? (image level)</h3>" + _table(
            ["precision", "recall", "F1", "ROC AUC"],
            [[im.get("precision"), im.get("recall"), im.get("f1"), im.get("roc_auc")]], "metrics"))
    rows = []
    for key, label in (("pixel", "all fields"), ("pixel_artifact_images", "fields with artifacts")):
        px = report.get(key) or {}
        if px:
            rows.append([label] + [px.get("mean_" + k) for k in ("iou", "dice", "precision", "recall")]
                        + [px.get("pooled_iou")])
    if rows:
        parts.append("<h3>Which pixels? (pixel level, mean over fields)</h3>" + _table(
            ["fields", "IoU", "Dice", "precision", "recall", "pooled IoU"], rows, "metrics"))
    ob = report.get("object") or {}
    if ob:
        parts.append("<h3>Which objects? (IoU &ge; 0.5 counts as found)</h3>" + _table(
            ["true positives", "false positives", "missed", "precision", "recall", "F1"],
            [[ob.get("tp"), ob.get("fp"), ob.get("fn"), ob.get("precision"), ob.get("recall"), ob.get("f1")]],
            "metrics"))
    pt = report.get("per_type") or {}
    if pt:
        parts.append("<h3>Per artifact kind</h3>" + _table(
            ["kind", "objects", "pixel recall", "detected (\u2265 50 % covered)", "local IoU"],
            [[k, d["objects"], d["pixel_recall"], d["detected_fraction"], d["mean_local_iou"]]
             for k, d in pt.items()], "metrics"))
    return "".join(parts)


def training_table(summary: dict, seconds: dict) -> str:
    """The training summary as a readable two-column table (no raw JSON)."""
    from artseg_core.training.pipeline import classifier_fit_text

    cal = summary.get("calibration") or {}
    cls = summary.get("classifier") or {}
    cam = summary.get("scorecam") or {}
    vm = cls.get("val_metrics") or {}
    rows = [
        ["profile", summary.get("profile", "")],
        ["training images", f"{summary.get('n_images', '?')} ({summary.get('n_artifact', '?')} with artifacts, "
                            f"{summary.get('n_clean', '?')} clean); {summary.get('n_train', '?')} to train, "
                            f"{summary.get('n_val', '?')} to validate; pixel masks used: {summary.get('n_masks', 0)}"],
        ["classifier", f"{cls.get('epochs_run', '?')} epochs, kept: "
                       f"{cls.get('kept', 'epoch ' + str(cls.get('best_epoch', '?')))}; validation "
                       + ", ".join(f"{k} {v:.3f}" for k, v in vm.items() if isinstance(v, float))],
        ["classifier fit", classifier_fit_text(cls)],
        (["pseudo-masks from the clean fields",
          f"evidence map threshold {cam.get('threshold', float('nan')):.3f} ({cam.get('threshold_source', '')}); "
          f"candidate objects kept above {_cell(cam.get('object_threshold'))} "
          f"{'(logit) ' if cam.get('object_threshold_scale') == 'logit' else ''}"
          f"({cam.get('object_threshold_source', '')})"] if cam.get("source") == "evidence" else
         ["Score-CAM pseudo-masks", f"mode {cam.get('mode', '?')}, threshold {cam.get('threshold', float('nan')):.3f} "
                                    f"({cam.get('threshold_source', '')})"]),
        ["U-Net", f"{(summary.get('unet') or {}).get('steps_run', '?')} steps"],
        ["calibrated thresholds",
         f"flag an image at P(artifact) \u2265 {cal.get('classifier_threshold', float('nan')):.3f}; pixel "
         f"probability \u2265 {cal.get('unet_threshold', float('nan')):.2f}; objects \u2265 {cal.get('min_size', '?')} "
         f"px ({cal.get('reference', '')})"],
        ["time", ", ".join(f"{k} {v} s" for k, v in seconds.items())],
    ]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="summary">{body}</table>'


def field_score(pred: np.ndarray, truth: np.ndarray) -> str:
    """A per-field score that means something for clean fields too: IoU where the truth has artifacts, the
    false-positive area (% of the field) where it has none."""
    t = np.asarray(truth) > 0
    p = np.asarray(pred) > 0
    if not t.any():
        return "clean: no false positive" if not p.any() else f"clean: false positive {100 * p.mean():.2f} % of field"
    return f"IoU {float((p & t).sum() / (p | t).sum()):.2f}"


_PAGE_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1250px;color:#222}
figure{display:inline-block;margin:6px;font-size:12px;vertical-align:top;width:256px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 14px}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left}table.metrics td{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f5f8}
table.summary th{width:220px}h3{font-size:15px;margin:16px 0 4px}"""


def write_demo_page(out: Path, report: dict, summary: dict, items: list[dict], seconds: dict) -> Path:
    """Write ``out/index.html``: metrics as tables, the training summary as a table and a grid of overlays
    with a per-field score (IoU, or the false-positive area on clean fields)."""
    rows = []
    for it in items:
        rows.append(
            f'<figure><img src="{html.escape(it["png"])}" width="256" height="256" alt="{html.escape(it["name"])}">'
            f'<figcaption>{html.escape(it["name"])}<br>truth: {html.escape(it["truth"])}<br>'
            f'P(artifact) {it["p"]:.2f}{" (flagged)" if it["flagged"] else ""}<br>'
            f'{html.escape(it["score"])}</figcaption></figure>')
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ArtSeg demo</title>
<style>{_PAGE_CSS}</style></head><body>
<h1>ArtSeg demo</h1>
<p>A synthetic brightfield plate with exact ground truth was generated, an ArtSeg model (profile
<b>{html.escape(str(summary.get('profile', '')))}</b>) was trained from image-level labels only, and a held-apart
plate was masked. <span style="color:#c00">Red</span>: predicted artifact outlines;
<span style="color:#080">green</span>: true outlines.</p>
<h2>Metrics on the held-apart plate</h2>{metrics_tables(report)}
<h2>Training</h2>{training_table(summary, seconds)}
<h2>Fields</h2>{''.join(rows)}
</body></html>"""
    return write_text(out / "index.html", page)


def run_demo(out, seed: int = 0, quick: bool = False, progress: bool = True) -> Path:
    """Run the whole demo into ``out``; return the HTML page's path."""
    from artseg_core.evaluation.evaluate import evaluate_folder, format_table
    from artseg_core.io.images import list_images
    from artseg_core.predict.model import load_model
    from artseg_core.data.phantoms import make_plate
    from artseg_core.predict.files import PredictOptions, predict_files
    from artseg_core.training.pipeline import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    size = 256 if quick else 512
    tr_shape = dict(rows=4, cols=6, fields=2) if quick else dict(rows=4, cols=10, fields=5)
    te_shape = dict(rows=2, cols=3, fields=2) if quick else dict(rows=2, cols=6, fields=2)
    print(f"[1/4] generating phantom plates in {out} ...", flush=True)
    train_plate, test_plate = out / "plate_train", out / "plate_test"
    make_plate(train_plate, prevalence=0.5, seed=seed, shape=(size, size), plate="train", **tr_shape)
    make_plate(test_plate, prevalence=0.5, seed=seed + 1000, shape=(size, size), plate="test", **te_shape)
    t1 = time.perf_counter()
    profile = "tiny" if quick else "fast"
    print(f"[2/4] training the '{profile}' profile from image-level labels ...", flush=True)
    # the plates were just written anew (new file times), so the work folder of an earlier, interrupted demo can
    # never match them: start the training afresh rather than stop with a work-folder error
    model = train(train_plate / "images", train_plate / "labels.csv", profile=profile, seed=seed,
                  work_dir=out / "train_work", progress=progress, restart=True)
    model_path = model.save(out / "model.artseg")
    t2 = time.perf_counter()
    print(f"[3/4] predicting the held-apart plate -> {out / 'predictions'} ...", flush=True)
    model = load_model(model_path)
    pred_dir = out / "predictions"
    predict_files(model, list_images([test_plate / "images"]), pred_dir,
                  PredictOptions(mask=True, prob=True, roi=True, overlay=True, gate=True), progress=progress)
    t3 = time.perf_counter()
    print("[4/4] evaluating ...", flush=True)
    report = evaluate_folder(pred_dir, test_plate / "masks", labels_csv=test_plate / "labels.csv",
                             types_csv=test_plate / "artifacts.csv")
    write_text(out / "metrics.json", json.dumps(report, indent=2))
    print(format_table(report))
    labels = {}
    import csv

    with open(test_plate / "labels.csv") as fh:
        for r in csv.DictReader(fh):
            labels[Path(r["image"]).stem] = r["label"]
    results = {}
    with open(pred_dir / "artseg_results.csv") as fh:
        for r in csv.DictReader(fh):
            results[Path(r["image"]).stem] = r
    items = []
    (out / "figures").mkdir(exist_ok=True)
    for name in sorted(results):
        img = read_image(test_plate / "images" / f"{name}.tif")
        pred = read_image(pred_dir / f"{name}_mask.tif", allow_constant=True) > 0
        truth = read_image(test_plate / "masks" / f"{name}.tif", allow_constant=True)
        png = out / "figures" / f"{name}.png"
        write_png(png, _composite(img, pred, truth))
        items.append({"name": name, "png": f"figures/{name}.png", "truth": labels.get(name, "?"),
                      "p": float(results[name]["p_artifact"] or 0), "flagged": results[name]["flagged"] == "True",
                      "score": field_score(pred, truth)})
    seconds = {"phantoms": round(t1 - t0, 1), "train": round(t2 - t1, 1), "predict": round(t3 - t2, 1),
               "total": round(time.perf_counter() - t0, 1)}
    summary = {"profile": profile, **model.summary}
    page = write_demo_page(out, report, summary, items, seconds)
    print(f"time: {seconds}")
    print(f"CellProfiler: {out / 'cellprofiler' / 'input'} holds both channels and model.artseg ...", flush=True)
    inp, commands = cellprofiler_folder(out, test_plate, model_path)
    print("run each pipeline on it with (the last one needs no plugin; it reads "
          f"{out / 'cellprofiler' / 'artseg' / 'loaddata.csv'}):")
    for c in commands:
        print(f"  {c}")
    return page
