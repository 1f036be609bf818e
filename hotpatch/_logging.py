"""hotpatch's own log lines: shown by default, shaped by ``$HOTPATCH_LOG``.

A library should leave logging to the application, but hotpatch's lines ("applied
patch 2.3.1", "rolled back", "restart: paused 4.1 ms") are what an operator looks
for, and a service under gunicorn or uvicorn configures no logging of its own, so
Python would drop them. So, when hotpatch starts working for a service --
``install()``, a supervised service's runtime, ``hotpatch run`` -- (a plain
import, a tool driving a ``Registry``, leaves logging alone):

* the ``hotpatch`` logger is set to INFO (or the level ``$HOTPATCH_LOG`` names),
  unless the application already set a level on it;
* hotpatch's lines are written to stderr by a handler of its own *only while the
  application has configured no logging* (the root logger has no handler); once
  it has, they go to the application's handlers, formatted its way, and the
  handler stays silent. Nothing of the application's logging is touched.

``HOTPATCH_LOG`` is a comma-separated list of a level (``debug``, ``info``,
``warning``, ``error``, ``critical``, or ``off``) and a format (``plain``, the
default, or ``json``: one JSON object a line with ``time``, ``level``,
``logger``, ``pid``, ``message`` and, for an exception, ``exc``), e.g.
``HOTPATCH_LOG=debug,json``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ENV_LOG", "LOGGER", "LogSettings", "parse_settings", "show_log_lines"]

ENV_LOG = "HOTPATCH_LOG"
LOGGER = "hotpatch"
PLAIN_FORMAT = "%(asctime)s hotpatch[%(process)d] %(levelname)s %(message)s"
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 1,
}
_FORMATS = ("plain", "json")


@dataclass(frozen=True, slots=True)
class LogSettings:
    """What ``$HOTPATCH_LOG`` asks for; ``level`` is ``None`` when it names none."""

    level: int | None = None
    json: bool = False


def parse_settings(value: str) -> LogSettings:
    """``"debug,json"`` -> ``LogSettings``; ``ValueError`` naming the variable otherwise."""
    level: int | None = None
    formats: list[str] = []
    for token in value.replace(",", " ").lower().split():
        if token in _LEVELS and level is None:
            level = _LEVELS[token]
        elif token in _FORMATS and not formats:
            formats.append(token)
        else:
            msg = (
                f"{ENV_LOG}={value!r}: {token!r} is not understood (or given twice); write a "
                f"level ({', '.join(_LEVELS)}) and/or a format ({' or '.join(_FORMATS)}), "
                f"e.g. {ENV_LOG}=debug,json"
            )
            raise ValueError(msg)
    return LogSettings(level=level, json=formats == ["json"])


class JsonLines(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, pid, message[, exc]."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class StderrFallback(logging.Handler):
    """Writes hotpatch's records to stderr while the application has configured no logging.

    ``sys.stderr`` is looked up at each record, so a redirection made later
    (a test's capture, a daemon's log file) is followed.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return  # the application configured logging: its handlers have the record
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def show_log_lines(environ: Mapping[str, str] = os.environ) -> StderrFallback:
    """Set up the ``hotpatch`` logger as described above (again: replaces the settings)."""
    settings = parse_settings(environ.get(ENV_LOG, ""))
    logger = logging.getLogger(LOGGER)
    handler = next((h for h in logger.handlers if isinstance(h, StderrFallback)), None)
    if handler is None:
        handler = StderrFallback()
        logger.addHandler(handler)
        if settings.level is None and logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    if settings.level is not None:
        logger.setLevel(settings.level)
    handler.setFormatter(JsonLines() if settings.json else logging.Formatter(PLAIN_FORMAT))
    return handler
