"""Test helpers shared by the tests of what a patch is refused for: a real patch file
with the standard header, and the error ``check()`` and ``apply()`` both raise."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import hotpatch

PatchWriter = Callable[..., Path]
HEADER = "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"


def load(write_patch: PatchWriter, body: str) -> hotpatch.Patch:
    """A real patch file: the standard header (version 1.0.1), then ``body`` (dedented)."""
    return hotpatch.load_patch(write_patch(HEADER + textwrap.dedent(body)))


def refused(
    registry: hotpatch.Registry,
    patch: hotpatch.Patch,
    error: type[hotpatch.PatchError] = hotpatch.VerificationFailed,
) -> str:
    """The message ``check()`` and ``apply()`` both refuse ``patch`` with; nothing applied."""
    with pytest.raises(error) as checked:
        registry.check(patch)
    with pytest.raises(error) as applied:
        registry.apply(patch)
    assert str(applied.value) == str(checked.value)
    assert not registry.level
    return str(checked.value)
