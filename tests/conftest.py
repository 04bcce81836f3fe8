"""Shared fixtures: a small phantom plate and a tiny model trained once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


def pytest_ignore_collect(collection_path, config):
    """With ``-m engine`` (the numpy-2 environment: the engine alone, no CellProfiler, napari or browser), test
    modules without the ``engine`` marker are not even imported, so their imports of the faces cannot fail there."""
    if (config.getoption("markexpr", "") == "engine" and collection_path.suffix == ".py"
            and collection_path.name.startswith("test_")):
        return "pytest.mark.engine" not in collection_path.read_text(errors="replace")
    return None


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """../shared/data/real, or skip with the reason."""
    if not REAL.is_dir():
        pytest.skip(f"real images not available: {REAL} is absent (they live in ../shared, never in the repo)")
    return REAL


@pytest.fixture(scope="session")
def tiny_plate(tmp_path_factory) -> Path:
    """A small phantom plate (2x3 wells x 2 fields, 256x256, half with artifacts): images/, nuclei/, masks/, labels."""
    from artseg_core.data import phantoms

    out = tmp_path_factory.mktemp("tiny_plate")
    phantoms.make_plate(out, rows=2, cols=3, fields=2, prevalence=0.5, seed=1, shape=(256, 256))
    return out


@pytest.fixture(scope="session")
def trained_model_path(tmp_path_factory) -> Path:
    """A tiny ArtSeg model trained on its own phantom plate (profile 'tiny'); shared by all face tests."""
    import artseg_core
    from artseg_core.data import phantoms

    work = tmp_path_factory.mktemp("tiny_model")
    plate = work / "plate"
    phantoms.make_plate(plate, rows=4, cols=6, fields=2, prevalence=0.5, seed=7, shape=(256, 256))
    model = artseg_core.train(plate / "images", plate / "labels.csv", profile="tiny", seed=0,
                              work_dir=work / "train", progress=False)
    path = work / "model.artseg"
    model.save(path)
    return path
