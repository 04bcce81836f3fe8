"""``artseg label`` without a browser: the session (labels.csv rewrites) and the server's access rules."""
from __future__ import annotations

import http.client
import json

import pytest

from artseg_core.label import LabelSession, make_server


@pytest.fixture
def server(plate20, tmp_path):
    s = LabelSession(plate20 / "images", tmp_path / "labels.csv", masks_dir=tmp_path / "masks")
    srv = make_server(s)
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(srv, path, method="GET", body=None, headers=None):
    host, port = srv.server_address[:2]
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.putrequest(method, path, skip_accept_encoding=True)  # the path goes out exactly as written
    for k, v in (headers or {}).items():
        c.putheader(k, v)
    c.putheader("Content-Length", str(len(body or b"")))
    c.endheaders(body)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def test_only_localhost_and_only_with_token(server):
    assert server.server_address[0] == "127.0.0.1"
    t = server.token
    assert len(t) >= 20
    assert _get(server, "/")[0] == 403
    assert _get(server, "/api/state")[0] == 403
    assert _get(server, "/api/state?token=wrong")[0] == 403
    assert _get(server, "/api/state", headers={"X-ArtSeg-Token": t[:-1]})[0] == 403
    assert _get(server, "/api/label", "POST", b'{"name": "phantom_A01_s1_w1.tif", "label": "clean"}')[0] == 403
    assert not server.session.labels
    st, body = _get(server, f"/api/state?token={t}")
    assert st == 200 and len(json.loads(body)["fields"]) == 20
    assert _get(server, "/api/state", headers={"X-ArtSeg-Token": t})[0] == 200


@pytest.mark.parametrize("path", [
    "/../../etc/passwd", "/static/../../etc/passwd", "/static/..%2f..%2fetc%2fpasswd", "/static/__init__.py",
    "/api/image?name=../../etc/passwd", "/api/image?name=%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/image?name=/etc/passwd", "/api/mask?name=../labels.csv", "/api/info?name=../../../../etc/passwd",
])
def test_paths_outside_the_folder_are_refused(server, path):
    sep = "&" if "?" in path else "?"
    st, body = _get(server, f"{path}{sep}token={server.token}")
    assert st in (403, 404), (path, st)
    assert b"root:" not in body


def test_posts_outside_the_folder_are_refused(server, tmp_path):
    t = server.token
    st, _ = _get(server, f"/api/label?token={t}", "POST", b'{"name": "../../etc/passwd", "label": "clean"}')
    assert st == 404
    st, _ = _get(server, f"/api/mask?token={t}&name=../../x.tif", "POST", b"\x89PNG")
    assert st == 404
    st, _ = _get(server, f"/api/label?token={t}", "POST", b'{"name": "phantom_A01_s1_w1.tif", "label": "maybe"}')
    assert st == 400
    assert not (tmp_path / "labels.csv").exists()


def test_rewrite_keeps_other_rows_and_refuses_bad_files(plate20, tmp_path):
    from artseg_core.io.labels import LabelFileError

    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("image,label\nphantom_B05_s2_w1.tif,yes\nelsewhere/other.tif,clean\n")
    s = LabelSession(plate20 / "images", csv_path)
    assert s.labels == {"phantom_B05_s2_w1.tif": "artifact"}
    s.set_label("phantom_A01_s1_w1.tif", "clean")
    assert csv_path.read_text() == ("image,label\nphantom_A01_s1_w1.tif,clean\nphantom_B05_s2_w1.tif,artifact\n"
                                    "elsewhere/other.tif,clean\n")
    s.set_label("phantom_B05_s2_w1.tif", None)
    assert "phantom_B05_s2_w1.tif" not in csv_path.read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\nphantom_A01_s1_w1.tif,perhaps\n")
    with pytest.raises(LabelFileError, match="line 2"):
        LabelSession(plate20 / "images", bad)
    s2 = LabelSession(plate20 / "images", tmp_path / "r.csv", order="random", seed=1)
    assert sorted(s2.order) == sorted(s.order) and s2.order != s.order


def test_large_field_is_sent_down_sampled_and_mask_saved_full_size(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from artseg_core.io.files import write_tiff
    from artseg_core.io.images import read_image
    from artseg_core.label.session import MASK_MAX_SIDE

    h, w = 2400, 4800
    img = (np.random.default_rng(0).integers(0, 4000, (h, w))).astype(np.uint16)
    (tmp_path / "img").mkdir()
    write_tiff(tmp_path / "img" / "big.tif", img)
    s = LabelSession(tmp_path / "img", tmp_path / "labels.csv", masks_dir=tmp_path / "masks")
    png, size, full = s.preview("big.tif", 1600)
    assert full == (h, w) and size == (800, 1600)
    assert Image.open(io.BytesIO(png)).size == (1600, 800)
    mh, mw = round(h * MASK_MAX_SIDE / w), MASK_MAX_SIDE
    rgba = np.zeros((mh, mw, 4), np.uint8)
    rgba[100:200, 1000:3000] = (255, 0, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    with pytest.raises(ValueError, match="expected"):
        s.save_mask("big.tif", _png(np.zeros((10, 10, 4), np.uint8)))
    out = read_image(s.save_mask("big.tif", buf.getvalue()), allow_constant=True)
    assert out.shape == (h, w) and set(np.unique(out)) == {0, 255}
    k = w / MASK_MAX_SIDE
    assert (out[int(101 * k):int(199 * k), int(1001 * k):int(2999 * k)] == 255).all()
    assert abs((out > 0).sum() - 100 * 2000 * k * k) / (100 * 2000 * k * k) < 0.01
    m, source = s.start_mask("big.tif")
    assert source == "saved" and np.array_equal(m, out > 0)


def _png(a):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_cli_refuses_bad_labels_and_empty_folders(plate20, tmp_path):
    from click.testing import CliRunner

    from artseg_core.cli.main import main

    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\nphantom_A01_s1_w1.tif,perhaps\n")
    r = CliRunner().invoke(main, ["label", str(plate20 / "images"), "--labels", str(bad)])
    assert r.exit_code == 2 and "line 2" in r.output and "perhaps" in r.output
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["label", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no images" in r.output
    assert bad.read_text() == "image,label\nphantom_A01_s1_w1.tif,perhaps\n"  # never rewritten
