"""``artseg label`` in a real headless browser: keyboard labelling with a killed and restarted server, the grid,
the mask editor (brush, polygon, eraser, undo, zoom), and the order a model gives."""
from __future__ import annotations

import time

import numpy as np
import pytest

from label_helpers import mask_pixels, open_app, read_csv_rows, screenshot_checked, truth_labels, wait_saved

pytestmark = [pytest.mark.browser]


def _label_current(page, truth, use_digits=False) -> str:
    name = page.text_content("#field-name")
    key = {"clean": "c", "artifact": "a"}[truth[name]]
    if use_digits:
        key = {"c": "1", "a": "2"}[key]
    page.keyboard.press(key)
    return name


def test_label_20_fields_by_keyboard_kill_and_resume(plate20, tmp_path, start_label, page):
    from artseg_core.io.labels import read_labels_csv

    truth = truth_labels(plate20)
    images = plate20 / "images"
    labels = tmp_path / "labels.csv"
    srv = start_label(images, "--labels", labels)
    assert srv.base.startswith("http://127.0.0.1:"), srv.url
    open_app(page, srv.url)
    assert page.text_content("#count").strip() == "0 / 20 labelled"
    assert page.text_content("#field-pos") == "field 1 of 20"

    t0 = time.perf_counter()
    done = [_label_current(page, truth, use_digits=i % 3 == 0) for i in range(10)]
    wait_saved(page)
    per_field = (time.perf_counter() - t0) / 10
    rows = read_csv_rows(labels)
    assert rows == [(n, truth[n]) for n in sorted(done)]
    assert page.text_content("#count").strip() == "10 / 20 labelled"
    skipped = page.text_content("#field-name")
    page.keyboard.press("s")                              # field 11 skipped, field 12 labelled
    assert page.text_content("#field-pos") == "field 12 of 20"
    twelfth = _label_current(page, truth)
    wait_saved(page)

    # Kill the server without warning: every answer is already on disk, and the file is whole.
    srv.kill()
    assert len(read_labels_csv(labels, images)) == 11
    srv2 = start_label(images, "--labels", labels)
    assert srv2.token != srv.token
    open_app(page, srv2.url)
    assert page.text_content("#count").strip() == "11 / 20 labelled"
    assert page.text_content("#field-pos") == "field 13 of 20"  # resumes after the last answer

    # back to the skipped field: a wrong answer corrected, a label cleared and set again
    page.keyboard.press("b")
    assert page.text_content("#field-name") == twelfth
    assert page.text_content("#field-label") == truth[twelfth]  # existing labels are shown
    page.keyboard.press("ArrowLeft")
    name = page.text_content("#field-name")
    assert name == skipped and page.text_content("#field-label") == "no label"
    wrong = {"clean": "a", "artifact": "c"}[truth[name]]
    page.keyboard.press(wrong)
    assert page.text_content("#field-name") == twelfth
    page.keyboard.press("Backspace")
    assert page.text_content("#field-name") == name
    assert page.text_content("#field-label") == {"clean": "artifact", "artifact": "clean"}[truth[name]]
    page.keyboard.press("x")
    assert page.text_content("#field-label") == "no label"
    wait_saved(page)
    assert name not in dict(read_csv_rows(labels))
    _label_current(page, truth)
    assert page.text_content("#field-pos") == "field 12 of 20"
    page.keyboard.press("ArrowRight")
    while True:
        pos = page.text_content("#field-pos")
        _label_current(page, truth)
        if pos == "field 20 of 20":
            break
    wait_saved(page)
    assert page.text_content("#count").strip() == "20 / 20 labelled"
    assert page.is_visible("#done")
    rows = read_csv_rows(labels)
    assert rows == sorted(truth.items())
    pairs = read_labels_csv(labels, images)  # the format artseg train reads
    assert {p.name: lbl for p, lbl in pairs} == {n: int(v == "artifact") for n, v in truth.items()}
    print(f"\nkeyboard labelling in the browser: {per_field * 1000:.0f} ms per field (1 key each, written to disk)")

    # The field on screen is the normalised image: a screenshot of label mode is not blank.
    page.keyboard.press("b")
    screenshot_checked(page, tmp_path / "label.png", "label-mode.png")

    # Grid: every field with its label's colour; clicking one opens it in label mode.
    page.keyboard.press("g")
    page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth)")
    assert page.locator(".tile").count() == 20
    n_art = sum(v == "artifact" for v in truth.values())
    assert page.locator(".tile.artifact").count() == n_art
    assert page.locator(".tile.clean").count() == 20 - n_art
    screenshot_checked(page, tmp_path / "grid.png")
    page.click(".tile >> nth=3")
    assert page.is_visible("#label-view")
    assert page.text_content("#field-name") == sorted(truth)[3]


def _drag(page, pts):
    xy = [page.evaluate(f"window.artseg.imageToClient({x}, {y})") for x, y in pts]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for p in xy[1:]:
        page.mouse.move(*p, steps=8)
    page.mouse.up()


def _click_image(page, x, y):
    cx, cy = page.evaluate(f"window.artseg.imageToClient({x}, {y})")
    page.mouse.click(cx, cy)


def test_mask_brush_polygon_eraser_undo_save(plate20, tmp_path, start_label, page):
    from artseg_core.io.images import read_image
    from artseg_core.io.labels import find_mask

    images = plate20 / "images"
    masks = tmp_path / "masks"
    srv = start_label(images, "--labels", tmp_path / "labels.csv", "--masks", masks)
    open_app(page, srv.url)
    name = page.text_content("#field-name")
    page.keyboard.press("m")
    page.wait_for_function("window.artseg.maskReady === true")
    assert page.text_content("#mask-source") == "empty mask"

    page.keyboard.press("b")                     # brush, 20 px wide
    _drag(page, [(20, 30), (120, 30)])
    page.keyboard.press("p")                     # polygon, drawn after zooming in around it
    cx, cy = page.evaluate("window.artseg.imageToClient(90, 135)")
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, -200)
    page.wait_for_timeout(100)
    assert page.evaluate("window.artseg.mask.scale") > 2.0
    for x, y in [(40, 100), (140, 100), (140, 170), (40, 170)]:
        _click_image(page, x, y)
    page.keyboard.press("Enter")
    page.keyboard.press("f")                     # fit again
    page.keyboard.press("b")
    _drag(page, [(165, 15), (185, 15)])          # a stroke that is undone
    page.keyboard.press("z")
    page.keyboard.press("e")                     # eraser across the polygon
    _drag(page, [(30, 135), (150, 135)])
    screenshot_checked(page, tmp_path / "mask.png", "label-mask-mode.png")
    page.keyboard.press("s")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('saved ')")
    wait_saved(page)

    path = masks / (name.rsplit(".", 1)[0] + "_mask.tif")
    assert path.is_file()
    assert find_mask(masks, images / name) == path  # where artseg train --masks looks
    m = read_image(path, allow_constant=True)
    assert m.shape == (192, 192) and m.dtype == np.uint8
    assert set(np.unique(m)) == {0, 255}
    assert (m[26:35, 22:119] == 255).all()           # brush stroke
    assert (m[104:124, 44:137] == 255).all()         # polygon above the erased band
    assert (m[148:167, 44:137] == 255).all()         # polygon below it
    assert (m[130:141, 30:151] == 0).all()           # erased band
    assert (m[5:25, 160:190] == 0).all()             # undone stroke
    assert (m[50:90, 150:190] == 0).all() and (m[180:, :30] == 0).all()
    assert 0.17 < (m > 0).mean() < 0.23  # about 20x100 + 100x70 - 100x20 px

    # Reopening the field starts from the saved mask.
    page.keyboard.press("Escape")
    page.keyboard.press("m")
    page.wait_for_function("window.artseg.maskReady === true")
    assert page.text_content("#mask-source") == "saved mask"
    assert mask_pixels(page) == int((m > 0).sum())


@pytest.mark.slow
def test_model_orders_least_certain_first_and_gives_masks(plate20, tmp_path, start_label, page, quick_model_path):
    import urllib.request

    from PIL import Image

    import artseg_core
    from artseg_core.io.images import read_image

    images = plate20 / "images"
    model = artseg_core.load_model(quick_model_path, device="cpu")
    thr = model.thresholds["classifier"]
    p = {f.name: model.classify(model.normalize(read_image(f))) for f in sorted(images.glob("*.tif"))}
    expected = sorted(p, key=lambda n: (abs(p[n] - thr), n))
    assert len(set(round(abs(v - thr), 4) for v in p.values())) > 5, "model gives too few distinct scores"

    srv = start_label(images, "--labels", tmp_path / "labels.csv", "--masks", tmp_path / "masks",
                      "--model", quick_model_path)
    open_app(page, srv.url)
    order = page.evaluate("window.artseg.fields.map(f => f.name)")
    assert order == expected
    margins = [abs(p[n] - thr) for n in order]
    assert margins == sorted(margins) and margins[0] < margins[-1]
    assert page.text_content("#field-name") == expected[0]
    guess = "artifact" if p[expected[0]] >= thr else "clean"
    assert page.text_content("#guess") == f"model: {guess} (p = {p[expected[0]]:.2f})"
    screenshot_checked(page, tmp_path / "model-label.png")

    # Mask mode starts from the model's mask for a field the model segments.
    name = max(p, key=p.get)
    with urllib.request.urlopen(f"{srv.base}/api/mask?name={name}&max=4096&token={srv.token}") as r:
        assert r.headers["X-ArtSeg-Mask-Source"] == "model"
        served = np.asarray(Image.open(r))[..., 3] >= 128
    want = model.predict(read_image(images / name)).mask
    assert np.array_equal(served, want)
    page.keyboard.press("g")
    page.click(f".tile[data-name='{name}']")
    page.keyboard.press("m")
    page.wait_for_function("window.artseg.maskReady === true")
    assert page.text_content("#mask-source") == "model's mask"
    screenshot_checked(page, tmp_path / "model-mask.png")


class _KnownModel:
    """Stands in for an ArtifactModel with known answers: p_artifact from the field's mean grey level (all distinct),
    and a square mask, so the page can be checked pixel by pixel without training."""

    thresholds = {"classifier": 0.5}

    def __init__(self, images):
        from artseg_core.imgproc.normalize import normalize
        from artseg_core.io.images import read_image

        names = sorted(p.name for p in images.glob("*.tif"))
        self.p_of_mean = {}
        for i, n in enumerate(names):  # p spread over (0, 1), in a scrambled order
            self.p_of_mean[float(normalize(read_image(images / n)).mean())] = (7 * i % 20 + 0.5) / 20
        self.p = {}

    def normalize(self, image):
        from artseg_core.imgproc.normalize import normalize

        return normalize(image)

    def classify(self, norm):
        return self.p_of_mean[float(norm.mean())]

    def predict(self, image):
        from types import SimpleNamespace

        m = np.zeros(image.shape, bool)
        m[40:100, 60:150] = True
        return SimpleNamespace(mask=m)


def test_model_order_guess_and_mask_in_the_page(plate20, tmp_path, page):
    from artseg_core.io.images import read_image
    from artseg_core.label import LabelSession, make_server

    images = plate20 / "images"
    model = _KnownModel(images)
    s = LabelSession(images, tmp_path / "labels.csv", masks_dir=tmp_path / "masks", model=model)
    srv = make_server(s)
    srv.start_background()
    try:
        open_app(page, srv.url)
        fields = page.evaluate("window.artseg.fields")
        margins = [abs(f["p_artifact"] - 0.5) for f in fields]
        assert margins == sorted(margins)
        assert margins[:2] == pytest.approx([0.025, 0.025]) and margins[-1] == pytest.approx(0.475)
        assert [f["guess"] for f in fields] == ["artifact" if f["p_artifact"] >= 0.5 else "clean" for f in fields]
        shown = [f"model: {f['guess']} (p = {f['p_artifact']:.2f})" for f in fields]
        assert page.text_content("#guess") == shown[0]
        assert page.text_content("#field-pos") == "field 1 of 20"
        page.keyboard.press("c")                       # the answer may differ from the guess
        assert page.text_content("#guess") == shown[1]
        page.keyboard.press("b")
        page.keyboard.press("m")
        page.wait_for_function("window.artseg.maskReady === true")
        assert page.text_content("#mask-source") == "model's mask"
        assert mask_pixels(page) == 60 * 90
        screenshot_checked(page, tmp_path / "model-mask.png")
        page.keyboard.press("e")                       # correct the model's mask: erase its left part
        page.evaluate("window.artseg.mask.size = 30")
        _drag(page, [(70, 30), (70, 110)])
        page.keyboard.press("s")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('saved ')")
        name = fields[0]["name"]
        m = read_image(tmp_path / "masks" / (name[:-4] + "_mask.tif"), allow_constant=True)
        assert (m[45:95, 90:145] == 255).all() and (m[45:95, 60:80] == 0).all() and (m[:35] == 0).all()
    finally:
        srv.shutdown()
        srv.server_close()


def test_full_size_field_zoom_pan_and_paint(tmp_path, page):
    """A 2556x2156 field (the ArtSeg paper's size) is edited at full resolution: zoom in, pan, paint, save."""
    from artseg_core.data import phantoms
    from artseg_core.io.files import write_tiff
    from artseg_core.io.images import read_image
    from artseg_core.label import LabelSession, make_server

    (tmp_path / "img").mkdir()
    f = phantoms.make_field((540, 640), seed=5, artifacts=["fibre"])
    write_tiff(tmp_path / "img" / "big.tif", np.kron(f.image, np.ones((4, 4), f.image.dtype))[:2156, :2556])
    s = LabelSession(tmp_path / "img", tmp_path / "labels.csv", masks_dir=tmp_path / "masks")
    srv = make_server(s)
    srv.start_background()
    try:
        open_app(page, srv.url)
        page.keyboard.press("m")
        page.wait_for_function("window.artseg.maskReady === true", timeout=60000)
        assert page.evaluate("[window.artseg.mask.mask.width, window.artseg.mask.mask.height]") == [2556, 2156]
        fit_scale = page.evaluate("window.artseg.mask.scale")
        cx, cy = (round(v) for v in page.evaluate("window.artseg.imageToClient(1800, 1500)"))
        x0, y0 = page.evaluate(f"(() => {{ const r = document.querySelector('#mask-canvas').getBoundingClientRect();"
                               f" const M = window.artseg.mask; return [({cx} - r.left - M.ox) / M.scale,"
                               f" ({cy} - r.top - M.oy) / M.scale]; }})()")  # the image point under the cursor
        page.mouse.move(cx, cy)
        for _ in range(8):
            page.mouse.wheel(0, -100)
        page.wait_for_timeout(200)
        scale = page.evaluate("window.artseg.mask.scale")
        assert scale > 4 * fit_scale
        assert page.evaluate(f"window.artseg.imageToClient({x0}, {y0})") == pytest.approx([cx, cy], abs=0.5)
        ox = page.evaluate("window.artseg.mask.ox")
        page.mouse.move(cx, cy)                         # pan 100 screen pixels left with the right button
        page.mouse.down(button="right")
        page.mouse.move(cx - 100, cy, steps=5)
        page.mouse.up(button="right")
        assert page.evaluate("window.artseg.mask.ox") == pytest.approx(ox - 100, abs=1.0)
        page.keyboard.press("b")
        _drag(page, [(1790, 1500), (1830, 1500)])       # 20 px brush, at full resolution
        screenshot_checked(page, tmp_path / "zoomed.png")
        page.keyboard.press("s")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('saved ')")
        m = read_image(tmp_path / "masks" / "big_mask.tif", allow_constant=True)
        assert m.shape == (2156, 2556)
        assert (m[1494:1507, 1786:1835] == 255).all()
        assert (m > 0).sum() < 60 * 25 and (m[:1400] == 0).all()
    finally:
        srv.shutdown()
        srv.server_close()
