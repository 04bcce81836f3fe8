"""The wheel carries the faces that live outside the engine package, and its console script works.

Built with ``pip wheel`` (no build isolation: the test environment's setuptools, so no download), installed with
``pip install --no-deps --target`` into an empty folder, and run from outside the repository, so nothing of the
checkout can be found by accident.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "dist"), str(REPO)], capture_output=True, text=True, cwd=tmp)
    assert build.returncode == 0, build.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("artseg-*.whl")
    target = tmp / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(whl)], capture_output=True, text=True, cwd=tmp)
    assert inst.returncode == 0, inst.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    return whl, target, env, tmp


def _artseg(installed, *args):
    _, target, env, tmp = installed
    script = target / "bin" / "artseg"
    cmd = [sys.executable, str(script), *args] if script.is_file() else [sys.executable, "-m", "artseg_core.cli",
                                                                          *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=300)


def test_wheel_holds_the_faces(installed):
    names = zipfile.ZipFile(installed[0]).namelist()
    for want in ("share/artseg/plugins/maskartifacts.py", "share/artseg/pipelines/mask_artifacts_nuclei.cppipe",
                 "share/artseg/fiji_scripts/Mask_Artifacts.ijm", "artseg_core/_version.py"):
        assert any(n.endswith(want) for n in names), want
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_installed_artseg_runs_outside_the_checkout(installed):
    r = _artseg(installed, "--version")
    assert r.returncode == 0, r.stderr
    from artseg_core import __version__

    assert __version__ in r.stdout
    r = _artseg(installed, "--help")
    assert r.returncode == 0 and "cellprofiler-install" in r.stdout and "fiji-install" in r.stdout


def test_installed_cellprofiler_install_copies_the_wheel_plugin(installed):
    _, target, _, tmp = installed
    r = _artseg(installed, "cellprofiler-install", str(tmp / "cp_plugins"), "--pipelines", str(tmp / "cp_pipes"))
    assert r.returncode == 0, r.stderr
    plugin = tmp / "cp_plugins" / "maskartifacts.py"
    assert plugin.read_bytes() == (REPO / "plugins" / "maskartifacts.py").read_bytes()
    assert (tmp / "cp_pipes" / "mask_artifacts_nuclei.cppipe").is_file()
    assert str(target) in r.stdout or "wrote" in r.stdout
    bad = _artseg(installed, "cellprofiler-install", str(tmp / "missing_parent" / "plugins"))
    assert bad.returncode != 0 and "no such folder" in bad.stderr


def test_installed_fiji_install_uses_the_wheel_scripts(installed):
    _, _, _, tmp = installed
    ij = tmp / "ImageJ"
    (ij / "plugins").mkdir(parents=True)
    (ij / "ij.jar").write_bytes(b"")
    r = _artseg(installed, "fiji-install", str(ij))
    assert r.returncode == 0, r.stderr
    macro = ij / "plugins" / "ArtSeg" / "Mask_Artifacts.ijm"
    assert macro.read_bytes() == (REPO / "fiji_scripts" / "Mask_Artifacts.ijm").read_bytes()


def test_installed_resources_resolve_inside_the_install(installed):
    _, target, env, tmp = installed
    code = ("from artseg_core.bridges.resources import resource_dir; "
            "print(resource_dir('plugins')); print(resource_dir('pipelines'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.split():
        assert Path(line).resolve().is_relative_to(target.resolve()), line
