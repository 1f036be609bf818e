"""The supervisor (``hotpatch run``): the parent process that owns the listening sockets
and restarts the service without dropping a connection or its state.

Layers, each importing only from those above it (of the service side, only its
wire ``hotpatch.service._channel``); the ``supervisor`` contract in
pyproject.toml checks them:

1. ``_status``, ``_state``, ``_bundle``, ``_activation`` -- the status file; the chain of state
   rounds; bundles; the sockets systemd passes
2. ``_child``                  -- one service process: spawn, control channel, exit
3. ``_takeover``               -- the code to go back to; a new process's health
4. ``_records``                -- ``SupervisorConfig``, ``Running``, ``RestartOutcome``, jobs
5. ``_handover``               -- bring a process up with the state, drain the old one
6. ``_restarts``, then ``_jobs`` -- the work: each kind of restart; patches and baselines
7. ``_supervisor``             -- ``Supervisor``: sockets, status, scheduling the work, stop
8. ``_rollout``, then ``_workers`` -- update domains; ``Fleet``: N supervisors, shared sockets
9. ``_runner``                 -- ``Runner``: what a ``Supervisor`` and a ``Fleet`` both offer
10. ``_patches``, ``_metrics``  -- the watched folder's pipeline; ``--metrics``; on a ``Runner``
11. ``_cli``                   -- ``main(argv)``: composes them for ``run --bind ... -- CMD``

Nothing writes into another's fields: the supervisor hands its ``Running``
record and callbacks to its ``Handover``, ``Restarts`` and ``Jobs``; the
fleet hands its workers and a callback to its ``Rollouts``; ``_cli`` gives a
runner its folder pipeline.

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
