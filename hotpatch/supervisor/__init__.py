"""The supervisor: the parent process that owns the sockets and restarts the service.

Layers, each importing only from those above it (and from ``hotpatch._service``,
the service side of the same protocol):

1. ``_state``, ``_status``  -- the chain of state rounds; the status file
2. ``_child``               -- one service process: spawn, control channel, exit
3. ``_supervisor``          -- ``Supervisor``: start, restart, recover, stop
4. ``_cli``                 -- ``main(argv)``: ``run --bind ... -- CMD``

This module only re-exports.
"""

from hotpatch.supervisor._child import ChildSpec
from hotpatch.supervisor._cli import main
from hotpatch.supervisor._status import read_status
from hotpatch.supervisor._supervisor import RestartOutcome, StateError, Supervisor, SupervisorConfig

__all__ = [
    "ChildSpec",
    "RestartOutcome",
    "StateError",
    "Supervisor",
    "SupervisorConfig",
    "main",
    "read_status",
]
