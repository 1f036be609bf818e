"""The agent: ``install()`` in the service's own process, the watched folder and its drop
pipeline, the verification child, signatures, the control socket; ``fanout/`` shares one
folder among the workers of a pre-fork server.

It sits on the core (``hotpatch._registry`` and below) and never imports a wing above it.
"""

from hotpatch.agent._agent import Agent, install

__all__ = ["Agent", "install"]
