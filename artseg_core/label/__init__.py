"""``artseg label``: a local web app to label a folder of fields (clean / artifact), correct masks, then retrain.

:class:`~artseg_core.label.session.LabelSession` holds the state (labels.csv, order, previews, masks);
:class:`~artseg_core.label.server.LabelServer` serves it on 127.0.0.1 with a random token to the page in
``static/`` (plain HTML, JavaScript and canvas).
"""
from __future__ import annotations

from artseg_core.label.server import LabelServer, make_server
from artseg_core.label.session import LabelSession, default_labels_path

__all__ = ["LabelSession", "LabelServer", "make_server", "default_labels_path"]
