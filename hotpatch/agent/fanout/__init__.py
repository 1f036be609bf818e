"""``install(..., workers=True)``: one patch folder shared by the workers of a pre-fork server
(gunicorn, uvicorn --workers): one worker owns the folder and fans each verified patch out.

``_agent`` (``Worker``) opens the parts: ``_ownership`` (the folder's lock, retried),
``_applier`` (``FanoutApplier``: the pipeline's applier), ``_owner`` (``Fanout``: all
workers or none), ``_worker`` (``Replica``: this worker's copy of the level),
``_commands`` (the worker's socket), ``_peers`` (who is alive, ``Roster``: who must
come back after the folder was replaced) and ``_journal``.
"""

from hotpatch.agent.fanout._agent import Worker

__all__ = ["Worker"]
