"""Real images: predict every image of a folder with a trained model and draw a contact sheet of overlays.

    python bench/real_contact_sheet.py --model demo_out/model.artseg \
        [--images ../shared/data/real/ebony_watson] [--out bench_out/real_ebony]

Runs ``artseg predict`` (the engine's ``predict_files``, gate off so that every image is segmented) on every image,
checks that each mask has the image's size, and writes ``contact_sheet.png``: one thumbnail per image with the
predicted artifact outlines, its name, p_artifact and artifact area fraction. Prints one JSON line (images,
failures, masks of the right size, mean/max area fraction, flagged count, seconds).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "real" / "ebony_watson")
    ap.add_argument("--out", type=Path, default=Path("bench_out/real_ebony"))
    ap.add_argument("--cols", type=int, default=6)
    a = ap.parse_args(argv)
    if not a.images.is_dir():
        raise SystemExit(f"{a.images}: no such folder (the real images live in ../shared/data/real)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from artseg_core import load_model
    from artseg_core.io.images import list_images, read_image
    from artseg_core.predict.files import PredictOptions, predict_files

    files = list_images([a.images])
    model = load_model(a.model)
    t = time.perf_counter()
    predict_files(model, files, a.out, PredictOptions(mask=True, overlay=True, gate=False), progress=False)
    seconds = time.perf_counter() - t
    with open(a.out / "artseg_results.csv") as fh:
        rows = {Path(r["image"]).stem: r for r in csv.DictReader(fh)}
    right_size, fractions, flagged, failed = 0, [], 0, 0
    n = len(files)
    rows_n = math.ceil(n / a.cols)
    fig, axes = plt.subplots(rows_n, a.cols, figsize=(2.6 * a.cols, 2.9 * rows_n), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, f in zip(axes.ravel(), files):
        r = rows.get(f.stem, {})
        if r.get("status") != "ok":
            failed += 1
            ax.set_title(f"{f.stem[:16]}\nFAILED", fontsize=7)
            continue
        mask = read_image(a.out / f"{f.stem}_mask.tif", allow_constant=True)
        right_size += int(mask.shape == read_image(f).shape)
        frac = float(r["area_fraction"])
        fractions.append(frac)
        flagged += r["flagged"] == "True"
        ax.imshow(plt.imread(a.out / f"{f.stem}_overlay.png"))
        ax.set_title(f"{f.stem[:16]}\np={float(r['p_artifact']):.2f} area={100 * frac:.1f}%", fontsize=7)
    fig.suptitle(f"ArtSeg on {a.images.name} ({n} images), model {a.model.name}", fontsize=9)
    fig.tight_layout()
    sheet = a.out / "contact_sheet.png"
    fig.savefig(sheet, dpi=80)
    line = {"bench": "real_contact_sheet", "images": n, "failed": failed, "masks_right_size": right_size,
            "flagged": int(flagged), "mean_area_fraction": round(sum(fractions) / max(len(fractions), 1), 4),
            "max_area_fraction": round(max(fractions, default=0.0), 4), "seconds": round(seconds, 1),
            "sheet": str(sheet)}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
