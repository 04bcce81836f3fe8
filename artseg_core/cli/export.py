"""``artseg export``: a bioimage.io model package or plain ONNX files of a trained model.

Registered on the main group by ``register(main, cli_module)`` (like :mod:`artseg_core.cli.batch`).
"""
from __future__ import annotations

from pathlib import Path

import click

__all__ = ["register"]


def register(group: click.Group, cli) -> None:
    """Define ``export`` with the helpers of the ``cli`` module and add it to ``group``."""
    _fail = cli._fail

    @group.command("export")
    @click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--format", "fmt", type=click.Choice(["bioimageio", "onnx"]), default="bioimageio",
                  show_default=True)
    @click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path),
                  help="bioimageio: a .zip file or a folder; onnx: a folder.")
    @click.option("--test-image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="Image for the package's test tensors (default: a synthetic phantom field).")
    @click.option("--name", default=None, help="Model name in the package.")
    @click.option("--author", "authors", multiple=True, help="Author name (repeatable).")
    @click.option("--validate/--no-validate", default=True, show_default=True,
                  help="Run bioimage.io's own test on the written package.")
    def export(model_path, fmt, out, test_image, name, authors, validate):
        """Export MODEL for Fiji's deepImageJ, ilastik, napari and the BioImage Model Zoo (README "Export")."""
        from artseg_core.io.modelfile import ModelFileError
        from artseg_core.predict.model import load_model

        try:
            model = load_model(model_path, device="cpu")
        except ModelFileError as e:
            _fail(str(e))
        try:
            import artseg_core.export as ex
        except ImportError as e:
            _fail(f"export needs the 'export' extra (pip install 'artseg[export]'): {e}")
        if fmt == "onnx":
            for kind, p in ex.export_onnx(model, out).items():
                click.echo(f"wrote {p} ({kind})")
            return
        img = None
        if test_image is not None:
            from artseg_core.io.images import read_image

            img = read_image(test_image)
        try:
            path = ex.export_bioimageio(model, out, test_image=img, name=name, authors=list(authors) or None)
        except ex.ExportError as e:
            _fail(str(e))
        click.echo(f"wrote {path}")
        if validate:
            ok, summary = ex.validate_package(path)
            if not ok:
                click.echo(summary, err=True)
                _fail(f"the package {path} does not pass bioimage.io's test", code=1)
            click.echo("bioimage.io test: passed")
