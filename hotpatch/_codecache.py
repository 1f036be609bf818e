"""Patch code compiled once per content: kept beside the journal for the next replay.

Compiling is most of what loading a patch costs, and a replay loads every patch
of the level again. The code of the level last replayed is kept in one file
beside the journal, for this interpreter (``.hotpatch-code-MARK.TAG``: MARK from
the journal's name, TAG the cache tag ``__pycache__`` names use): the
interpreter's magic number, the sha256 of the rest, and a marshalled mapping of
(patch content sha256, filename) to the code compiled from it. A file that
does not match its sha256 or this interpreter is ignored (and replaced), never
trusted in part; the journal has checked each patch's content against its
sha256 before its code is looked up. Writing the file is best effort (temporary
file and rename, no sync: a crash costs a compile): a folder that cannot be
written only means compiling again. Whoever can write the file can run code in
the service, as whoever can write the journal can: both are the state's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import marshal
import os
import sys
import tempfile
import types
from pathlib import Path

__all__ = ["CodeCache"]

log = logging.getLogger("hotpatch")

_MAGIC = importlib.util.MAGIC_NUMBER
_DIGEST = hashlib.sha256().digest_size

Key = tuple[str, str]  # (sha256 of the patch's content, the filename its code names)


class CodeCache:
    """The code of a journal's patches, as last compiled by this interpreter."""

    def __init__(self, journal: Path):
        tag = sys.implementation.cache_tag or "none"
        mark = hashlib.sha256(journal.name.encode()).hexdigest()[:8]  # one per journal
        self.path = journal.with_name(f".hotpatch-code-{mark}.{tag}")
        self._codes: dict[Key, types.CodeType] = {}
        self._used: dict[Key, None] = {}  # in the order of the level
        self._missed = False

    def load(self) -> None:
        """Read the file, if there is one that matches; anything else is ignored."""
        try:
            raw = self.path.read_bytes()
        except OSError:
            return
        head = len(_MAGIC) + _DIGEST
        body = raw[head:]
        if raw[: len(_MAGIC)] != _MAGIC or raw[len(_MAGIC) : head] != _digest(body):
            return
        try:
            codes = marshal.loads(body)
        except (EOFError, ValueError, TypeError):
            return
        if isinstance(codes, dict):
            self._codes = {
                k: v
                for k, v in codes.items()
                if isinstance(k, tuple) and isinstance(v, types.CodeType)
            }

    def compile(self, text: str, sha256: str, filename: str) -> types.CodeType:
        """``compile(text, filename, "exec")``, or the code compiled from it before."""
        key = (sha256, filename)
        self._used[key] = None
        code = self._codes.get(key)
        if code is None:
            code = compile(text, filename, "exec", dont_inherit=True)
            self._codes[key] = code
            self._missed = True
        return code

    def save(self) -> None:
        """Keep the code used since ``load`` (the level replayed), if any was compiled."""
        if not self._missed and self._used.keys() == self._codes.keys():
            return
        body = marshal.dumps({k: self._codes[k] for k in self._used})
        folder = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{self.path.name}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(_MAGIC + _digest(body) + body)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.debug("compiled patch code not kept in %s: %s", self.path, exc)


def _digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()
