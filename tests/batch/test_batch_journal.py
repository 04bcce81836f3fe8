"""Plate runner: the append-only resume journal and the results/well tables built from it."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from artseg_core.batch.journal import Journal, read_journal
from artseg_core.batch.tables import WELL_COLUMNS, csv_text, well_rows


def test_append_reopen_and_last_record_wins(tmp_path):
    p = tmp_path / "j.jsonl"
    with Journal(p) as j:
        assert len(j) == 0
        j.append({"key": "a", "status": "error", "row": {"x": np.float32(0.5)}})
        j.append({"key": "b", "status": "ok", "row": {"n": np.int64(3)}})
        j.append({"key": "a", "status": "ok", "row": {"x": 1.0}})
    lines = p.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x) for x in lines)
    done = read_journal(p)
    assert list(done) == ["a", "b"] and done["a"]["status"] == "ok" and done["b"]["row"]["n"] == 3


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    p = tmp_path / "j.jsonl"
    with Journal(p) as j:
        j.append({"key": "a", "status": "ok"})
        j.append({"key": "b", "status": "ok"})
    good = p.read_bytes()
    p.write_bytes(good + b'{"key":"c","stat')  # a kill -9 in the middle of a write
    assert list(read_journal(p)) == ["a", "b"]
    with Journal(p) as j:
        assert j.torn_bytes == len(b'{"key":"c","stat') and list(j.done) == ["a", "b"]
        j.append({"key": "c", "status": "ok"})
    assert p.read_bytes() == good + b'{"key":"c","status":"ok"}\n'
    assert list(read_journal(p)) == ["a", "b", "c"]


def test_corrupt_middle_line_is_an_error(tmp_path):
    p = tmp_path / "j.jsonl"
    p.write_text('{"key":"a"}\nnot json\n{"key":"b"}\n')
    with pytest.raises(ValueError, match="corrupt journal line"):
        read_journal(p)
    p.write_text('{"nokey":1}\n')
    with pytest.raises(ValueError, match="no 'key'"):
        Journal(p)


def test_failed_write_leaves_no_partial_line(tmp_path, monkeypatch):
    p = tmp_path / "j.jsonl"
    j = Journal(p)
    j.append({"key": "a", "status": "ok"})
    real_write = os.write
    calls = {"n": 0}

    def short_then_full_disk(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:5]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full_disk)
    with pytest.raises(OSError, match="No space"):
        j.append({"key": "b", "status": "ok"})
    monkeypatch.setattr(os, "write", real_write)
    j.append({"key": "c", "status": "ok"})
    j.close()
    assert list(read_journal(p)) == ["a", "c"] and "b" not in j.done


def test_well_summary():
    rows = [
        {"plate": "P", "well": "A01", "row": 1, "col": 1, "status": "ok", "flagged": True, "area_fraction": 0.2,
         "p_artifact": 0.9, "defocus": False, "bad_illumination": True, "saturated": False},
        {"plate": "P", "well": "A01", "row": 1, "col": 1, "status": "ok", "flagged": "False", "area_fraction": "0",
         "p_artifact": "0.1", "defocus": "True", "bad_illumination": "True", "saturated": "False"},
        {"plate": "P", "well": "A01", "row": 1, "col": 1, "status": "error", "error": "bad"},
        {"plate": "P", "well": "A02", "row": 1, "col": 2, "status": "error", "error": "bad"},
        {"plate": "P", "well": "B01", "row": 2, "col": 1, "status": "ok", "flagged": False, "area_fraction": 0.0,
         "p_artifact": 0.0, "defocus": False, "bad_illumination": False, "saturated": False},
    ]
    w = well_rows(list(reversed(rows)))
    assert [x["well"] for x in w] == ["A01", "A02", "B01"]
    a = w[0]
    assert (a["fields"], a["ok"], a["failed"], a["flagged_fields"], a["flagged_fraction"]) == (3, 2, 1, 1, 0.5)
    assert a["mean_area_fraction"] == pytest.approx(0.1) and a["max_area_fraction"] == pytest.approx(0.2)
    assert (a["qc_flagged_fields"], a["defocus_fields"], a["bad_illumination_fields"]) == (2, 1, 2)
    assert w[1]["ok"] == 0 and w[1]["mean_area_fraction"] == "" and w[1]["flagged_fraction"] == ""
    text = csv_text(w, WELL_COLUMNS)
    assert text.splitlines()[0].split(",") == WELL_COLUMNS and len(text.splitlines()) == 4


def test_run_lock_excludes_a_second_run_and_dies_with_its_holder(tmp_path):
    import subprocess
    import sys

    from artseg_core.batch.journal import FolderBusyError, run_lock

    with run_lock(tmp_path):
        with pytest.raises(FolderBusyError, match="in use by another run"):
            run_lock(tmp_path).acquire()
    with run_lock(tmp_path):  # released: can be taken again
        pass
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                               "from artseg_core.batch.journal import run_lock; l = run_lock(sys.argv[2]).acquire();"
                               "print('locked', flush=True); time.sleep(600)",
                               str(__import__("pathlib").Path(__file__).resolve().parents[2]), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
            run_lock(tmp_path).acquire()
    finally:
        holder.kill()  # like kill -9: the OS drops the lock
        holder.wait()
    with run_lock(tmp_path):
        pass
