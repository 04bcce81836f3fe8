"""Fixtures of the ``artseg label`` tests: a 20-field phantom plate, the CLI server as a subprocess, and headless
Debian Chromium driven by Playwright (the tests that need it skip when /usr/bin/chromium is missing)."""
from __future__ import annotations

from pathlib import Path

import pytest
from label_helpers import CHROMIUM, LabelProcess


@pytest.fixture(scope="session")
def plate20(tmp_path_factory) -> Path:
    """A phantom plate of 20 fields (2 x 5 wells x 2 fields, 192x192, half with artifacts)."""
    from artseg_core.data import phantoms

    out = tmp_path_factory.mktemp("plate20")
    phantoms.make_plate(out, rows=2, cols=5, fields=2, prevalence=0.5, seed=3, shape=(192, 192))
    return out


@pytest.fixture
def start_label():
    """Start ``artseg label`` with the given arguments; every server started is stopped at the end."""
    procs = []

    def start(*args, **kw) -> LabelProcess:
        p = LabelProcess(*args, **kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


@pytest.fixture(scope="session")
def chromium_browser():
    """Headless Debian Chromium through Playwright's sync API (one per session)."""
    if not CHROMIUM.exists():
        pytest.skip("browser test: /usr/bin/chromium is missing (make chromium installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser test: playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(chromium_browser):
    """A fresh 1280x800 page; JavaScript errors fail the test."""
    ctx = chromium_browser.new_context(viewport={"width": 1280, "height": 800})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors: {errors}"




@pytest.fixture(scope="session")
def quick_model_path(plate20, tmp_path_factory) -> Path:
    """A model trained briefly on plate20 itself (profile 'tiny', few epochs and steps): its scores are real
    classifier outputs, which is all the ordering needs, at a fraction of the shared tiny model's training time."""
    import artseg_core

    work = tmp_path_factory.mktemp("quick_model")
    model = artseg_core.train(plate20 / "images", plate20 / "labels.csv", profile="tiny", seed=0, device="cpu",
                              work_dir=work / "train", progress=False, cls_epochs=4, unet_steps=20)
    path = work / "model.artseg"
    model.save(path)
    return path
