"""Click commands ``artseg batch`` and ``artseg report``, added to the ``artseg`` group by cli.py with
``register(main, cli_module)`` (which passes the shared option helpers; no import cycle with cli.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["register"]


def register(group: click.Group, cli) -> None:
    """Define ``batch`` and ``report`` with the helpers of the ``cli`` module and add them to ``group``."""
    _fail, _setup_logging = cli._fail, cli._setup_logging
    make_predict_options, predict_options = cli.make_predict_options, cli.predict_options

    @group.command()
    @click.argument("plate")
    @click.option("-m", "--model", "model_path", type=click.Path(path_type=Path), default=None,
                  help="Model file (.artseg). Not needed with --pipeline.")
    @click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
                  help="Output folder; rerunning into it resumes.")
    @click.option("-w", "--workers", type=click.IntRange(1), default=1, show_default=True,
                  help="Worker processes (each loads the model once; torch threads = cores // workers).")
    @click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
                  help="Run on a Dask distributed cluster (workers must see the same files).")
    @click.option("--dask", "dask_mode", type=click.Choice(["local"]), default=None,
                  help="'local': start a Dask cluster on 127.0.0.1 with --workers worker processes.")
    @click.option("--channel", default=None,
                  help="Brightfield channel when the plate has several (1, w1, ch1, 'Bright Field', LoadData name).")
    @click.option("--name-regex", default=None,
                  help="Regex with named groups (plate, well or row+col, field, channel, plane, timepoint) for "
                       "file names no built-in convention reads.")
    @click.option("--max-failures", type=click.IntRange(1), default=None,
                  help="Stop after this many failed images (exit code 3).")
    @click.option("--retry-failed/--no-retry-failed", default=True, show_default=True,
                  help="On a rerun, also redo images whose last attempt failed.")
    @click.option("--report/--no-report", "make_report", default=True, show_default=True,
                  help="Write OUT/report.html at the end.")
    @click.option("--dry-run", is_flag=True, help="List what would run; write nothing.")
    @click.option("--overwrite", is_flag=True,
                  help="Start over in OUT: remove the earlier run's journal, tables, outputs and report first.")
    @click.option("--include-derived", is_flag=True,
                  help="Also process files in masks/, nuclei_masks/ and ArtSeg output folders inside PLATE.")
    @click.option("--allow-duplicates", is_flag=True,
                  help="Process two files for the same plate, well, field and channel (refused by default).")
    @click.option("--loaddata", "loaddata", default=None, is_flag=False, flag_value="auto", metavar="[NAME=CH,...]",
                  help="Also write OUT/loaddata.csv for CellProfiler's LoadData: every channel of each field plus "
                       "its mask (image ArtifactMask). Name the channels, e.g. Brightfield=1,Nuclei=2 (default: "
                       "Brightfield for the processed channel, Channel<id> for the others).")
    @predict_options
    @click.option("--pipeline", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="Run this CellProfiler pipeline over the plate instead (sharded by image sets).")
    @click.option("--plugins-directory", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                  help="CellProfiler plugins folder (with --pipeline).")
    @click.option("--shards", type=click.IntRange(1), default=None,
                  help="Image-set ranges for --pipeline (default: --workers).")
    @click.option("--input-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                  help="CellProfiler Default Input Folder for --pipeline (default: the plate folder).")
    @click.option("--cellprofiler", "cp_exe", default=None, help="CellProfiler executable (default: python -m "
                  "cellprofiler of this environment).")
    @click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    @click.option("-v", "--verbose", count=True)
    def batch(plate, model_path, out, workers, scheduler, dask_mode, channel, name_regex, max_failures, retry_failed,
              make_report, dry_run, overwrite, include_derived, allow_duplicates, loaddata, pipeline,
              plugins_directory, shards, input_dir, cp_exe, device, quiet, verbose, **kw):
        """Mask artifacts on a whole plate: PLATE is a folder (searched recursively), a glob, or a CSV manifest
        (a 'path' column, or a CellProfiler LoadData table).

        Writes per image what 'artseg predict' writes (under OUT/outputs/), OUT/results.csv (one row per image with
        plate, well, field), OUT/wells.csv, OUT/skipped.csv (files left out, and why), OUT/batch.log and
        OUT/report.html. Interrupted runs resume: rerun the same command. A run into an OUT made from other input
        files, another model or other analysis options is refused (--overwrite starts over); output options
        (--prob, --roi, --cleaned ...) can be added to a finished run.

        Exit code 0 all images fine, 1 some failed, 2 usage error (nothing run), 3 stopped by --max-failures,
        4 stopped because worker processes kept dying, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM.
        """
        from artseg_core.io.modelfile import ModelFileError
        from artseg_core.batch.cpshard import CellProfilerError
        from artseg_core.batch.manifest import ManifestError
        from artseg_core.batch.runner import BatchError

        _setup_logging(verbose)
        cli._warnings_to_log()
        from artseg_core.batch.loaddata import parse_channel_names, write_loaddata

        try:
            ld_names = parse_channel_names(loaddata)
        except ValueError as e:
            _fail(str(e))
        try:
            if pipeline is not None:
                from artseg_core.batch.cpshard import run_pipeline_sharded

                s = run_pipeline_sharded(pipeline, plate, out, plugins_directory=plugins_directory, input_dir=input_dir,
                                         workers=workers, shards=shards, scheduler=scheduler,
                                         dask_local=dask_mode == "local", cellprofiler=cp_exe, dry_run=dry_run,
                                         progress=not quiet, report=make_report, echo=click.echo)
                for note in s.notes:
                    click.echo(f"note: {note}", err=True)
                click.echo(s.line())
                if s.report is not None:
                    click.echo(f"report: {s.report}")
                sys.exit(s.exit_code)
            if model_path is None:
                _fail("--model is required (unless --pipeline is given)")
            from artseg_core.batch.runner import run_batch

            options = make_predict_options(**kw)
            s = run_batch(plate, model_path, out, workers=workers, scheduler=scheduler, dask_local=dask_mode == "local",
                          options=options, channel=channel, name_regex=name_regex, max_failures=max_failures,
                          dry_run=dry_run, progress=not quiet, retry_failed=retry_failed, report=make_report,
                          device=device, overwrite=overwrite, include_derived=include_derived,
                          allow_duplicates=allow_duplicates, echo=click.echo)
        except KeyboardInterrupt as e:
            signum = getattr(e, "signum", 2)
            click.echo("artseg: interrupted" + (" (SIGTERM)" if signum == 15 else "")
                       + "; finished images are recorded - rerun the same command to continue", err=True)
            sys.exit(128 + signum)
        except (ManifestError, BatchError, ModelFileError, CellProfilerError, ValueError) as e:
            _fail(str(e))
        for note in s.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(s.line())
        if s.report is not None:
            click.echo(f"report: {s.report}")
        if loaddata is not None and not dry_run and s.exit_code in (0, 1):
            try:
                t = write_loaddata(out, plate, channel=channel, name_regex=name_regex, names=ld_names)
            except (ManifestError, ValueError, FileNotFoundError) as e:
                _fail(str(e))
            click.echo(f"loaddata: {t.path} ({t.rows} fields; images {', '.join(t.names)})")
            for note in t.left_out:
                click.echo(f"note: left out of loaddata.csv: {note}", err=True)
        sys.exit(s.exit_code)


    @group.command()
    @click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
    def report(out):
        """Write OUT/report.html for a plate run folder made by 'artseg batch' (with a model, or with --pipeline)."""
        from artseg_core.batch.report import write_report

        try:
            path = write_report(out)
        except FileNotFoundError as e:
            _fail(str(e))
        click.echo(str(path))
