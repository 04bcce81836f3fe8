"""The ImageJ face, in a real ImageJ 1.x (Debian's ij.jar) under Xvfb, on phantom images with the tiny model.

Routes tested: the macro run as a file (what ``ImageJ -batch`` does, through fiji_scripts/runner/MacroRunner.java
for a real exit status), the macro with ImageJ's GUI (hidden main window, windows on Xvfb), the installed menu
command ``run("Mask Artifacts", ...)`` (``artseg_core.fiji_install`` into a temporary ImageJ folder), ImageJ's
own ``-batch`` mode, and the scyjava bridge ``artseg_core.imagej`` (in a subprocess: one JVM per process).
No mocks: the macro calls the real ``artseg`` command; numbers are checked against numpy on the engine's mask.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MACRO = REPO / "fiji_scripts" / "Mask_Artifacts.ijm"
RUNNER_SRC = REPO / "fiji_scripts" / "runner" / "MacroRunner.java"
IJ_JAR = Path(os.environ.get("ARTSEG_IJ_JAR", "/usr/share/java/ij.jar"))
# the tiny test model rarely finds objects with its calibrated settings: run the U-Net everywhere with a low
# threshold so that the outline and measurement code paths see objects
ENGINE_OPTS = "no_gate threshold=0.25"
TIMEOUT = 300


def _missing() -> str | None:
    if not IJ_JAR.is_file():
        return f"ImageJ 1.x not installed ({IJ_JAR} absent; `make imagej` installs Debian's imagej/libij-java)"
    for tool in ("xvfb-run", "java", "javac"):
        if shutil.which(tool) is None:
            return f"{tool} not found (`make imagej` installs xvfb; java/javac come with a JDK)"
    return None


# the timeout covers the session fixture trained_model_path when a test here is the first to need it (training
# the tiny model took 9-15 minutes on the shared 2-core machine); each ImageJ run has its own TIMEOUT
pytestmark = [pytest.mark.imagej, pytest.mark.slow, pytest.mark.timeout(2400),
              pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def runner_cp(tmp_path_factory) -> str:
    """Class path with ij.jar and MacroRunner compiled into a temporary folder (never into the repository)."""
    out = tmp_path_factory.mktemp("macro_runner")
    subprocess.run(["javac", "-cp", str(IJ_JAR), "-d", str(out), str(RUNNER_SRC)], check=True,
                   capture_output=True, timeout=180)
    return f"{IJ_JAR}{os.pathsep}{out}"


@pytest.fixture(scope="module")
def artseg_cmd() -> str:
    from artseg_core.bridges.fiji_install import default_artseg_command

    return default_artseg_command()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three 16-bit phantom fields (two with artifacts, one clean) in a folder."""
    from artseg_core import io as aio
    from artseg_core.data.phantoms import make_field

    d = tmp_path_factory.mktemp("ij_images")
    for name, seed, kinds in (("field_a", 11, ["debris", "fibre"]), ("field_b", 12, ["bubble", "clump"]),
                              ("field_c", 13, [])):
        aio.write_tiff(d / f"{name}.tif", make_field(shape=(192, 192), seed=seed, artifacts=kinds).image)
    return d


def xvfb_run(home: Path) -> list[str]:
    """``xvfb-run`` with its X authority file in ``home``. Without ``-f`` it makes and removes a temporary folder
    of its own, and when that removal fails (seen once in the clean-clone CI) it exits 5 in place of the
    program's exit status."""
    auth = Path(home) / ".Xauthority"
    auth.touch()
    return ["xvfb-run", "-a", "-f", str(auth)]


def run_macro(cp: str, *args: str, gui: bool = False, plugins_dir: Path | None = None, home: Path,
              timeout: int = TIMEOUT) -> tuple[subprocess.CompletedProcess, float]:
    """MacroRunner under xvfb-run; returns the process and the wall time."""
    cmd = [*xvfb_run(home), "java", f"-Duser.home={home}"]
    if plugins_dir is not None:
        cmd.append(f"-Dplugins.dir={plugins_dir}")
    cmd += ["-cp", cp, "MacroRunner", "--timeout", str(timeout - 30)]
    if gui:
        cmd.append("--gui")
    t0 = time.monotonic()
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def imagej_install(tmp_path: Path) -> Path:
    """A temporary ImageJ 1.x folder (Debian's ij.jar + plugins/) with ArtSeg installed by fiji-install."""
    from artseg_core.bridges.fiji_install import install

    ij_dir = tmp_path / "ImageJ"
    (ij_dir / "plugins").mkdir(parents=True)
    shutil.copyfile(IJ_JAR, ij_dir / "ij.jar")
    written = install(ij_dir)
    assert ij_dir / "plugins" / "ArtSeg" / "Mask_Artifacts.ijm" in written
    return ij_dir


def _out(proc) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def n_objects(mask: np.ndarray) -> int:
    from scipy import ndimage as ndi

    return int(ndi.label(mask, structure=np.ones((3, 3), bool))[1])


def check_measurements(row: dict, image_path: Path, plane: int | None = None) -> int:
    """The macro's inside/outside numbers equal numpy on the engine's mask; returns the object count."""
    import tifffile

    assert row["status"] == "ok", row
    img = tifffile.imread(image_path).astype(np.float64)
    if plane is not None:
        img = img[plane]
    mask = tifffile.imread(row["mask"]) > 0
    assert mask.shape == img.shape
    n_in, n_out = int(mask.sum()), int((~mask).sum())
    assert int(row["inside_area_px"]) == n_in
    assert int(row["outside_area_px"]) == n_out
    assert float(row["inside_area"]) == pytest.approx(n_in)  # uncalibrated: pixels
    for key, sel, n in (("inside_mean", mask, n_in), ("outside_mean", ~mask, n_out)):
        if n == 0:
            assert math.isnan(float(row[key]))
        else:
            assert float(row[key]) == pytest.approx(img[sel].mean(), rel=1e-9, abs=2e-6)
    n = n_objects(mask)
    assert int(row["n_rois"]) == n == int(row["n_objects"])
    return n


def overlay_count(tif: Path) -> int:
    import roifile

    return len(roifile.roiread(tif)) if roifile.roiread(tif) else 0


# ------------------------------------------------------------------------------------------------ macro route


def test_macro_one_file_measures_and_outlines(runner_cp, artseg_cmd, images, trained_model_path, tmp_path):
    out = tmp_path / "out"
    img = images / "field_a.tif"
    proc, _ = run_macro(runner_cp, str(MACRO),
                        f"model=[{trained_model_path}] input=[{img}] output=[{out}] artseg=[{artseg_cmd}] "
                        f"annotated {ENGINE_OPTS}", home=tmp_path)
    assert proc.returncode == 0, _out(proc)
    assert "ArtSeg: 1 image(s)" in proc.stdout
    rows = read_rows(out / "artseg_imagej.csv")
    assert len(rows) == 1 and rows[0]["image"] == str(img)
    n = check_measurements(rows[0], img)
    assert n > 0, "the test needs artifact objects; the tiny model found none at threshold 0.25"
    # the annotated TIFF carries the overlay: one ROI per artifact object, named as in the ROI zip and the
    # engine's object table (artifact-001, ...)
    assert overlay_count(out / "field_a_artseg.tif") == n
    import roifile

    overlay_names = [r.name for r in roifile.roiread(out / "field_a_artseg.tif")]
    zips = list(out.glob("*_rois.zip"))
    assert overlay_names == [f"artifact-{k:03d}" for k in range(1, n + 1)]
    if zips:
        assert [r.name for r in roifile.roiread(zips[0])] == overlay_names
    # the engine's own CSV is next to it, and agrees
    engine = read_rows(out / "artseg_results.csv")
    assert engine[0]["status"] == "ok" and int(engine[0]["n_objects"]) == n


def test_macro_folder_processes_every_image(runner_cp, artseg_cmd, images, trained_model_path, tmp_path):
    out = tmp_path / "out"
    proc, _ = run_macro(runner_cp, str(MACRO),
                        f"model=[{trained_model_path}] folder=[{images}] output=[{out}] artseg=[{artseg_cmd}] "
                        f"csv=[{tmp_path / 'measurements.csv'}] cleaned=median {ENGINE_OPTS}", home=tmp_path)
    assert proc.returncode == 0, _out(proc)
    rows = read_rows(tmp_path / "measurements.csv")
    names = sorted(p.name for p in images.glob("*.tif"))
    assert sorted(Path(r["image"]).name for r in rows) == names
    total = 0
    for r in rows:
        total += check_measurements(r, Path(r["image"]))
        assert (out / f"{Path(r['image']).stem}_cleaned.tif").is_file()
    assert total > 0


def test_macro_active_image_with_gui(runner_cp, artseg_cmd, images, trained_model_path, tmp_path):
    """With ImageJ's GUI: outlines on the active image's overlay and in the ROI Manager, mask opened,
    the user's selection kept."""
    out = tmp_path / "out"
    img = images / "field_b.tif"
    code = (f'open("{img}"); id = getImageID(); makeRectangle(3, 4, 20, 10);'
            f'runMacro("{MACRO}", "model=[{trained_model_path}] output=[{out}] artseg=[{artseg_cmd}] '
            f'{ENGINE_OPTS}");'
            'titles = ""; for (i = 1; i <= nImages; i++) { selectImage(i); titles = titles + getTitle() + ";"; }'
            'selectImage(id); getSelectionBounds(x, y, w, h);'
            'print("RESULT " + call("java.lang.System.getProperty", "artseg.status") + " " + Overlay.size + " "'
            ' + roiManager("count") + " " + x + "," + y + "," + w + "," + h + " " + titles);')
    proc, _ = run_macro(runner_cp, "-e", code, gui=True, home=tmp_path)
    assert proc.returncode == 0, _out(proc)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    _, status, n_overlay, n_manager, bounds, titles = line.split(" ", 5)
    rows = read_rows(out / "artseg_imagej.csv")
    assert rows[0]["image"] == "field_b.tif"
    n = check_measurements(rows[0], img)
    assert status == "ok"
    assert int(n_overlay) == n and int(n_manager) == n
    assert bounds == "3,4,20,10"
    assert "field_b_mask.tif" in titles.split(";")


def test_menu_command_after_fiji_install(runner_cp, images, trained_model_path, tmp_path):
    """run("Mask Artifacts", ...) in an ImageJ folder prepared by fiji-install; the engine command comes
    from the installed artseg_command.txt, failure is visible to the calling macro."""
    ij_dir = imagej_install(tmp_path)
    out = tmp_path / "out"
    img = images / "field_a.tif"
    caller = ('run("Mask Artifacts", "model=[{model}] input=[{img}] output=[{out}] ' + ENGINE_OPTS + '");'
              'if (call("java.lang.System.getProperty", "artseg.status") != "ok")'
              '  exit("ArtSeg failed: " + call("java.lang.System.getProperty", "artseg.error"));'
              'print("CSV " + call("java.lang.System.getProperty", "artseg.csv"));')
    proc, _ = run_macro(runner_cp, "-e", caller.format(model=trained_model_path, img=img, out=out),
                        plugins_dir=ij_dir, home=tmp_path)
    assert proc.returncode == 0, _out(proc)
    assert f"CSV {out / 'artseg_imagej.csv'}" in proc.stdout
    check_measurements(read_rows(out / "artseg_imagej.csv")[0], img)

    bad = tmp_path / "no_such_model.artseg"
    proc, elapsed = run_macro(runner_cp, "-e", caller.format(model=bad, img=img, out=out),
                              plugins_dir=ij_dir, home=tmp_path)
    assert proc.returncode == 2, _out(proc)
    assert "ArtSeg failed: the ArtSeg engine failed" in proc.stdout and str(bad) in proc.stdout
    assert elapsed < TIMEOUT - 30


def test_menu_command_in_debian_imagej_after_fiji_install(runner_cp, images, trained_model_path, tmp_path):
    """Debian's ImageJ as installed (ij.jar in /usr/share/java, no plugins/ beside it): `artseg fiji-install
    /usr/share/java/ij.jar` installs into ~/.imagej/plugins, the folder Debian's `imagej` launcher passes as
    -ijpath; ImageJ started that way finds run("Mask Artifacts", ...)."""
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run([sys.executable, "-m", "artseg_core.cli", "fiji-install", str(IJ_JAR)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)})
    assert proc.returncode == 0, _out(proc)
    assert f"installed for you into {home / '.imagej'}/plugins" in proc.stdout
    assert (home / ".imagej" / "plugins" / "ArtSeg" / "Mask_Artifacts.ijm").is_file()
    out = tmp_path / "out"
    img = images / "field_a.tif"
    caller = (f'run("Mask Artifacts", "model=[{trained_model_path}] input=[{img}] output=[{out}] {ENGINE_OPTS}");'
              'print("STATUS " + call("java.lang.System.getProperty", "artseg.status"));')
    proc, _ = run_macro(runner_cp, "-e", caller, plugins_dir=home / ".imagej", home=home)
    assert proc.returncode == 0, _out(proc)
    assert "STATUS ok" in proc.stdout, _out(proc)
    check_measurements(read_rows(out / "artseg_imagej.csv")[0], img)


def test_readme_macro_example_runs(runner_cp, images, trained_model_path, tmp_path):
    """The README's copy-paste macro (ImageJ and Fiji), its paths pointed at the test data, in an installed ImageJ."""
    import re

    doc = (REPO / "README.md").read_text()
    code = re.search(r"```javascript\n(.*?)```", doc, re.S).group(1)
    code = (code.replace("/data/plate1/A01_s1.tif", str(images / "field_a.tif"))
            .replace("/data/plate1/", f"{images}/").replace("/data/models/model.artseg", str(trained_model_path)))
    ij_dir = imagej_install(tmp_path)
    # the example uses the model's calibrated settings (no_gate/threshold are test-only): fewer objects, same code
    proc, _ = run_macro(runner_cp, "-e", code, plugins_dir=ij_dir, home=tmp_path)
    assert proc.returncode == 0, _out(proc)
    assert f"3 images measured; results in {images}/artseg_out/artseg_imagej.csv" in proc.stdout
    n = int(re.search(r"(\d+) artifact outline\(s\) on field_a.tif", proc.stdout).group(1))
    # the folder run annotated every image; the active-image run then wrote its own CSV over the folder's
    assert all((images / "artseg_out" / f"{p.stem}_artseg.tif").is_file() for p in images.glob("*.tif"))
    rows = read_rows(images / "artseg_out" / "artseg_imagej.csv")
    assert [r["image"] for r in rows] == ["field_a.tif"] and n == int(rows[0]["n_objects"])


def test_multi_plane_file_and_active_plane(runner_cp, artseg_cmd, images, trained_model_path, tmp_path):
    """plane=N on a stack file measures that plane; on the active image the current plane is used."""
    import tifffile

    planes = [tifffile.imread(images / f"field_{c}.tif") for c in "cab"]
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack(planes), imagej=True)
    out = tmp_path / "out"
    proc, _ = run_macro(runner_cp, str(MACRO), f"model=[{trained_model_path}] input=[{stack}] output=[{out}] "
                        f"artseg=[{artseg_cmd}] plane=1 {ENGINE_OPTS}", home=tmp_path)
    assert proc.returncode == 0, _out(proc)
    row = read_rows(out / "artseg_imagej.csv")[0]
    check_measurements(row, stack, plane=1)
    # the engine saw plane 1 (same mask as predicting on that plane directly)
    from artseg_core.predict.model import load_model

    model = load_model(trained_model_path)
    expect = {k: np.asarray(model.predict(planes[k], gate=False, threshold=0.25).mask) for k in (1, 2)}
    assert np.array_equal(tifffile.imread(row["mask"]) > 0, expect[1])
    # active image on slice 3 (plane 2); plane= is ignored there: the current plane is what is sent
    out2 = tmp_path / "out2"
    code = (f'open("{stack}"); setSlice(3); runMacro("{MACRO}", "model=[{trained_model_path}] output=[{out2}] '
            f'artseg=[{artseg_cmd}] plane=1 {ENGINE_OPTS}"); print("STATUS " + '
            'call("java.lang.System.getProperty", "artseg.status") + " slice " + getSliceNumber());')
    proc, _ = run_macro(runner_cp, "-e", code, home=tmp_path)
    assert "STATUS ok slice 3" in proc.stdout, _out(proc)
    row = read_rows(out2 / "artseg_imagej.csv")[0]
    check_measurements(row, stack, plane=2)
    assert np.array_equal(tifffile.imread(row["mask"]) > 0, expect[2])


# ------------------------------------------------------------------------------------------------ failures


def test_wrong_model_path_stops_with_the_engine_message(runner_cp, artseg_cmd, images, tmp_path):
    bad = tmp_path / "missing.artseg"
    proc, elapsed = run_macro(runner_cp, str(MACRO), f"model=[{bad}] input=[{images / 'field_a.tif'}] "
                              f"output=[{tmp_path / 'out'}] artseg=[{artseg_cmd}]", home=tmp_path)
    assert proc.returncode == 2, _out(proc)  # the macro stopped itself with exit("message")
    assert "Mask Artifacts: the ArtSeg engine failed (exit status 2)" in proc.stdout
    assert "artseg: error:" in proc.stdout and str(bad) in proc.stdout
    assert elapsed < TIMEOUT - 30
    assert not (tmp_path / "out" / "artseg_imagej.csv").exists()


def test_wrong_model_in_the_gui_is_a_message_box_not_a_hang(runner_cp, artseg_cmd, images, tmp_path):
    bad = tmp_path / "missing.artseg"
    proc, _ = run_macro(runner_cp, str(MACRO), f"model=[{bad}] input=[{images / 'field_a.tif'}] "
                        f"output=[{tmp_path / 'out'}] artseg=[{artseg_cmd}]", gui=True, home=tmp_path)
    assert proc.returncode == 3, _out(proc)  # MacroRunner saw the message box (it would wait for a click)
    assert "a dialog opened" in proc.stderr and str(bad) in proc.stderr


def test_missing_engine_command_is_explained(runner_cp, images, trained_model_path, tmp_path):
    proc, _ = run_macro(runner_cp, str(MACRO), f"model=[{trained_model_path}] input=[{images / 'field_a.tif'}] "
                        f"artseg=[{tmp_path / 'nowhere' / 'artseg'}]", home=tmp_path)
    assert proc.returncode == 2, _out(proc)
    assert "could not run" in proc.stdout and "fiji-install" in proc.stdout


def test_folder_with_a_broken_image_measures_the_rest_then_fails(runner_cp, artseg_cmd, images,
                                                                 trained_model_path, tmp_path):
    folder = tmp_path / "plate"
    folder.mkdir()
    shutil.copyfile(images / "field_a.tif", folder / "good.tif")
    (folder / "broken.tif").write_bytes(b"this is not a TIFF")
    out = tmp_path / "out"
    proc, _ = run_macro(runner_cp, str(MACRO), f"model=[{trained_model_path}] folder=[{folder}] output=[{out}] "
                        f"artseg=[{artseg_cmd}] {ENGINE_OPTS}", home=tmp_path)
    assert proc.returncode == 2, _out(proc)
    assert "1 of 2 image(s) failed" in proc.stdout and "broken.tif" in proc.stdout
    rows = {Path(r["image"]).name: r for r in read_rows(out / "artseg_imagej.csv")}
    assert rows["broken.tif"]["status"] == "error" and "broken.tif" in rows["broken.tif"]["error"]
    check_measurements(rows["good.tif"], folder / "good.tif")


def test_engine_command_option_is_remembered(runner_cp, images, tmp_path):
    """artseg=[...] is saved as an ImageJ preference and used by later calls without the option."""
    bad = tmp_path / "nowhere" / "artseg"
    opts = f"model=[{tmp_path / 'm.artseg'}] input=[{images / 'field_a.tif'}] output=[{tmp_path / 'out'}]"
    code = (f'runMacro("{MACRO}", "{opts} artseg=[{bad}]");'
            'print("FIRST " + call("java.lang.System.getProperty", "artseg.error"));'
            f'runMacro("{MACRO}", "{opts}");'
            'print("SECOND " + call("java.lang.System.getProperty", "artseg.error"));')
    proc, _ = run_macro(runner_cp, "-e", code, home=tmp_path)
    first = next(ln for ln in proc.stdout.splitlines() if ln.startswith("FIRST "))
    second = next(ln for ln in proc.stdout.splitlines() if ln.startswith("SECOND "))
    assert f"could not run `{bad}`" in first and f"could not run `{bad}`" in second, _out(proc)


def test_missing_input_and_no_model(runner_cp, tmp_path):
    proc, _ = run_macro(runner_cp, str(MACRO), f"model=[x.artseg] input=[{tmp_path / 'none.tif'}]", home=tmp_path)
    assert proc.returncode == 2 and "input file not found" in proc.stdout, _out(proc)
    proc, _ = run_macro(runner_cp, str(MACRO), f"input=[{tmp_path / 'none.tif'}]", home=tmp_path)
    assert proc.returncode == 2 and "no model given" in proc.stdout, _out(proc)


def test_menu_click_without_options_asks_with_a_dialog(runner_cp, tmp_path):
    """No options and ImageJ's GUI (a menu click): the options dialog opens (MacroRunner reports it)."""
    proc, elapsed = run_macro(runner_cp, str(MACRO), "", gui=True, home=tmp_path)
    assert proc.returncode == 3, _out(proc)
    assert "[Mask Artifacts (ArtSeg" in proc.stderr and "Model file" in proc.stderr
    proc, _ = run_macro(runner_cp, str(MACRO), "", home=tmp_path)  # batch mode: no dialog, a clear error
    assert proc.returncode == 2 and "no options given" in proc.stdout, _out(proc)


# ------------------------------------------------------------------------------------------------ ImageJ -batch


def test_imagej_batch_mode_command_line(artseg_cmd, images, trained_model_path, tmp_path):
    """`ImageJ -batch Mask_Artifacts.ijm "options"` (ImageJ's exit status is always 0: check the files)."""
    out = tmp_path / "out"
    proc = subprocess.run([*xvfb_run(tmp_path), "java", f"-Duser.home={tmp_path}", "-jar", str(IJ_JAR), "-batch",
                           str(MACRO), f"model=[{trained_model_path}] input=[{images / 'field_c.tif'}] "
                           f"output=[{out}] artseg=[{artseg_cmd}] {ENGINE_OPTS}"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert "ArtSeg: 1 image(s)" in proc.stdout, _out(proc)
    check_measurements(read_rows(out / "artseg_imagej.csv")[0], images / "field_c.tif")


# ------------------------------------------------------------------------------------------------ scyjava route


def test_scyjava_bridge_rois_match_objects(images, trained_model_path, tmp_path):
    """artseg_core.imagej in a truly headless JVM (ij.jar only): ROIs, overlay, ROI files, the Fiji script path."""
    proc = subprocess.run([sys.executable, __file__, "--scyjava-check", str(trained_model_path),
                           str(images / "field_a.tif"), str(tmp_path)], capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, _out(proc)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["headless"] == "true"
    # class path: ij.jar and JPype's own support jar, nothing fetched
    cp = r["classpath"].split(os.pathsep)
    assert cp[0] == str(IJ_JAR) and all(Path(c).name == "org.jpype.jar" for c in cp[1:]), cp
    # synthetic labels: rectangle, object with a hole, diagonal chain, disk; ImageJ's area = the object's
    assert r["synthetic"]["roi_areas"] == r["synthetic"]["object_areas"]
    assert r["synthetic"]["exact"] == [True] * 4
    assert r["synthetic"]["mask_rois"] == 4 and r["synthetic"]["union_area"] == sum(r["synthetic"]["object_areas"])
    assert r["roundtrip"] == {"uint8": True, "uint16": True, "float32": True}
    # the engine through the Fiji-script function on an ImagePlus
    assert r["pixels_equal"]
    assert r["n_objects"] > 0
    assert r["roi_areas"] == r["object_areas"] and len(r["roi_areas"]) == r["n_objects"]
    assert r["rois_exact"] and r["overlay"] == r["n_objects"]
    assert r["zip_rois"] == r["n_objects"] and r["mask_file_equal"]
    # one ROI naming everywhere: the overlay, the ROI zip and io.outputs.write_roi_zip
    names = [f"artifact-{k:03d}" for k in range(1, r["n_objects"] + 1)]
    assert r["overlay_names"] == r["zip_names"] == r["engine_zip_names"] == names
    assert r["same_as_engine"]
    assert sorted(r["files"]) == ["field_a_cleaned.tif", "field_a_mask.tif", "field_a_rois.zip"]


def _scyjava_check(model_path: str, image_path: str, out_dir: str) -> dict:
    """Runs in its own process (one JVM per process); returns facts for the test to assert."""
    import roifile
    import tifffile

    from artseg_core.bridges import imagej as aij
    from artseg_core.predict.model import load_model
    from artseg_core.imgproc.postprocess import label_objects

    aij.start_imagej1()
    system = aij._j("java.lang.System")
    res: dict = {"headless": str(system.getProperty("java.awt.headless")),
                 "classpath": str(system.getProperty("java.class.path"))}

    def areas(rois, shape):
        imp = aij.to_imageplus(np.zeros(shape, np.uint8))
        out = []
        for roi in rois:
            imp.setRoi(roi)
            out.append(int(imp.getStatistics().pixelCount))
        return out

    lab = np.zeros((60, 80), np.int32)
    lab[5:15, 5:25] = 1
    lab[20:40, 30:60] = 2
    lab[25:30, 40:45] = 0
    for i in range(5):
        lab[45 + i, 10 + i] = 3
    yy, xx = np.mgrid[:60, :80]
    lab[(yy - 48) ** 2 + (xx - 65) ** 2 <= 36] = 4
    rois = aij.labels_to_rois(lab)
    res["synthetic"] = {"roi_areas": areas(rois, lab.shape),
                        "object_areas": [int((lab == k).sum()) for k in range(1, 5)],
                        "exact": [bool(np.array_equal(aij.roi_to_mask(r, lab.shape), lab == k))
                                  for k, r in enumerate(rois, 1)],
                        "mask_rois": len(aij.mask_to_rois(lab > 0)),
                        "union_area": areas([aij.mask_to_roi(lab > 0)], lab.shape)[0]}
    rng = np.random.default_rng(0)
    res["roundtrip"] = {}
    for dt in (np.uint8, np.uint16, np.float32):
        a = (rng.random((7, 9)) * 200).astype(dt)
        res["roundtrip"][np.dtype(dt).name] = bool(np.array_equal(aij.from_imageplus(aij.to_imageplus(a)), a))

    imp = aij.open_imageplus(image_path)
    raw = tifffile.imread(image_path)
    res["pixels_equal"] = bool(np.array_equal(aij.image_to_array(imp), raw))
    out = aij.run_fiji_script(imp, model_path, output_dir=out_dir, cleaned="median", threshold=0.25, gate=False)
    result, rois = out["result"], out["rois"]
    labels = np.asarray(result.labels)
    res["n_objects"] = int(labels.max())
    res["object_areas"] = [int((labels == k).sum()) for k in range(1, labels.max() + 1)]
    res["roi_areas"] = areas(rois, labels.shape)
    res["rois_exact"] = all(np.array_equal(aij.roi_to_mask(r, labels.shape), labels == k)
                            for k, r in enumerate(rois, 1))
    res["overlay"] = int(imp.getOverlay().size()) if imp.getOverlay() is not None else 0
    res["zip_rois"] = len(roifile.roiread(Path(out_dir) / "field_a_rois.zip"))
    res["overlay_names"] = [str(imp.getOverlay().get(i).getName()) for i in range(int(imp.getOverlay().size()))]
    res["zip_names"] = [r.name for r in roifile.roiread(Path(out_dir) / "field_a_rois.zip")]
    from artseg_core.io.outputs import write_roi_zip

    engine_zip = write_roi_zip(labels, Path(out_dir) / "engine_rois.zip")
    res["engine_zip_names"] = [r.name for r in roifile.roiread(engine_zip)]
    res["mask_file_equal"] = bool(np.array_equal(tifffile.imread(Path(out_dir) / "field_a_mask.tif") > 0,
                                                 np.asarray(result.mask)))
    direct = load_model(model_path).predict(raw, gate=False, threshold=0.25)
    res["same_as_engine"] = bool(np.array_equal(np.asarray(direct.mask), np.asarray(result.mask)))
    res["files"] = [p.name for p in out["files"] if p.name != "engine_rois.zip"]
    labels_from_mask = label_objects(np.asarray(result.mask))
    assert int(labels_from_mask.max()) == res["n_objects"]
    return res


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--scyjava-check":
        print(json.dumps(_scyjava_check(*sys.argv[2:5])))
    else:
        sys.exit("usage: test_imagej.py --scyjava-check MODEL IMAGE OUT_DIR")
