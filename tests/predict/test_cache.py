"""One model cache (issue 13c): one load per file and device, shared across threads, reloaded when the file changes."""
from __future__ import annotations

import os
import threading

import pytest

from artseg_core.predict import cache


@pytest.fixture()
def model_file(tmp_path):
    from artseg_core.nets.profiles import get_profile
    from artseg_core.predict.model import ArtifactModel

    prof = get_profile("tiny")
    path = tmp_path / "m.artseg"
    ArtifactModel(prof, *ArtifactModel.build_networks(prof), device="cpu").save(path)
    cache.clear_model_cache()
    yield path
    cache.clear_model_cache()


def test_one_load_shared_by_threads_and_reloaded_when_the_file_changes(model_file, monkeypatch):
    from artseg_core.predict import model as model_mod

    calls = []
    real = model_mod.load_model

    def counting(path, device="cpu"):
        calls.append(str(path))
        return real(path, device=device)

    monkeypatch.setattr(model_mod, "load_model", counting)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.load_model_cached(model_file, "cpu")))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(m) for m in got}) == 1
    assert cache.load_model_cached(str(model_file), "cpu") is got[0]
    st = os.stat(model_file)
    os.utime(model_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # a retrained model in its place
    assert cache.load_model_cached(model_file, "cpu") is not got[0] and len(calls) == 2


def test_missing_file_is_a_model_file_error(tmp_path):
    from artseg_core.io.modelfile import ModelFileError

    with pytest.raises(ModelFileError, match="not found"):
        cache.load_model_cached(tmp_path / "nope.artseg")
