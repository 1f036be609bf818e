"""An ASGI app for uvicorn: every worker installs the hotpatch agent with ``workers=True``.

Run it from this folder: ``uvicorn asgi_app:app --workers 3``, then drop
``fixes/fix_vat.py`` into the watched folder (``$HOTPATCH_FOLDER``, default ``./patches``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import tax

import hotpatch

# The one line, the same as under gunicorn.
agent = hotpatch.install("1.0", watch=os.environ.get("HOTPATCH_FOLDER", "patches"), workers=True)

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """``GET /`` -> ``{"pid": ..., "vat": vat(1999), "level": [...]}``."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = (
        json.dumps(
            {"pid": os.getpid(), "vat": tax.vat(1999), "level": list(agent.registry.level)}
        ).encode()
        + b"\n"
    )
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
