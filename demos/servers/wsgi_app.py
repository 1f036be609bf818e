"""A WSGI app for gunicorn: every worker installs the hotpatch agent with ``workers=True``.

Run it from this folder: ``gunicorn -c gunicorn.conf.py wsgi_app:app``, then drop
``fixes/fix_vat.py`` into the watched folder (``$HOTPATCH_FOLDER``, default ``./patches``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import tax

import hotpatch

# The one line: each worker process registers; one of them watches the folder and
# every worker applies each patch.
agent = hotpatch.install("1.0", watch=os.environ.get("HOTPATCH_FOLDER", "patches"), workers=True)


def app(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
    """``GET /`` -> ``{"pid": ..., "vat": vat(1999), "level": [...]}``."""
    body = (
        json.dumps(
            {"pid": os.getpid(), "vat": tax.vat(1999), "level": list(agent.registry.level)}
        ).encode()
        + b"\n"
    )
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ],
    )
    return [body]
