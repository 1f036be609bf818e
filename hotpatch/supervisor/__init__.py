"""The supervisor: the parent process that owns the sockets and restarts the service.

Layers, each importing only from those above it (and from ``hotpatch.service._api``,
the service side of the same protocol):

1. ``_state``, ``_status``  -- the chain of state rounds; the status file
2. ``_child``               -- one service process: spawn, control channel, exit
3. ``_records``             -- ``SupervisorConfig``, ``RestartOutcome``, patch/baseline jobs
4. ``_handover``            -- bring a process up with the state, drain the old one, retire it
5. ``_restarts``, ``_jobs`` -- the work: each kind of restart; patches and baselines
6. ``_supervisor``          -- ``Supervisor``: sockets, status, scheduling the work, stop
7. ``_workers``             -- ``Fleet``: N supervisors on shared sockets, in update domains
8. ``_runner``              -- ``Runner``: what a ``Supervisor`` and a ``Fleet`` both offer
9. ``_patches``, ``_metrics`` -- the watched folder's pipeline; ``--metrics``; each on a ``Runner``
10. ``_cli``                -- ``main(argv)``: ``run --bind ... -- CMD``

(``_restarts`` and ``_jobs`` act on the ``Supervisor`` they are given; they name
its class only for type checking.)

This module only re-exports.
"""

from hotpatch.supervisor._child import ChildSpec
from hotpatch.supervisor._cli import main
from hotpatch.supervisor._records import RestartOutcome, StateError, SupervisorConfig
from hotpatch.supervisor._status import read_status
from hotpatch.supervisor._supervisor import Supervisor

__all__ = [
    "ChildSpec",
    "RestartOutcome",
    "StateError",
    "Supervisor",
    "SupervisorConfig",
    "main",
    "read_status",
]
