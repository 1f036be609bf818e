"""The agent: how patches get into a running service, from a watched folder or a control socket.

``install()`` starts an ``Agent`` in the service's own process; ``fanout/``
shares one folder among the workers of a pre-fork server; the supervisor
(``hotpatch run``) runs the same parts around an applier of its own.

How the parts fit. A ``DropPipeline`` (``_pipeline``) takes one patch at a time
through the checks every patch passes -- read once (``_drops``), signature
(``_signing``), verification (``_verify``: a verifier process started ahead,
``_verifier``, reached through ``_verifier_link``, forks a child per patch, on
a ``_staging`` copy; ``_proctree`` kills what the child left) -- and hands what
passed to the ``Applier`` it was given (``_applier``, a ``Protocol``):
``LocalApplier`` (``_local``, a ``Registry`` in this process),
``FanoutApplier`` (``fanout/``, every worker) or the supervisor's. ``Commands``
(``_commands``) answers the control socket (``_control_server``; ``_control``,
its wire and client) over that pipeline. A running agent opens its life-cycle
parts -- the folder's lock, staging, the socket, the folder's watch with its
pidfile (``_lifecycle``; ``_folder`` finds the drops, ``_queue`` orders them,
``_outcome`` files them) -- in an ``ExitStack``, in that order, and closes them
in reverse: ``Solo`` (``_solo``) alone on its folder, or ``Worker``
(``fanout/``) one of several. ``Agent`` (``_agent``) is the public face and
picks which one runs; ``_settings`` holds its options and ``_names`` the
folder's file names.

Imports run one way, ``_agent`` -> ``fanout`` -> ``_solo`` -> ``_commands`` ->
``_pipeline`` -> the rest, down to the core; no wing above is imported.
"""

from hotpatch.agent._agent import Agent, install

__all__ = ["Agent", "install"]
