"""The HTTP face of ``artseg label``: a standard-library server on 127.0.0.1 with a random access token.

Every request must carry the token (``?token=`` or the ``X-ArtSeg-Token`` header); fields are looked up by name
among the images of the folder, so no request can reach a file outside it.

Routes (GET unless noted)::

    /                         the page (index.html with the token filled in)
    /static/app.js|app.css    its script and style
    /api/state                fields in order, labels, model guesses (JSON)
    /api/image?name=&max=     the field as a contrast-stretched PNG, larger side <= max
    /api/mask?name=&max=      the starting mask (saved, model, or empty) as a red RGBA PNG
    /api/info?name=&max=      preview and full size of a field (JSON)
    POST /api/label           {"name": ..., "label": "clean"|"artifact"|null}  -> rewrites labels.csv
    POST /api/mask?name=      body: PNG drawn in the page -> MASKS/<stem>_mask.tif (0/255)
"""
from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from artseg_core.label.session import FieldNotFound, LabelSession

log = logging.getLogger(__name__)

__all__ = ["LabelServer", "make_server"]

_STATIC = {"app.js": "application/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
_MAX_BODY = 256 * 1024 * 1024


def _static(name: str) -> bytes:
    return resources.files("artseg_core.label").joinpath(name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: "LabelServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the terminal shows only the address
        log.debug("%s " + fmt, self.address_string(), *args)

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, msg: str) -> None:
        self._json({"error": msg}, status)

    def _authorised(self, query: dict) -> bool:
        given = self.headers.get("X-ArtSeg-Token") or (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.server.token.encode())

    def _parse(self):
        parts = urlsplit(self.path)
        return parts.path, parse_qs(parts.query)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0 or n > _MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(n)

    # ------------------------------------------------------------------ verbs
    def do_GET(self):  # noqa: N802 (http.server's naming)
        path, q = self._parse()
        if not self._authorised(q):
            return self._error(HTTPStatus.FORBIDDEN, "missing or wrong token: use the address artseg label printed")
        s = self.server.session
        try:
            if path == "/":
                html = _static("index.html").decode().replace("__TOKEN__", self.server.token)
                return self._send(200, html.encode(), "text/html; charset=utf-8")
            if path.startswith("/static/"):
                name = path[len("/static/"):]
                if name not in _STATIC:
                    return self._error(HTTPStatus.NOT_FOUND, "no such file")
                return self._send(200, _static(name), _STATIC[name])
            if path == "/api/state":
                return self._json(s.state())
            name = (q.get("name") or [""])[0]
            max_side = int((q.get("max") or ["1600"])[0])
            if path == "/api/image":
                png, size, full = s.preview(name, max_side)
                return self._send(200, png, "image/png")
            if path == "/api/mask":
                png, source = s.mask_png(name, max_side)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-ArtSeg-Mask-Source", source)
                self.end_headers()
                self.wfile.write(png)
                return None
            if path == "/api/info":
                png, size, full = s.preview(name, max_side)
                return self._json({"name": name, "size": size, "full": full, "path": str(s.path(name))})
            return self._error(HTTPStatus.NOT_FOUND, "no such page")
        except FieldNotFound:
            return self._error(HTTPStatus.NOT_FOUND, "no such field in the image folder")
        except ValueError as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        except Exception as e:  # report, keep serving
            log.exception("GET %s failed", self.path)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")

    do_HEAD = do_GET

    def do_POST(self):  # noqa: N802
        path, q = self._parse()
        if not self._authorised(q):
            return self._error(HTTPStatus.FORBIDDEN, "missing or wrong token: use the address artseg label printed")
        s = self.server.session
        try:
            body = self._body()
            if path == "/api/label":
                msg = json.loads(body or b"{}")
                s.set_label(str(msg.get("name", "")), msg.get("label"))
                st = s.state()
                return self._json({"ok": True, "n_labelled": st["n_labelled"]})
            if path == "/api/mask":
                dest = s.save_mask((q.get("name") or [""])[0], body)
                return self._json({"ok": True, "path": str(dest)})
            return self._error(HTTPStatus.NOT_FOUND, "no such action")
        except FieldNotFound:
            return self._error(HTTPStatus.NOT_FOUND, "no such field in the image folder")
        except ValueError as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        except Exception as e:
            log.exception("POST %s failed", self.path)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")


class LabelServer(ThreadingHTTPServer):
    """A threading HTTP server that serves one :class:`LabelSession` with one access token.

    Parameters
    ----------
    session : LabelSession
        What to serve.
    port : int
        TCP port on 127.0.0.1; 0 picks a free one.
    token : str, optional
        Access token (default: a random one).
    """

    daemon_threads = True

    def __init__(self, session: LabelSession, port: int = 0, token: str | None = None):
        self.session = session
        self.token = token or secrets.token_urlsafe(18)
        super().__init__(("127.0.0.1", int(port)), _Handler)

    @property
    def url(self) -> str:
        """The address with the token, to open in a browser."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/?token={self.token}"

    def start_background(self) -> threading.Thread:
        """Serve in a daemon thread (for scripts and tests); stop with :meth:`shutdown`."""
        t = threading.Thread(target=self.serve_forever, name="artseg-label", daemon=True)
        t.start()
        return t


def make_server(session: LabelSession, port: int = 0, token: str | None = None) -> LabelServer:
    """A :class:`LabelServer` bound to 127.0.0.1 (see the class)."""
    return LabelServer(session, port=port, token=token)
