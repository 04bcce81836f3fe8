"""artseg_core.fiji_install: where the ImageJ scripts go, the recorded engine command, refusals."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from artseg_core.bridges.fiji_install import (
    COMMAND_FILE,
    FijiInstallError,
    default_artseg_command,
    detect_layout,
    install,
    script_sources,
)

SRC = Path(__file__).resolve().parents[2] / "fiji_scripts"


def _imagej_dir(root: Path) -> Path:
    (root / "plugins").mkdir(parents=True)
    (root / "ij.jar").write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip is enough to be recognised
    return root


def _fiji_dir(root: Path) -> Path:
    (root / "scripts").mkdir(parents=True)
    (root / "plugins").mkdir()
    (root / "jars").mkdir()
    return root


def _command_line(path: Path) -> str:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 1, lines
    return lines[0]


def test_imagej_layout(tmp_path):
    ij = _imagej_dir(tmp_path / "ImageJ")
    assert detect_layout(ij) == ("imagej", ij.resolve())
    written = install(ij, artseg_command="/opt/env/bin/artseg")
    dest = ij / "plugins" / "ArtSeg"
    assert written == [dest / "Mask_Artifacts.ijm", dest / COMMAND_FILE]
    assert (dest / "Mask_Artifacts.ijm").read_bytes() == (SRC / "Mask_Artifacts.ijm").read_bytes()
    assert _command_line(dest / COMMAND_FILE) == "/opt/env/bin/artseg"
    assert not (ij / "scripts").exists()  # no Python-mode script in plain ImageJ 1.x


def test_fiji_layout_and_parent_folder(tmp_path):
    fiji = _fiji_dir(tmp_path / "Fiji.app")
    assert detect_layout(tmp_path) == ("fiji", fiji.resolve())  # the folder holding Fiji.app
    written = install(tmp_path, artseg_command="artseg")
    macro_dir = fiji / "plugins" / "ArtSeg"
    py_dir = fiji / "scripts" / "Plugins" / "ArtSeg"
    assert set(written) == {macro_dir / "Mask_Artifacts.ijm", macro_dir / COMMAND_FILE,
                            py_dir / "Mask_Artifacts_Python.py", py_dir / COMMAND_FILE}
    assert (py_dir / "Mask_Artifacts_Python.py").read_bytes() == (SRC / "Mask_Artifacts.py").read_bytes()
    # re-running overwrites (e.g. after moving the environment)
    install(fiji, artseg_command="/new/artseg")
    assert _command_line(macro_dir / COMMAND_FILE) == "/new/artseg"


def test_fiji_recognised_by_launcher(tmp_path):
    fiji = tmp_path / "Fiji.app"
    fiji.mkdir()
    (fiji / "ImageJ-linux64").write_text("")
    assert detect_layout(fiji)[0] == "fiji"


def test_refuses_other_folders(tmp_path, monkeypatch):
    other = tmp_path / "Documents"
    other.mkdir()
    with pytest.raises(FijiInstallError, match="neither a Fiji folder.*nor an ImageJ 1.x folder") as e:
        install(other)
    assert str(other) in str(e.value)
    assert not any(other.iterdir())  # nothing written
    with pytest.raises(FijiInstallError, match="no such folder"):
        install(tmp_path / "missing")


def test_imagej_without_plugins_folder_installs_for_the_user(tmp_path, monkeypatch):
    """A distribution's ImageJ (ij.jar with no plugins/ beside it, e.g. Debian's /usr/share/java): the user's
    ~/.imagej/plugins, which Debian's `imagej` launcher reads (-ijpath ~/.imagej)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    shared = tmp_path / "usr_share_java"
    shared.mkdir()
    (shared / "ij-1.53t.jar").write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    (shared / "ij.jar").symlink_to(shared / "ij-1.53t.jar")
    for target in (shared, shared / "ij.jar"):
        assert detect_layout(target) == ("imagej", home / ".imagej")
    written = install(shared / "ij.jar", artseg_command="/x/artseg")
    dest = home / ".imagej" / "plugins" / "ArtSeg"
    assert written == [dest / "Mask_Artifacts.ijm", dest / COMMAND_FILE]
    assert not (shared / "plugins").exists()
    # the user folder itself, and a plugins folder, are accepted too
    assert detect_layout(home / ".imagej") == ("imagej", (home / ".imagej").resolve())
    assert detect_layout(home / ".imagej" / "plugins") == ("imagej", (home / ".imagej").resolve())


def test_cli_names_the_user_plugins_folder(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from artseg_core.cli.main import main

    monkeypatch.setenv("HOME", str(tmp_path))
    jar_dir = tmp_path / "java"
    jar_dir.mkdir()
    (jar_dir / "ij.jar").write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    res = CliRunner().invoke(main, ["fiji-install", str(jar_dir / "ij.jar"), "--artseg-command", "/x/artseg"])
    assert res.exit_code == 0, res.output
    assert f"installed for you into {tmp_path / '.imagej'}/plugins" in res.output


def test_rejects_multiline_or_empty_command(tmp_path):
    ij = _imagej_dir(tmp_path / "ImageJ")
    for bad in ("", "   ", "artseg\nrm -rf /"):
        with pytest.raises(FijiInstallError, match="invalid artseg command"):
            install(ij, artseg_command=bad)


def test_default_command_runs_this_engine(tmp_path):
    """The recorded default command is an absolute path that really runs this environment's artseg."""
    cmd = default_artseg_command()
    argv = shlex.split(cmd)
    assert Path(argv[0]).is_absolute()
    proc = subprocess.run(argv + ["--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import artseg_core

    assert artseg_core.__version__ in proc.stdout
    ij = _imagej_dir(tmp_path / "ImageJ")
    install(ij)
    assert _command_line(ij / "plugins" / "ArtSeg" / COMMAND_FILE) == cmd


def test_script_sources_found():
    assert (script_sources() / "Mask_Artifacts.ijm").is_file()


def test_cli_command(tmp_path):
    """`artseg fiji-install DIR [--artseg-command CMD]`, and its refusal with exit status 2."""
    from click.testing import CliRunner

    from artseg_core.cli.main import main

    ij = _imagej_dir(tmp_path / "ImageJ")
    res = CliRunner().invoke(main, ["fiji-install", str(ij), "--artseg-command", "/x/artseg"])
    assert res.exit_code == 0, res.output
    assert f"wrote {ij / 'plugins' / 'ArtSeg' / 'Mask_Artifacts.ijm'}" in res.output
    assert _command_line(ij / "plugins" / "ArtSeg" / COMMAND_FILE) == "/x/artseg"
    res = CliRunner().invoke(main, ["fiji-install", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no such folder" in res.output
