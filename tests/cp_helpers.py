"""Helpers for the CellProfiler tests: locate CellProfiler and Java, run pipelines, read the exported CSVs.

Run as a script, it also drives cellprofiler_core's Python API in a fresh process (so that the JVM it starts never
meets the JVM of other tests): ``python tests/cp_helpers.py api-run ...`` or ``... validate ...``; the result is one
JSON object on the last line of stdout.
"""
from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "plugins"
PIPELINES = REPO / "pipelines"
JSON_MARK = "CP_HELPERS_JSON:"


def cellprofiler_missing() -> str | None:
    """Why CellProfiler cannot be used here, or None when it can."""
    for mod in ("cellprofiler_core", "cellprofiler"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not importable in {sys.executable} (run `make cellprofiler`)"
    if java_bin_dir() is None:
        return "no Java runtime found (java on PATH, JAVA_HOME or /usr/lib/jvm/*); CellProfiler reads images via Java"
    return None


def java_bin_dir() -> str | None:
    """Folder holding the ``java`` executable: from PATH, JAVA_HOME or /usr/lib/jvm."""
    found = shutil.which("java")
    if found:
        return str(Path(found).parent)
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin")
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/jvm/*/bin"))]
    for c in candidates:
        if (c / "java").is_file():
            return str(c)
    return None


def cp_env() -> dict[str, str]:
    """Environment for CellProfiler subprocesses: java on PATH, JAVA_HOME set, quiet Python warnings."""
    env = dict(os.environ)
    jdir = java_bin_dir()
    if jdir:
        env["PATH"] = jdir + os.pathsep + env.get("PATH", "")
        env.setdefault("JAVA_HOME", str(Path(jdir).resolve().parent))
    env["PYTHONWARNINGS"] = "ignore"
    env.setdefault("MPLBACKEND", "Agg")
    return env


def cellprofiler_command() -> list[str]:
    """The ``cellprofiler`` launcher of this interpreter's environment (``python -m cellprofiler`` otherwise)."""
    exe = Path(sys.executable).parent / "cellprofiler"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "cellprofiler"]


def run_cellprofiler(pipeline: Path, input_dir: Path, output_dir: Path, first: int | None = None,
                     last: int | None = None, timeout: float = 900, plugins: bool = True,
                     env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``cellprofiler -c -r -p PIPELINE --plugins-directory plugins -i IN -o OUT [-f N -l M]``.

    With ``plugins=False`` no plugins directory is given (CellProfiler as installed, e.g. the desktop app).
    Returns the completed process (stdout and stderr merged into ``stdout``); does not raise on failure.
    """
    cmd = cellprofiler_command() + ["-c", "-r", "-p", str(pipeline)]
    if plugins:
        cmd += ["--plugins-directory", str(PLUGINS)]
    cmd += ["-i", str(input_dir), "-o", str(output_dir)]
    if first is not None:
        cmd += ["-f", str(first)]
    if last is not None:
        cmd += ["-l", str(last)]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          env={**cp_env(), **(env or {})}, cwd=str(REPO))


def run_api(*args: str, timeout: float = 900) -> dict:
    """Run this file as a script in a fresh interpreter and return its JSON result."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, env=cp_env(), cwd=str(REPO))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(JSON_MARK)]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"cp_helpers {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}")
    return json.loads(lines[-1][len(JSON_MARK):])


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of an exported CSV as dicts (header -> text)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def make_input_folder(plate: Path, model: Path | None, dest: Path) -> Path:
    """A CellProfiler input folder: the plate's brightfield (images/) and nuclear (nuclei/) images, plus the
    model as ``model.artseg`` when given. Ground-truth folders (masks/, ...) are left out on purpose: their
    file names would match the pipelines' channel rules."""
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "nuclei"):
        for f in sorted((plate / sub).glob("*.tif")):
            shutil.copy2(f, dest / f.name)
    if model is not None:
        shutil.copy2(model, dest / "model.artseg")
    return dest


# ---------------------------------------------------------------------------------------------------------------
# cellprofiler_core Python API, run in a fresh process (see module docstring)
# ---------------------------------------------------------------------------------------------------------------

def _core_setup(input_dir: str | None = None, output_dir: str | None = None):
    import logging

    logging.basicConfig(level=logging.WARNING)
    import cellprofiler_core.preferences as prefs

    prefs.set_headless()
    prefs.set_plugin_directory(str(PLUGINS), globally=False)
    if input_dir:
        prefs.set_default_image_directory(input_dir)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        prefs.set_default_output_directory(output_dir)
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.pipeline.event import LoadException

    pipeline = Pipeline()
    load_errors: list[str] = []

    def listener(_pipeline, event):
        if isinstance(event, LoadException):
            load_errors.append(f"{event.module_name}: {event.error}")

    pipeline.add_listener(listener)
    return pipeline, load_errors


def _mask_artifacts(pipeline):
    return next(m for m in pipeline.modules() if m.module_name == "MaskArtifacts")


def _set_model(module, model_path: str) -> None:
    from cellprofiler_core.preferences import ABSOLUTE_FOLDER_NAME

    p = Path(model_path).resolve()
    module.model_directory.value = f"{ABSOLUTE_FOLDER_NAME}|{p.parent}"
    module.model_file_name.value = p.name


def api_settings(pipeline_paths: list[str]) -> dict:
    """Load each pipeline; per module, the number of setting lines in the file and of the module's settings, and
    whether re-saving reproduces the file's text."""
    import io

    out = {}
    for path in pipeline_paths:
        pipeline, load_errors = _core_setup()
        text = Path(path).read_text()
        pipeline.load(path)
        blocks = [b for b in text.split("\n\n")[1:] if b.strip()]
        modules = []
        for block, module in zip(blocks, pipeline.modules()):
            lines = block.strip().splitlines()
            modules.append({"name": module.module_name, "file_name": lines[0].split(":", 1)[0],
                            "in_file": len(lines) - 1, "in_module": len(module.settings())})
        buf = io.StringIO()
        pipeline.dump(buf)
        out[Path(path).name] = {"modules": modules, "n_blocks": len(blocks), "load_errors": load_errors,
                                "resaved_identical": buf.getvalue().rstrip("\n") == text.rstrip("\n")}
    return out


def api_validate(pipeline_path: str, cases: list[str]) -> dict:
    """``MaskArtifacts.test_valid`` (the GUI's settings check) with the model file set to each path in turn."""
    from cellprofiler_core.setting import ValidationError

    pipeline, load_errors = _core_setup()
    pipeline.load(pipeline_path)
    module = _mask_artifacts(pipeline)
    result = {"load_errors": load_errors, "cases": {}}
    for case in cases:
        _set_model(module, case)
        try:
            module.test_valid(pipeline)
            result["cases"][case] = None
        except ValidationError as exc:
            result["cases"][case] = str(exc)
    from cellprofiler_core.constants.measurement import IMAGE

    result["image_categories"] = module.get_categories(pipeline, IMAGE)
    result["image_features"] = module.get_measurements(pipeline, IMAGE, "MaskArtifacts")
    result["columns"] = [list(c[:3]) for c in module.get_measurement_columns(pipeline)]
    return result


def api_run(pipeline_path: str, input_dir: str, output_dir: str, model_path: str) -> dict:
    """Run a pipeline through ``cellprofiler_core.pipeline.Pipeline.run`` with the model file set to an absolute
    path; return Exit_Status, run errors and the MaskArtifacts image measurements."""
    from cellprofiler_core.constants.measurement import EXPERIMENT, IMAGE
    from cellprofiler_core.constants.pipeline import EXIT_STATUS
    from cellprofiler_core.pipeline.event import RunException
    from cellprofiler_core.utilities.java import start_java, stop_java

    pipeline, load_errors = _core_setup(input_dir, output_dir)
    start_java()
    try:
        pipeline.load(pipeline_path)
        module = _mask_artifacts(pipeline)
        _set_model(module, model_path)
        module.torch_threads.value = 1  # the module caps torch's threads in this (CellProfiler) process
        run_errors: list[str] = []
        pipeline.add_listener(lambda _p, ev: run_errors.append(f"{ev.module.module_name}: {ev.error}")
                              if isinstance(ev, RunException) else None)
        files = sorted(str(p) for p in Path(input_dir).iterdir() if p.is_file())
        pipeline.add_pathnames_to_file_list(files)
        measurements = pipeline.run()
        status = (measurements.get_experiment_measurement(EXIT_STATUS)
                  if measurements.has_feature(EXPERIMENT, EXIT_STATUS) else None)
        names = ["FileName_Brightfield", "MaskArtifacts_Probability", "MaskArtifacts_AreaFraction",
                 "MaskArtifacts_Flagged", "Count_Artifacts"]
        values = {}
        for name in names:
            if measurements.has_feature(IMAGE, name):
                values[name] = [v.item() if hasattr(v, "item") else v
                                for v in measurements.get_all_measurements(IMAGE, name)]
        import torch

        return {"exit_status": status, "load_errors": load_errors, "run_errors": run_errors, "image": values,
                "torch_threads": torch.get_num_threads()}
    finally:
        stop_java()


def _main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "settings":
        result = api_settings(args)
    elif cmd == "validate":
        result = api_validate(args[0], args[1:])
    elif cmd == "api-run":
        result = api_run(*args)
    else:
        raise SystemExit(f"unknown command {cmd!r}; use settings, validate or api-run")
    sys.stdout.write(JSON_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
