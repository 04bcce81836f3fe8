"""The ``artseg`` command line: one click group, thin commands over the engine."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from artseg_core._version import __version__


def _setup_logging(verbose: int, log_file: Path | None = None) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setLevel(logging.INFO)
        handlers.append(fh)
    logging.basicConfig(level=min(level, logging.INFO if log_file else level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)
    handlers[0].setLevel(level)


def _fail(msg: str, code: int = 2):
    click.echo(f"artseg: error: {msg}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="artseg")
def main():
    """ArtSeg: find and mask artifacts in brightfield microscopy images.

    Train from image-level labels (clean / artifact), then mask whole plates.
    """


# --------------------------------------------------------------------------- train
@main.command()
@click.argument("images", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with columns image,label (clean|artifact). Default: IMAGES/labels.csv or IMAGES/../labels.csv")
@click.option("--clean", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder of clean images.")
@click.option("--artifact", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of images with artifacts.")
@click.option("--masks", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Optional folder of pixel masks for some images (same file name stem, or _mask), or ImageJ ROI "
                   "sets (<stem>_rois.zip or .roi).")
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Model file to write (e.g. model.artseg).")
@click.option("--profile", type=click.Choice(["fast", "scorecam", "paper", "tiny", "mil"]), default="fast",
              show_default=True,
              help="fast: CPU networks, pseudo-masks from what the clean fields do not contain; scorecam: the same "
                   "networks with the paper's Score-CAM pseudo-masks; paper: the paper's networks (GPU); mil: the "
                   "multiple-instance route (top-k pooled logit map as saliency, ignore band).")
@click.option("--cam", "cam_mode", type=click.Choice(["exact", "paper", "fast"]), default=None,
              help="Score-CAM mode (default: the profile's).")
@click.option("--edge/--no-edge", "edge_refine", default=None, help="Edge-map refinement of the saliency.")
@click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 0.9))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoints; re-running with the same folder resumes an interrupted training.")
@click.option("--restart", is_flag=True, help="Discard the checkpoints in --work-dir and train from scratch.")
@click.option("--plane", type=int, default=None, help="Plane to read from multi-page TIFFs.")
@click.option("--epochs", type=int, default=None, help="Override the classifier epochs of the profile.")
@click.option("--unet-steps", type=int, default=None,
              help="U-Net training steps, exactly (default: the profile's, more for large training sets).")
@click.option("--synthetic-artifacts", "paste", type=click.FloatRange(0, 1), default=None,
              help="Share of the clean fields' U-Net training crops that get synthetic artifacts (strokes, blobs, "
                   "local blur, shading) with exact masks (default: the profile's, 0 = none).")
@click.option("--pixel-size", type=click.FloatRange(0, min_open=True), default=None,
              help="Pixel size of the training images in um, recorded in the model (default: from the images' "
                   "TIFF/OME metadata when present); prediction warns about images that differ by > 20%.")
@click.option("--unlabelled", type=click.Path(exists=True, path_type=Path), default=None,
              help="Folder of the plate's fields, labelled or not: the U-Net is first pretrained on them "
                   "(masked-region inpainting), then trained on the masks; or a file written by 'artseg pretrain'.")
@click.option("--second-opinion", is_flag=True,
              help="Record in the model that prediction asks a second opinion (every tool using the model then "
                   "does): an image the classifier calls clean is still flagged and segmented when its object "
                   "evidence finds an object unlike those of the held-out clean images. Catches artifact images "
                   "the classifier misses; costs about 0.5 s per 512 x 512 image on one core. Profile fast only.")
@click.option("-v", "--verbose", count=True)
def train(images, labels, clean, artifact, masks, out, profile, cam_mode, edge_refine, val_fraction, seed, device,
          work_dir, restart, plane, epochs, unet_steps, paste, pixel_size, unlabelled, second_opinion, verbose):
    """Train a model from image-level labels: IMAGES + labels.csv, or --clean DIR --artifact DIR.

    --clean DIR alone (no artifact images at all) trains a zero-label model: it learns what the clean fields look
    like and flags and masks whatever does not."""
    from artseg_core.io.labels import LabelFileError
    from artseg_core.training.pipeline import classifier_fit_text, train as train_fn

    _setup_logging(verbose, (work_dir / "train.log") if work_dir else None)
    if images is not None and labels is None:
        for cand in (images / "labels.csv", images.parent / "labels.csv"):
            if cand.is_file():
                labels = cand
                break
        else:
            if clean is None:
                _fail(f"{images}: no labels.csv found; pass --labels or --clean/--artifact")
    try:
        model = train_fn(images, labels, clean=clean, artifact=artifact, masks=masks, profile=profile,
                         val_fraction=val_fraction, seed=seed, device=device, work_dir=work_dir, progress=True,
                         cam_mode=cam_mode, edge_refine=edge_refine, plane=plane, cls_epochs=epochs,
                         unet_steps=unet_steps, restart=restart, pixel_size=pixel_size, unet_paste=paste,
                         unlabelled=unlabelled, second_opinion=second_opinion or None)
    except (LabelFileError, ValueError) as e:
        _fail(str(e))
    model.save(out)
    s = model.summary
    click.echo(f"wrote {out}")
    click.echo(f"  images: {s['n_images']} ({s['n_artifact']} artifact), validation: {s['n_val']}")
    if model.zero_label:
        click.echo(f"  zero-label model (clean fields only): {json.dumps(s['calibration'])}")
    else:
        click.echo(f"  validation classifier: {json.dumps(s['classifier']['val_metrics'])}")
        click.echo(f"  {classifier_fit_text(s['classifier'])}")
    click.echo(f"  thresholds: {json.dumps(model.thresholds)}")
    px = (f"{model.pixel_size:g} um (recorded in the model)" if model.pixel_size
          else "unknown (give --pixel-size to record it)")
    click.echo(f"  pixel size: {px}")
    if s.get("pretrain"):
        pre = s["pretrain"]
        how = "reused" if pre["reused"] else f"{pre['seconds']} s"
        click.echo(f"  U-Net pretrained on {pre['n_fields']} fields ({pre['source']}, {how})")
    click.echo(f"  time: {s['seconds']['total']} s")


# --------------------------------------------------------------------------- pretrain
@main.command()
@click.argument("folders", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (e.g. plate1.pretrain.pt); give it to 'artseg train --unlabelled'.")
@click.option("--profile", type=click.Choice(["fast", "scorecam", "paper", "tiny", "mil"]), default="fast",
              show_default=True, help="The profile of the models it will start (same U-Net).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Pretraining steps (default: the profile's).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--plane", type=int, default=None, help="Plane to read from multi-page TIFFs.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoint here; re-running with the same folder resumes.")
@click.option("-v", "--verbose", count=True)
def pretrain(folders, out, profile, steps, seed, device, plane, work_dir, verbose):
    """Pretrain the U-Net on all fields of a plate, labelled or not (FOLDERS, searched recursively: brightfield
    fields only, no folders of masks or other channels), once per plate.

    The network learns to restore hidden regions of the fields (masked-region inpainting); 'artseg train
    --unlabelled FILE' then starts from these weights."""
    from artseg_core.io.images import list_images
    from artseg_core.nets.accel import set_threads
    from artseg_core.nets.profiles import get_profile
    from artseg_core.predict.model import ArtifactModel, resolve_device
    from artseg_core.training.pretrain import pretrain_config, pretrain_unet, save_pretrained

    _setup_logging(verbose, (work_dir / "pretrain.log") if work_dir else None)
    paths = list_images(list(folders), recursive=True)
    if not paths:
        _fail(f"no images found in {', '.join(map(str, folders))}")
    prof = get_profile(profile, pretrain_steps=steps)
    set_threads()
    unet = ArtifactModel.build_unet(prof)
    cfg = pretrain_config(prof, seed)
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    try:
        info = pretrain_unet(unet, paths, cfg, device=resolve_device(device), progress=True, plane=plane,
                             checkpoint=(work_dir / "pretrain.ckpt") if work_dir else None)
    except ValueError as e:
        _fail(str(e))
    save_pretrained(out, unet, cfg, info)
    click.echo(f"wrote {out}")
    click.echo(f"  fields: {info['n_fields']} ({len(info['skipped'])} unreadable skipped), steps: {info['steps_run']}, "
               f"final inpainting loss: {info['final_loss']:.4f}, time: {info['seconds']} s")


# --------------------------------------------------------------------------- predict
def predict_options(f):
    opts = [
        click.option("--mask/--no-mask", default=True, show_default=True, help="Write <name>_mask.tif (0/255)."),
        click.option("--prob", is_flag=True, help="Write <name>_prob.tif (float32 probability)."),
        click.option("--roi", is_flag=True, help="Write <name>_rois.zip (ImageJ ROI set of artifact outlines)."),
        click.option("--cleaned", type=click.Choice(["median", "background"]), default=None,
                     help="Write <name>_cleaned.tif with artifact pixels filled."),
        click.option("--overlay", is_flag=True, help="Write <name>_overlay.png."),
        click.option("--objects", is_flag=True, help="Write <name>_objects.csv (one row per artifact)."),
        click.option("--plane", type=int, default=None, help="Plane to read from multi-page TIFFs."),
        click.option("--gate/--no-gate", default=True, show_default=True,
                     help="The classifier decides: images it calls clean are not segmented (empty mask). "
                          "--no-gate segments every image; a non-empty mask then flags the image."),
        click.option("--threshold", type=click.FloatRange(0, 1), default=None,
                     help="U-Net probability threshold (default: the model's calibrated value)."),
        click.option("--min-size", type=click.IntRange(0), default=None,
                     help="Minimum artifact area in pixels (default: calibrated)."),
        click.option("--min-size-um", type=click.FloatRange(0), default=None,
                     help="Minimum artifact area in um^2 (needs --pixel-size or TIFF metadata)."),
        click.option("--pixel-size", type=click.FloatRange(0, min_open=True), default=None,
                     help="Pixel size in um (default: from the file's metadata)."),
        click.option("--rescale", is_flag=True,
                     help="Resample each image to the model's pixel size for the networks and map the mask back "
                          "(needs both pixel sizes; without it a mismatch > 20% only warns)."),
        click.option("--second-opinion/--no-second-opinion", default=None,
                     help="With the gate: an image the classifier calls clean is still flagged and segmented when "
                          "the model's object evidence finds an object unlike those of the held-out clean images "
                          "(catches artifact images the classifier misses; about 0.5 s more per 512 x 512 image "
                          "on one core). Default: the model's setting (off unless trained with "
                          "--second-opinion). Needs a model of the default route that stores one."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def make_predict_options(mask, prob, roi, cleaned, overlay, objects, plane, gate, threshold, min_size, min_size_um,
                         pixel_size, rescale=False, second_opinion=None):
    from artseg_core.predict.files import PredictOptions

    return PredictOptions(mask=mask, prob=prob, roi=roi, cleaned=cleaned, overlay=overlay, objects=objects,
                          plane=plane, gate=gate, threshold=threshold, min_size=min_size, min_size_um=min_size_um,
                          pixel_size=pixel_size, rescale=rescale, second_opinion=second_opinion)


def _load(model_path, device):
    from artseg_core.predict.model import load_model
    from artseg_core.io.modelfile import ModelFileError

    try:
        return load_model(model_path, device=device)
    except (ModelFileError, RuntimeError, ValueError) as e:
        _fail(str(e))


def _warnings_to_log() -> None:
    """Python warnings become one log line ("artseg.warnings": category and message, no source lines), so that
    they reach the run's log file too."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        logging.getLogger("artseg.warnings").warning("%s: %s (%s:%s)", category.__name__, message,
                                                     Path(filename).name, lineno)

    warnings.showwarning = show


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-m", "--model", "model_path", required=True, type=click.Path(path_type=Path), help="Model file.")
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Results CSV (default OUT/artseg_results.csv).")
@click.option("--recursive", is_flag=True, help="Search folders recursively.")
@predict_options
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", count=True)
def predict(inputs, model_path, out, csv_path, recursive, device, quiet, verbose, **kw):
    """Mask artifacts in INPUTS (files, folders or globs; TIFF, PNG, JPEG).

    Every input gets its own output name (the CSV's 'output' column); files inside OUT are never inputs. A rerun
    into OUT replaces the previous run's outputs; two runs cannot use one OUT at once.

    Exit code 0 when every image succeeded, 1 when any failed or an input is missing (their CSV rows say why), 2 on
    usage errors (no input exists, as with 'artseg batch'; a bad model file; an output folder that is busy or
    cannot be written).
    """
    from artseg_core.io.lock import OutputFolderError
    from artseg_core.predict.files import collect_inputs, run_predict

    _setup_logging(verbose)
    _warnings_to_log()
    try:
        options = make_predict_options(**kw)
    except ValueError as e:
        _fail(str(e))
    paths, missing = collect_inputs(inputs, recursive=recursive, exclude=out)
    if not paths:
        _fail("; ".join(msg for _, msg in missing))
    model = _load(model_path, device)
    if options.second_opinion and model.second_opinion is None:
        from artseg_core.predict.model import NO_SECOND_OPINION

        _fail(f"{model_path}: {NO_SECOND_OPINION}")
    try:
        run = run_predict(model, paths, out, options, csv_path=csv_path, progress=not quiet, failed_inputs=missing)
    except OutputFolderError as e:
        _fail(str(e))
    for r in run.failed:
        click.echo(f"artseg: error: {r['error']}", err=True)
    for msg in run.problems:
        click.echo(f"artseg: error: {msg}", err=True)
    ok = len(run.rows) - len(run.failed)
    flagged = sum(1 for r in run.rows if r["status"] == "ok" and r["flagged"])
    click.echo(f"{ok} image(s) done, {flagged} flagged, {len(run.failed)} failed; results: {run.csv_path}")
    sys.exit(1 if run.failed or run.problems else 0)


# --------------------------------------------------------------------------- evaluate
@main.command()
@click.argument("predictions", type=click.Path(exists=True, path_type=Path))
@click.option("--truth", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of ground-truth masks (label or binary images, same stem as the images).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Ground-truth labels.csv (image,label) for image-level metrics.")
@click.option("--types", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Per-object artifact types (artifacts.csv from the phantom generator) for per-type metrics.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write JSON here.")
def evaluate(predictions, truth, labels, types, json_path):
    """Compare predictions (an `artseg predict` output folder) with ground truth; print a metrics table."""
    from artseg_core.evaluation.evaluate import evaluate_folder, format_table

    try:
        report = evaluate_folder(predictions, truth, labels_csv=labels, types_csv=types)
    except (ValueError, OSError) as e:
        _fail(str(e))
    click.echo(format_table(report))
    if json_path:
        from artseg_core.io.files import write_text

        write_text(json_path, json.dumps(report, indent=2))
        click.echo(f"wrote {json_path}")


# --------------------------------------------------------------------------- demo
@main.command()
@click.option("-o", "--out", "out", default=Path("demo_out"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True)
@click.option("--quick", is_flag=True, help="A smaller plate and the tiny profile (about a minute).")
def demo(out, seed, quick):
    """Generate a phantom plate, train the fast profile, predict, evaluate and write an HTML page."""
    from artseg_core.cli.demo import run_demo

    _setup_logging(0, out / "demo.log")
    page = run_demo(out, seed=seed, quick=quick)
    click.echo(f"\nDone. Open {page} in a browser (results, metrics and overlays are in {out}/).")


# --------------------------------------------------------------------------- phantoms
@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--rows", default=2, show_default=True)
@click.option("--cols", default=3, show_default=True)
@click.option("--fields", default=2, show_default=True)
@click.option("--prevalence", default=0.5, show_default=True, type=click.FloatRange(0, 1))
@click.option("--size", default=512, show_default=True, help="Image side in pixels.")
@click.option("--bit-depth", type=click.Choice(["8", "16"]), default="16", show_default=True)
@click.option("--seed", default=0, show_default=True)
def phantoms(out, rows, cols, fields, prevalence, size, bit_depth, seed):
    """Write a synthetic phantom plate with exact ground truth (images, nuclei, masks, labels.csv)."""
    from artseg_core.data.phantoms import make_plate

    p = make_plate(out, rows=rows, cols=cols, fields=fields, prevalence=prevalence, seed=seed, shape=(size, size),
                   bit_depth=int(bit_depth))
    click.echo(f"wrote {rows * cols * fields} fields to {out} (labels: {p})")


@main.command()
@click.argument("model_path", type=click.Path(path_type=Path))
def info(model_path):
    """Show a model file's configuration, thresholds and training summary."""
    from artseg_core.io.modelfile import ModelFileError, load_model_file

    try:
        manifest, arrays = load_model_file(model_path)
    except ModelFileError as e:
        _fail(str(e))
    manifest["n_arrays"] = len(arrays)
    manifest.setdefault("pixel_size_um", None)  # models written before ArtSeg recorded it
    click.echo(json.dumps(manifest, indent=2))


# --------------------------------------------------------------------------- batch, report (artseg_core/batch)
from artseg_core.cli.batch import register as _register_batch  # noqa: E402

_register_batch(main, sys.modules[__name__])

# --------------------------------------------------------------------------- export (artseg_core/export)
from artseg_core.cli.export import register as _register_export  # noqa: E402

_register_export(main, sys.modules[__name__])

# --------------------------------------------------------------------------- label (artseg_core/label)
from artseg_core.cli.label import register as _register_label  # noqa: E402

_register_label(main, sys.modules[__name__])


# --------------------------------------------------------------------------- fiji-install
@main.command("fiji-install")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--artseg-command", default=None,
              help="Command ImageJ runs for the engine (default: this environment's artseg, absolute path).")
def fiji_install(target, artseg_command):
    """Install Plugins > ArtSeg > Mask Artifacts into a Fiji.app or ImageJ 1.x folder, or for a distribution's
    ImageJ (Debian: /usr/share/java/ij.jar) into ~/.imagej/plugins (README, "ImageJ and Fiji")."""
    from artseg_core.bridges.fiji_install import FijiInstallError, install

    try:
        written = install(target, artseg_command=artseg_command)
    except FijiInstallError as e:
        _fail(str(e))
    for p in written:
        click.echo(f"wrote {p}")
    from artseg_core.bridges.fiji_install import user_imagej_dir

    if written and written[0].is_relative_to(user_imagej_dir()) and not Path(target).expanduser().resolve() \
            .is_relative_to(user_imagej_dir().resolve()):
        click.echo(f"{target} has no plugins folder of its own: installed for you into {user_imagej_dir()}/plugins, "
                   f"which Debian's 'imagej' launcher reads (with plain java: java -jar ij.jar -ijpath "
                   f"{user_imagej_dir()}).")
    click.echo("Restart ImageJ/Fiji: the command is Plugins > ArtSeg > Mask Artifacts.")


# --------------------------------------------------------------------------- cellprofiler-install
@main.command("cellprofiler-install")
@click.argument("plugins_dir", type=click.Path(path_type=Path))
@click.option("--pipelines", "pipelines_dir", type=click.Path(path_type=Path), default=None,
              help="Also copy the example .cppipe pipelines into this folder.")
def cellprofiler_install(plugins_dir, pipelines_dir):
    """Put the MaskArtifacts module into a CellProfiler plugins folder (README, "CellProfiler")."""
    from artseg_core.bridges.cellprofiler_install import CellProfilerInstallError, install

    try:
        written = install(plugins_dir, pipelines_dir)
    except CellProfilerInstallError as e:
        _fail(str(e))
    for p in written:
        click.echo(f"wrote {p}")
    click.echo(f"In CellProfiler set File > Preferences > CellProfiler plugins directory to {Path(plugins_dir)} "
               f"(headless: cellprofiler --plugins-directory {Path(plugins_dir)}), then restart it; the module is "
               "Image Processing > MaskArtifacts. CellProfiler must run in this Python environment.")


if __name__ == "__main__":  # pragma: no cover
    main()
