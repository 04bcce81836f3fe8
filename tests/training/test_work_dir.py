"""A reused --work-dir never resumes another training (issue 15.2, 15.7): the work folder records what it was trained
on, a mismatch is refused with what differs, --restart starts over, and broken checkpoints get ArtSeg's message."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from artseg_core.cli.main import main

pytestmark = pytest.mark.slow


def _plate(root: Path, seed: int) -> Path:
    from artseg_core.data import phantoms

    phantoms.make_plate(root, rows=1, cols=3, fields=2, prevalence=0.5, seed=seed, shape=(96, 96))
    return root / "images"


def _train(images: Path, out: Path, work: Path, *extra: str):
    args = ["train", str(images), "-o", str(out), "--profile", "tiny", "--epochs", "2", "--unet-steps", "4",
            "--work-dir", str(work), "--device", "cpu", *extra]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _summary(model: Path) -> dict:
    from artseg_core.io.modelfile import load_model_file

    return load_model_file(model)[0]["summary"]


def test_reused_work_dir_refuses_other_data_and_restart_trains_from_scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTSEG_THREADS", "1")
    a, b = _plate(tmp_path / "a", 1), _plate(tmp_path / "b", 2)
    work = tmp_path / "work"
    r = _train(a, tmp_path / "a.artseg", work)
    assert r.exit_code == 0, r.output
    assert json.loads((work / "fingerprint.json").read_text())["sha256"]
    # the same work folder with other images: refused, saying what differs and how to start over
    r = _train(b, tmp_path / "b.artseg", work)
    assert r.exit_code == 2 and not (tmp_path / "b.artseg").exists()
    assert "6 image(s) added" in r.output and "6 image(s) removed" in r.output and "--restart" in r.output
    # another configuration: refused too, naming the setting
    r = _train(a, tmp_path / "a2.artseg", work, "--seed", "3")
    assert r.exit_code == 2 and "seed: 0 -> 3" in r.output
    # --restart trains on the new data from scratch (the old code ran 0 epochs and 0 steps here)
    r = _train(b, tmp_path / "b.artseg", work, "--restart")
    assert r.exit_code == 0, r.output
    s = _summary(tmp_path / "b.artseg")
    assert s["classifier"]["epochs_run"] == 2 and s["unet"]["steps_run"] == 4 and s["n_images"] == 6
    # how well the classifier fits its own training fields is recorded and told to the user
    fit = s["classifier"]["train_metrics"]
    assert fit["n"] == s["n_train"] == fit["tp"] + fit["fn"] + fit["fp"] + fit["tn"]
    assert fit["accuracy"] == pytest.approx((fit["tp"] + fit["tn"]) / fit["n"])
    assert f"classifier on its training fields: accuracy {fit['accuracy']:.2f}" in r.output
    # the same data again resumes (nothing left to do), as before
    r = _train(b, tmp_path / "b2.artseg", work)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("content, says", [
    (b"PK\x03\x04" + b"\0" * 40, "truncated or corrupt training checkpoint"),
    (b"hello, I am not a checkpoint", "not an ArtSeg training checkpoint"),
])
def test_broken_or_foreign_checkpoint_gets_artseg_message(tmp_path, monkeypatch, content, says):
    monkeypatch.setenv("ARTSEG_THREADS", "1")
    a = _plate(tmp_path / "a", 1)
    work = tmp_path / "work"
    r = _train(a, tmp_path / "a.artseg", work)
    assert r.exit_code == 0, r.output
    (work / "classifier.ckpt").write_bytes(content)
    r = _train(a, tmp_path / "a.artseg", work)
    assert r.exit_code == 2 and says in r.output and "classifier.ckpt" in r.output
    assert "weights_only" not in r.output and "Traceback" not in r.output
    assert _train(a, tmp_path / "a.artseg", work, "--restart").exit_code == 0


def test_checkpoints_without_a_record_are_refused(tmp_path):
    import torch

    from artseg_core.training.checkpoint import CheckpointError, check_work_dir, load_checkpoint, save_checkpoint

    work = tmp_path / "w"
    work.mkdir()
    save_checkpoint(work / "unet.ckpt", {"model": {}, "optimizer": {}})
    with pytest.raises(CheckpointError, match="without a record of what they were trained on"):
        check_work_dir(work, [], {"seed": 0})
    check_work_dir(work, [], {"seed": 0}, restart=True)
    assert not (work / "unet.ckpt").exists()
    save_checkpoint(work / "unet.ckpt", {"model": {}, "optimizer": {}})
    assert load_checkpoint(work / "unet.ckpt")["artseg_fingerprint"]
    # a checkpoint copied in from another work folder is recognised by the hash it carries
    other = tmp_path / "o"
    other.mkdir()
    check_work_dir(other, [], {"seed": 1})
    save_checkpoint(other / "unet.ckpt", {"model": {"w": torch.zeros(1)}, "optimizer": {}})
    (work / "unet.ckpt").write_bytes((other / "unet.ckpt").read_bytes())
    with pytest.raises(CheckpointError, match="copied from another work folder"):
        load_checkpoint(work / "unet.ckpt")
