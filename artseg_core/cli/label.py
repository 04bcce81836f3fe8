"""Click command ``artseg label``, added to the ``artseg`` group by cli/main.py with ``register(main, cli_module)``."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

__all__ = ["register"]


def register(group: click.Group, cli) -> None:
    """Define ``label`` with the helpers of the ``cli`` module and add it to ``group``."""
    _fail, _setup_logging = cli._fail, cli._setup_logging

    @group.command()
    @click.argument("images", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="labels.csv to read and rewrite after every answer (image,label; the format artseg train "
                       "reads). Default: IMAGES/labels.csv, else IMAGES/../labels.csv if it exists.")
    @click.option("-m", "--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  default=None, help="Model file: least certain fields first, its guess shown, its masks to correct.")
    @click.option("--masks", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Folder for the masks drawn in mask mode (<stem>_mask.tif, 0/255; artseg train --masks).")
    @click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
                  help="Port on 127.0.0.1 (0: a free one).")
    @click.option("--order", type=click.Choice(["file", "random"]), default="file", show_default=True,
                  help="Field order without --model.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of --order random.")
    @click.option("--plane", type=int, default=None, help="Plane to read from multi-page TIFFs.")
    @click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
    @click.option("--open", "open_browser", is_flag=True, help="Open the address in the default browser.")
    @click.option("-v", "--verbose", count=True)
    def label(images, labels, model_path, masks, port, order, seed, plane, device, open_browser, verbose):
        """Label the fields of IMAGES (clean / artifact) and correct masks in a local web app.

        Prints an address with a random token (127.0.0.1 only) and serves until Ctrl+C. Every answer is written
        to labels.csv at once; restarting resumes at the first field without a label.
        """
        from artseg_core.io.labels import LabelFileError
        from artseg_core.io.modelfile import ModelFileError
        from artseg_core.label import LabelSession, default_labels_path, make_server

        _setup_logging(verbose)
        labels = labels if labels is not None else default_labels_path(images)
        model = None
        if model_path is not None:
            from artseg_core.predict.model import load_model

            try:
                model = load_model(model_path, device=device)
            except ModelFileError as e:
                _fail(str(e))

        def progress(i, n):
            click.echo(f"\rscoring fields with the model: {i}/{n}", nl=i == n, err=True)

        try:
            session = LabelSession(images, labels, masks_dir=masks, model=model, order=order, seed=seed,
                                   plane=plane, progress=progress)
        except (LabelFileError, FileNotFoundError, ValueError) as e:
            _fail(str(e))
        try:
            server = make_server(session, port=port)
        except OSError as e:
            _fail(f"cannot listen on 127.0.0.1:{port}: {e}")
        st = session.state()
        click.echo(f"{len(st['fields'])} fields, {st['n_labelled']} labelled; labels: {session.labels_path}"
                   + (f"; masks: {session.masks_dir}" if session.masks_dir else ""))
        click.echo(f"ArtSeg label: open {server.url}")
        click.echo("Ctrl+C stops (every answer is already saved).")
        sys.stdout.flush()
        if open_browser:
            import webbrowser

            webbrowser.open(server.url)
        def _stop(*_):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
