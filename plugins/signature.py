"""Signature check plugin: vetoes a patch without a valid detached signature by a trusted key.

A second line of defence: the agent checks ``NAME.sig`` before anything is
imported; this plugin checks again, in ``hotpatch_validate``, that the text the
registry is about to apply is exactly what a trusted key signed. It looks for
the signature beside the file the patch was loaded from (``<source.path>.sig``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import hotpatch
from hotpatch._patch import PatchSource
from hotpatch.agent._signing import signature_path, verify_signature

__all__ = ["SignatureCheck"]

_MAX_SIGNATURE_BYTES = 4096


class SignatureCheck:
    """Refuses patches whose source is unsigned, tampered, or signed by an untrusted key."""

    def __init__(
        self, trusted_keys: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None
    ) -> None:
        self.trusted_keys = trusted_keys

    def __repr__(self) -> str:
        return f"<SignatureCheck trusted_keys={self.trusted_keys!r}>"

    @hotpatch.hookimpl
    def hotpatch_validate(self, patch: hotpatch.Patch, report: hotpatch.CheckReport) -> str | None:
        source = patch.source
        if source is None:
            return (
                f"patch {patch.version} was not loaded from a file, so it carries no "
                "signature; load it with hotpatch.load_patch(path) beside its PATH.sig"
            )
        data = source.text.encode("utf-8")
        name = Path(source.path).name
        if PatchSource.digest(data) != source.sha256:
            return f"{name}: the loaded text does not match its sha256; refusing it"
        sig = signature_path(source.path)
        try:
            if sig.is_symlink():
                return f"{sig.name} is a symlink; drop the signature file itself"
            with sig.open("rb") as f:
                signature: bytes | None = f.read(_MAX_SIGNATURE_BYTES + 1)
        except FileNotFoundError:
            signature = None
        except OSError as exc:
            return f"{sig} cannot be read: {exc.strerror or exc}"
        try:
            verify_signature(data, signature, self.trusted_keys, name=name)
        except hotpatch.VerificationFailed as exc:
            return str(exc)
        return None
