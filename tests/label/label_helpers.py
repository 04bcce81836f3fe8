"""Helpers of the ``artseg label`` tests: the CLI server as a subprocess, ground truth, screenshots."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]


def truth_labels(plate: Path) -> dict[str, str]:
    """The phantom plate's true labels, {file name: clean|artifact}."""
    with open(plate / "labels.csv", newline="") as fh:
        return {r["image"]: r["label"] for r in csv.DictReader(fh)}


def read_csv_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as fh:
        return [(r["image"], r["label"]) for r in csv.DictReader(fh)]


class LabelProcess:
    """``python -m artseg_core.cli label ...`` running in the background; ``url`` is the address it printed."""

    def __init__(self, *args, timeout: float = 120.0):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")]
                                                                               if p])}
        self.proc = subprocess.Popen([sys.executable, "-m", "artseg_core.cli", "label", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.output: list[str] = []
        t0 = time.monotonic()
        self.url = None
        while time.monotonic() - t0 < timeout:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            m = re.search(r"open (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            self.proc.kill()
            raise RuntimeError("artseg label did not print its address:\n" + "".join(self.output))
        self.base = self.url.split("/?token=")[0]
        self.token = self.url.split("token=")[1]

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a laptop dies."""
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc.stdout:
            self.proc.stdout.close()


def open_app(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("window.artseg && window.artseg.ready === true", timeout=30000)


def wait_saved(page) -> None:
    page.wait_for_function("window.artseg.pending === 0", timeout=30000)
    assert page.evaluate("window.artseg.errors") == 0, page.text_content("#status")


def mask_pixels(page) -> int:
    """How many pixels of the mask editor's canvas are painted (alpha >= 128)."""
    return page.evaluate("""() => { const M = window.artseg.mask;
        const d = M.mctx.getImageData(0, 0, M.mask.width, M.mask.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] >= 128; return n; }""")


def screenshot_checked(page, path: Path, docs_name: str | None = None, min_std: float = 8.0) -> np.ndarray:
    """Take a screenshot, check that it is not blank, and (with ARTSEG_DOCS_SCREENSHOTS=1) copy it into docs/."""
    from PIL import Image

    page.screenshot(path=str(path))
    a = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert a.std() > min_std, f"{path}: screenshot looks blank (std {a.std():.1f})"
    assert len(np.unique(a)) > 32, f"{path}: screenshot has too few grey levels"
    if docs_name and os.environ.get("ARTSEG_DOCS_SCREENSHOTS"):
        docs = REPO / "docs"
        docs.mkdir(exist_ok=True)
        pic = Image.open(path).convert("RGB")
        pic = pic.resize((pic.width // 2, pic.height // 2), Image.LANCZOS)  # small files for the repo
        pic.quantize(32).save(docs / docs_name, optimize=True)
    return a
