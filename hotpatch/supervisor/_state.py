"""The supervisor's copy of the service's declared state: a chain of sealed memfd rounds."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Chunk", "StateChain"]

# Compact (ask the service for a full round) once the increments outweigh the
# base this much, or there are this many of them.
_COMPACT_MIN_BYTES = 1 << 20
_COMPACT_CHUNKS = 64


@dataclass(frozen=True, slots=True)
class Chunk:
    """One round: a sealed memfd the supervisor holds, never reads, and passes on."""

    fd: int
    size: int
    records: int
    full: bool


class StateChain:
    """A full round followed by the increments since: replayed in order, it is the state.

    The supervisor holds the fds, so the state outlives the process that wrote
    it: a process killed with SIGKILL is restarted from the chain. ``epoch``
    changes whenever the chain is replaced, so a reader that was part-way
    through knows to start again.
    """

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.epoch = 0
        self.stale = False  # a round may have been lost: the next one must be full

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def empty(self) -> bool:
        return not self.chunks

    @property
    def size(self) -> int:
        return sum(chunk.size for chunk in self.chunks)

    def add(self, chunk: Chunk) -> None:
        """Append a round; a full round replaces the chain."""
        if chunk.full:
            self.clear()
            self.stale = False
        elif not self.chunks:
            os.close(chunk.fd)
            msg = "an incremental state round arrived with no full round before it"
            raise ValueError(msg)
        self.chunks.append(chunk)

    def needs_full(self) -> bool:
        """Should the next round be a full one (no base yet, or too many increments)?"""
        if not self.chunks:
            return True
        increments = sum(chunk.size for chunk in self.chunks[1:])
        too_big = increments > max(self.chunks[0].size, _COMPACT_MIN_BYTES)
        return too_big or len(self.chunks) > _COMPACT_CHUNKS

    def clear(self) -> None:
        """Forget the state (close every fd)."""
        for chunk in self.chunks:
            os.close(chunk.fd)
        self.chunks = []
        self.epoch += 1
